-- Backpressure counts a flow's unfinished jobs before every enqueue
-- (Db::unfinished_jobs). Without an index matching its predicate that
-- count scanned every job kept (finished ones stay an hour): measured as
-- most of PostgreSQL's CPU time in a run of 1,000 small jobs.
CREATE INDEX IF NOT EXISTS weavster_jobs_unfinished ON apalis.jobs (job_type)
WHERE status IN ('Pending', 'Queued', 'Running')
   OR (status = 'Failed' AND attempts < max_attempts);
