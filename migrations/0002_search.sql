-- Search readiness (issue 6): what `vectorize`, `maintain` and `health` rely on.
--
-- The GIN indexes on the vectors are deliberately NOT created here. A migration runs on an
-- empty database, right before a bulk load; a GIN index with fastupdate = off maintained
-- row by row through millions of inserts and vector updates is the slowest way to build it.
-- `civicload backfill` builds them once at the end of its run (after `vectorize`), with a
-- raised maintenance_work_mem for that session, and `civicload maintain` builds them if they
-- are missing (see stages/src/store/search.rs, `SEARCH_INDEXES`). Ordinary (non-bulk)
-- writes after that keep them current through the row triggers of 0001.

-- Rows whose vector is still to be built: a bulk load leaves every page here, so
-- `vectorize` finds its work through this small index instead of scanning the table (seed
-- 003). It is empty once vectorize is done, and stays empty under ordinary writes.
CREATE INDEX meeting_pages_vector_missing
    ON meeting_pages (id) WHERE search_vector IS NULL;
CREATE INDEX meeting_documents_name_vector_missing
    ON meeting_documents (id) WHERE meeting_name_search_vector IS NULL;

-- The application filters search results by meeting date (and orders by it); the other
-- lookups it makes are served by the identity constraints of 0001 (document_id leads
-- meeting_pages_identity; municipality_id leads meeting_documents_identity). No btree here
-- holds `text`: a btree tuple over ~2.7 KB fails, and pages are up to 500 KB.
CREATE INDEX meeting_documents_meeting_date ON meeting_documents (meeting_date);

-- Planner statistics (seed 000, 001): the default target of 100 samples too few lexemes
-- of a 100M-page corpus to estimate how selective a search term is, and too few documents
-- for the page-per-document skew. ANALYZE samples 300 x target rows.
ALTER TABLE meeting_pages
    ALTER COLUMN search_vector SET STATISTICS 1000,
    ALTER COLUMN document_id SET STATISTICS 1000;

-- Autovacuum per table (seed 004; seed 001's global values as per-table settings, because
-- civicload changes only its own tables, never the server's configuration).
-- meeting_pages is the big, fast-growing table: vacuum at 5% dead rows instead of 20%,
-- analyze at 2% changed. (The seed's autovacuum_vacuum_cost_delay = 10 meant "faster than
-- the old 20 ms default"; PostgreSQL 12+ defaults to 2 ms, which is faster still, so it is
-- left alone.)
ALTER TABLE meeting_pages SET (
    autovacuum_vacuum_scale_factor = 0.05,
    autovacuum_analyze_scale_factor = 0.02
);
-- Moderate traffic: documents grow with the pages; jobs are updated once per batch.
ALTER TABLE meeting_documents SET (
    autovacuum_vacuum_scale_factor = 0.1,
    autovacuum_analyze_scale_factor = 0.05
);
ALTER TABLE backfill_jobs SET (
    autovacuum_vacuum_scale_factor = 0.1,
    autovacuum_analyze_scale_factor = 0.05
);
