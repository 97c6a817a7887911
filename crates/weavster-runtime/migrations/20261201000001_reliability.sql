-- Dead letters hold any bytes (a record may not be valid UTF-8, or hold a
-- NUL, which `text` cannot store), name where they came from, and a
-- worker's are keyed by job, item, stage and output: a retried job never
-- dead-letters the same record twice.
ALTER TABLE weavster.dead_letters
    ALTER COLUMN record TYPE BYTEA USING convert_to(record, 'UTF8');
ALTER TABLE weavster.dead_letters
    ADD COLUMN job_id TEXT,
    ADD COLUMN item INTEGER,
    ADD COLUMN output TEXT,
    ADD COLUMN source TEXT;
CREATE UNIQUE INDEX dead_letters_job_item
    ON weavster.dead_letters (job_id, item, stage, (coalesce(output, '')))
    WHERE job_id IS NOT NULL;

-- The outputs a job has already written: a retried job skips them.
CREATE TABLE weavster.job_outputs (
    job_id TEXT NOT NULL,
    output INTEGER NOT NULL,
    done_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (job_id, output)
);
