-- lz4 on every partition of meeting_pages (issue 16), as 0005 set it on the table.
--
-- Found in this stop: since 0010 made meeting_pages a partitioned table, every page was
-- compressed with pglz again. PostgreSQL 15 compresses a row with its partition's column
-- setting, and ALTER TABLE ... SET COMPRESSION on a partitioned table does not reach the
-- partitions (0010 set it on the parent only; `CREATE TABLE ... PARTITION OF` leaves a
-- partition's columns on the server default, pglz). 0005 measured the difference on a
-- bulk load: pglz 5.7 s, lz4 2.8 s for 50,000 pages with their vectors, on one core of
-- PostgreSQL; a search's rechecks decompress vectors faster too.
--
-- Rows written from now on use lz4; existing rows keep their pglz data (both read fine).
-- phrase_keys (0015) too: its hashes hardly compress, and lz4 gives up on them sooner.
-- A server built without lz4 keeps pglz, as in 0005.
DO $$
DECLARE
    part regclass;
BEGIN
    ALTER TABLE meeting_pages ALTER COLUMN phrase_keys SET COMPRESSION lz4;
    FOR part IN SELECT inhrelid::regclass FROM pg_inherits
                WHERE inhparent = 'meeting_pages'::regclass ORDER BY inhrelid LOOP
        EXECUTE format('ALTER TABLE %s
                            ALTER COLUMN text SET COMPRESSION lz4,
                            ALTER COLUMN search_vector SET COMPRESSION lz4,
                            ALTER COLUMN entities SET COMPRESSION lz4,
                            ALTER COLUMN votes SET COMPRESSION lz4,
                            ALTER COLUMN phrase_keys SET COMPRESSION lz4', part);
    END LOOP;
EXCEPTION WHEN feature_not_supported THEN
    RAISE NOTICE 'civicload: this PostgreSQL server has no lz4 support; meeting_pages keeps pglz compression (slower bulk loads, same data)';
END $$;
