-- ANALYZE of meeting_pages skips the columns no query filters, joins or sorts on (issue 16).
--
-- The page text, its entities and votes (jsonb) and the image URL are only ever read
-- back, never compared: no plan depends on their statistics. Yet ANALYZE detoasted,
-- sorted and hashed every sampled value of them, and the sample is large here (300,000
-- rows, because search_vector, document_id and meeting_date keep their target of 1000).
-- Measured on a 200k-page load (large vocabulary), `ANALYZE meeting_pages` alternated
-- three times: 17.0 / 15.0 / 16.4 s with their statistics, 11.1 / 11.8 / 11.4 s without.
-- That is ~4.5 CPU-seconds off the ANALYZE that runs during every bulk load, and off
-- every autovacuum analyze after a refresh.
--
-- SET STATISTICS on the partitioned table reaches every partition (unlike SET
-- COMPRESSION, see 0017). The planner then uses its defaults for these columns (a
-- width of 32 bytes, no null fraction); nothing civicload runs reads them.
ALTER TABLE meeting_pages
    ALTER COLUMN text SET STATISTICS 0,
    ALTER COLUMN entities SET STATISTICS 0,
    ALTER COLUMN votes SET STATISTICS 0,
    ALTER COLUMN page_image SET STATISTICS 0;
