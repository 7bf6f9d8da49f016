-- Evaluators: admin-issued credentials of the clients that score a model's
-- versions on their own held-out data (`POST /v1/models/{m}/evaluators`).
-- Only the argon2 hash of each token is kept. A revoked evaluator keeps its
-- row (`revoked_at`), so who reported what stays on record; a name is never
-- issued twice for one model. A deleted model takes its evaluators along.
CREATE TABLE evaluators (
    id INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL,
    model TEXT NOT NULL REFERENCES models(name) ON DELETE CASCADE,
    name TEXT NOT NULL,
    token_hash TEXT NOT NULL,
    created_at TEXT NOT NULL,
    revoked_at TEXT,
    reports BIGINT NOT NULL DEFAULT 0,
    last_report_at TEXT,
    UNIQUE (model, name)
);
