-- Phrase keys take the whole 32-bit hash (issue 16): `hashtext(a || ' ' || b)`, no longer
-- masked to 65,536 buckets.
--
-- With ~280 keys a page, a 16-bit key is on ~0.4% of all pages by chance alone, and a
-- bucket shared with a pair that is frequent somewhere is on many more: at 1M pages the
-- phrase "fiscal year" (3,189 matches) had 13,500 candidates, each a heap page read and
-- a vector decompressed, and its newest-first search missed 100 ms at p95. Measured on a
-- 200k-page corpus, candidates for seven two-word phrases (matches / 16-bit / 18-bit /
-- 20-bit / 32-bit): fiscal year 271 / 1,383 / 302 / 272 / 271; budget amendment 337 /
-- 1,996 / 698 / 697 / 337; water main 0 / 993 / 321 / 8 / 0. 32 bits give the matches
-- themselves, and the index builds as fast at 18, 20 or 32 bits (~1.45x the 16-bit build,
-- one core, same rows; 282 MB against 255 MB).
--
-- The column is dropped and added again, NULL: dropping it drops its indexes, and
-- `civicload maintain` (or the next backfill's end) fills the keys and builds the index
-- again. Until then the search does not use the keys (civicload_phrase_filter checks that
-- every page with a vector has keys and that the index is valid): results stay exact.

DROP TRIGGER meeting_pages_z_phrase_keys_insert ON meeting_pages;
DROP TRIGGER meeting_pages_z_phrase_keys_update ON meeting_pages;
ALTER TABLE meeting_pages DROP COLUMN phrase_keys;
ALTER TABLE meeting_pages ADD COLUMN phrase_keys int4[];
ALTER TABLE meeting_pages ALTER COLUMN phrase_keys SET STORAGE MAIN;
ALTER TABLE meeting_pages ALTER COLUMN phrase_keys SET STATISTICS 0;
CREATE INDEX meeting_pages_phrase_keys_missing ON meeting_pages (id)
    WHERE phrase_keys IS NULL AND search_vector IS NOT NULL;

CREATE OR REPLACE FUNCTION civicload_phrase_key(a text, b text) RETURNS int4
LANGUAGE sql IMMUTABLE PARALLEL SAFE STRICT
RETURN hashtext(a || ' ' || b);

CREATE TRIGGER meeting_pages_z_phrase_keys_insert
    BEFORE INSERT ON meeting_pages
    FOR EACH ROW
    WHEN (current_setting('civicload.bulk', true) IS DISTINCT FROM 'on'
          AND ((NEW.search_vector IS NULL) <> (NEW.phrase_keys IS NULL)
               OR (NEW.search_vector IS NOT NULL
                   AND current_setting('civicload.vectors_supplied', true) IS DISTINCT FROM 'on')))
    EXECUTE FUNCTION civicload_pages_phrase_keys_trigger();
ALTER TABLE meeting_pages ENABLE ALWAYS TRIGGER meeting_pages_z_phrase_keys_insert;
CREATE TRIGGER meeting_pages_z_phrase_keys_update
    BEFORE UPDATE ON meeting_pages
    FOR EACH ROW
    WHEN (current_setting('civicload.bulk', true) IS DISTINCT FROM 'on'
          AND ((NEW.search_vector IS NULL) <> (NEW.phrase_keys IS NULL)
               OR (NEW.search_vector IS DISTINCT FROM OLD.search_vector
                   AND NEW.phrase_keys IS NOT DISTINCT FROM OLD.phrase_keys)))
    EXECUTE FUNCTION civicload_pages_phrase_keys_trigger();
ALTER TABLE meeting_pages ENABLE ALWAYS TRIGGER meeting_pages_z_phrase_keys_update;

-- The probe (0013, 0014) walks the newest pages to learn whether the walk newest first will
-- find a page of results soon: at least `wanted` matches among the newest `probe` pages.
-- For a phrase whose pairs' keys are in service, the matches' density is read from a
-- fifth of that walk (the same 10%: a fifth of `wanted` among a fifth of `probe`): with
-- whole-hash keys its candidates are its matches, so a phrase that is not dense among the
-- newest pages (most phrases) goes to collecting its matches ~25 ms sooner at 1M pages,
-- and one that is dense still walks. Either route gives the same rows.
CREATE OR REPLACE FUNCTION civicload_search_probe(
    tsq tsquery, munis bigint[], date_from date, date_to date, doc_type text,
    wanted int, probe int
) RETURNS bool LANGUAGE plpgsql STABLE
SET enable_seqscan = off SET enable_indexscan = on SET enable_bitmapscan = off SET jit = off
AS $$
DECLARE
    n int;
    phrase text := civicload_phrase_filter(tsq);
BEGIN
    IF wanted <= 0 OR probe < wanted THEN
        RETURN false;
    END IF;
    IF phrase <> '' THEN
        wanted := ceil(wanted / 5.0)::int;
        probe := ceil(probe / 5.0)::int;
    END IF;
    -- A phrase's pairs are checked first: an array test instead of decompressing the
    -- vector for most of the pages walked.
    EXECUTE 'SELECT count(*) FROM (SELECT 1 FROM (SELECT p.search_vector, p.phrase_keys FROM meeting_pages p WHERE '
            || civicload_search_filters(coalesce(cardinality(munis), 0), date_from IS NOT NULL,
                                        date_to IS NOT NULL, doc_type IS NOT NULL)
            || ' ORDER BY p.meeting_date DESC, p.id DESC LIMIT $7) AS w WHERE true'
            || replace(phrase, 'p.phrase_keys', 'w.phrase_keys')
            || ' AND w.search_vector @@ $1 LIMIT $6) AS found'
        INTO n USING tsq, munis, date_from, date_to, doc_type, wanted, probe;
    RETURN n >= wanted;
END $$;
