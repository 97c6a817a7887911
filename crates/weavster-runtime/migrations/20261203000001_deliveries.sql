-- Named deliveries of inputs that cannot be read again (an HTTP request's
-- delivery id): stored in the transaction of their records' job, so that a
-- retried delivery is acknowledged but never enqueued twice. Kept 7 days.
CREATE TABLE IF NOT EXISTS weavster.deliveries (
    flow        text        NOT NULL,
    id          text        NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (flow, id)
);
CREATE INDEX IF NOT EXISTS deliveries_received_at ON weavster.deliveries (received_at);
