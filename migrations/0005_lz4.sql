-- Compression of the wide columns (issue 7): lz4 instead of PostgreSQL's default pglz.
--
-- A page row is ~2.2 KB of text plus a ~3 KB search vector, so nearly every row is
-- compressed on its way into TOAST. Measured on this project's 200k-page benchmark corpus
-- (50,000 pages with their vectors, binary COPY into meeting_pages, PostgreSQL 15): pglz
-- 5.7 s, lz4 2.8 s, for 266 MB against 259 MB on disk. Reading is faster too (search
-- headlines and `verify --deep` decompress the text). Existing rows keep their pglz data
-- (both read fine); rows written from now on use lz4.
--
-- A server built without lz4 (`--with-lz4` is in Debian's, Ubuntu's and the PGDG packages)
-- keeps pglz: the result is the same, only slower to write.
DO $$
BEGIN
    ALTER TABLE meeting_pages
        ALTER COLUMN text SET COMPRESSION lz4,
        ALTER COLUMN search_vector SET COMPRESSION lz4,
        ALTER COLUMN entities SET COMPRESSION lz4,
        ALTER COLUMN votes SET COMPRESSION lz4;
EXCEPTION WHEN feature_not_supported THEN
    RAISE NOTICE 'civicload: this PostgreSQL server has no lz4 support; meeting_pages keeps pglz compression (slower bulk loads, same data)';
END $$;
