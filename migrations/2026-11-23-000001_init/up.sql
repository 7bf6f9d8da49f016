-- Models the hub serves. `layout` is the JSON list of tensors (name, shape, dtype);
-- `settings` the JSON aggregation settings of models created through the API.
CREATE TABLE models (
    name TEXT PRIMARY KEY NOT NULL,
    architecture TEXT NOT NULL,
    layout TEXT NOT NULL,
    settings TEXT,
    created_at TEXT NOT NULL
);

-- Every global version. Version 0 is the initial weights. `weights` holds the
-- safetensors checkpoint; `metrics` the JSON aggregation report and evaluation.
CREATE TABLE versions (
    id INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL,
    model TEXT NOT NULL REFERENCES models(name) ON DELETE CASCADE,
    version BIGINT NOT NULL,
    parent BIGINT,
    num_updates INTEGER NOT NULL,
    weights BLOB NOT NULL,
    metrics TEXT NOT NULL,
    created_at TEXT NOT NULL,
    UNIQUE (model, version)
);

-- Registered trainers. `token_hash` is an argon2 PHC string, never the token.
CREATE TABLE trainers (
    name TEXT PRIMARY KEY NOT NULL,
    specialty TEXT NOT NULL,
    token_hash TEXT NOT NULL,
    revoked BOOLEAN NOT NULL DEFAULT 0,
    created_at TEXT NOT NULL,
    last_seen TEXT
);

-- One row per WebSocket connection that completed its hello.
CREATE TABLE sessions (
    id TEXT PRIMARY KEY NOT NULL,
    trainer TEXT NOT NULL REFERENCES trainers(name) ON DELETE CASCADE,
    model TEXT NOT NULL,
    remote TEXT,
    connected_at TEXT NOT NULL,
    disconnected_at TEXT,
    close_reason TEXT
);

-- The contributions ledger. Accepted updates keep their delta (`payload`)
-- until a version folds them in; refused ones keep the refusal code.
CREATE TABLE updates (
    id INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL,
    update_id TEXT NOT NULL,
    trainer TEXT NOT NULL,
    model TEXT NOT NULL,
    base_version BIGINT NOT NULL,
    num_examples BIGINT NOT NULL,
    staleness BIGINT NOT NULL,
    loss DOUBLE,
    bytes BIGINT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('pending', 'applied', 'refused')),
    applied_in_version BIGINT,
    refusal_code TEXT,
    refusal_message TEXT,
    received_at TEXT NOT NULL,
    payload BLOB
);
-- An update_id is accepted at most once per trainer and model (idempotency).
CREATE UNIQUE INDEX updates_accepted_once ON updates (model, trainer, update_id)
    WHERE status != 'refused';
CREATE INDEX updates_pending ON updates (model, status);

-- Federated evaluations reported by trainers.
CREATE TABLE evaluations (
    id INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL,
    model TEXT NOT NULL,
    version BIGINT NOT NULL,
    trainer TEXT NOT NULL,
    specialty TEXT NOT NULL,
    specialty_accuracy DOUBLE,
    global_accuracy DOUBLE,
    loss DOUBLE,
    num_examples BIGINT,
    created_at TEXT NOT NULL
);
CREATE INDEX evaluations_by_version ON evaluations (model, version);

-- Time series of hub figures (sampled by the metrics aggregator).
CREATE TABLE metrics (
    id INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL,
    ts TEXT NOT NULL,
    name TEXT NOT NULL,
    labels TEXT NOT NULL,
    value DOUBLE NOT NULL
);

-- Harness runs recorded by this hub.
CREATE TABLE harness_runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL,
    scenario TEXT NOT NULL,
    passed BOOLEAN NOT NULL,
    collective_accuracy DOUBLE,
    report TEXT NOT NULL,
    started_at TEXT NOT NULL,
    finished_at TEXT NOT NULL
);
