-- The audit record of `DELETE /v1/models/{m}`: one row per deleted model,
-- what it was and what went with it. Its versions, ledger rows (with their
-- payloads), evaluations and blob files are gone; this row stays.
CREATE TABLE model_deletions (
    id INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL,
    model TEXT NOT NULL,
    architecture TEXT NOT NULL,
    created_at TEXT NOT NULL,
    last_version BIGINT NOT NULL,
    versions BIGINT NOT NULL,
    updates BIGINT NOT NULL,
    evaluations BIGINT NOT NULL,
    files BIGINT NOT NULL,
    forced BOOLEAN NOT NULL,
    disconnected BIGINT NOT NULL,
    deleted_at TEXT NOT NULL
);
