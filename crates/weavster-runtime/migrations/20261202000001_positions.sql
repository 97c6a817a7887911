-- A source position is any JSON value: a byte offset (files), a Kafka
-- offset (stream `topic:partition`), later a cursor of several columns.
ALTER TABLE weavster.offsets ALTER COLUMN position TYPE jsonb USING to_jsonb(position);
