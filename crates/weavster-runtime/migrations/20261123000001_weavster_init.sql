-- Weavster's own tables, beside apalis's (schema `apalis`).

-- How far each input stream has been durably enqueued.
CREATE TABLE weavster.offsets (
    flow TEXT NOT NULL,
    stream TEXT NOT NULL,
    position BIGINT NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (flow, stream)
);

-- One row per `weavster run`.
CREATE TABLE weavster.runs (
    id BIGSERIAL PRIMARY KEY,
    started_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    finished_at TIMESTAMPTZ,
    host TEXT NOT NULL,
    pid INTEGER NOT NULL,
    mode TEXT NOT NULL,
    flows TEXT[] NOT NULL,
    status TEXT NOT NULL DEFAULT 'running',
    summary JSONB
);

-- Records that could not be delivered, with why.
CREATE TABLE weavster.dead_letters (
    id BIGSERIAL PRIMARY KEY,
    flow TEXT NOT NULL,
    record TEXT NOT NULL,
    stage TEXT NOT NULL,
    message TEXT NOT NULL,
    path TEXT,
    attempts INTEGER NOT NULL DEFAULT 1,
    run_id BIGINT,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX dead_letters_flow ON weavster.dead_letters (flow, id);
