-- Search at scale (issue 16): the application's query shape as one SQL function,
-- `civicload_search`, and what it needs to stay fast at millions of pages whatever the
-- term: the meeting date on every page, and an index that walks pages newest first.
--
-- Why the date is copied onto pages: "newest first" over a join to meeting_documents
-- cannot be served by any index, so a common term sorts every match (seconds at 1M pages)
-- and the planner, misjudging a rare phrase as common, walks every document (2.4 s for 18
-- rows at 200k). With the date on the page, one btree yields matches newest first and a
-- common term stops after ~100/frequency pages. The load writes the date with the rest of
-- the page (stages/src/copy.rs, load.rs); the trigger below fills it for any other writer.

ALTER TABLE meeting_pages ADD COLUMN meeting_date date;

-- Rows written before this migration. The page GIN has fastupdate off: without the
-- pending list each rewritten row would insert all its lexemes into the index one by one
-- (minutes per 100k pages); with it they are merged in bulk.
DO $$
BEGIN
    IF to_regclass('meeting_pages_search_vector_gin') IS NOT NULL THEN
        ALTER INDEX meeting_pages_search_vector_gin SET (fastupdate = on);
    END IF;
    UPDATE meeting_pages p SET meeting_date = d.meeting_date
    FROM meeting_documents d WHERE d.id = p.document_id;
    IF to_regclass('meeting_pages_search_vector_gin') IS NOT NULL THEN
        ALTER INDEX meeting_pages_search_vector_gin SET (fastupdate = off);
        PERFORM gin_clean_pending_list('meeting_pages_search_vector_gin'::regclass);
    END IF;
END $$;

-- A writer that does not supply the date (a hand-written INSERT, a tool, an older
-- civicload) gets it from the page's document. civicload's own load supplies it, so the
-- WHEN condition (evaluated by the executor, no function call) skips the trigger there.
-- A bulk COPY that does not supply it either (`civicload.bulk`, e.g. the seeds' recipe
-- in scripts/bench.sh) leaves it NULL for `civicload maintain` to fill set-based.
CREATE FUNCTION civicload_pages_meeting_date_trigger() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    SELECT d.meeting_date INTO NEW.meeting_date FROM meeting_documents d WHERE d.id = NEW.document_id;
    RETURN NEW;
END $$;

CREATE TRIGGER meeting_pages_meeting_date
    BEFORE INSERT OR UPDATE ON meeting_pages
    FOR EACH ROW
    WHEN (NEW.meeting_date IS NULL
          AND current_setting('civicload.bulk', true) IS DISTINCT FROM 'on')
    EXECUTE FUNCTION civicload_pages_meeting_date_trigger();
-- Fires in the load's replica-session COPY too (see 0008).
ALTER TABLE meeting_pages ENABLE ALWAYS TRIGGER meeting_pages_meeting_date;

-- Pages whose date is still to be filled (normally none): `maintain` finds them here.
CREATE INDEX meeting_pages_meeting_date_missing ON meeting_pages (id) WHERE meeting_date IS NULL;

-- Newest first, whole corpus and per municipality. `id` breaks ties so the order is total
-- and the top 100 is one exact set.
CREATE INDEX meeting_pages_newest ON meeting_pages (meeting_date DESC, id DESC);
CREATE INDEX meeting_pages_municipality_newest
    ON meeting_pages (municipality_id, meeting_date DESC, id DESC);

-- Vectors stay in the heap row (compressed), the text goes to TOAST first. A search
-- rechecks the vectors of candidate pages (phrases, the newest-first walk), and a toasted
-- vector costs a TOAST index lookup and chunk reads each time: measured at 200k pages, a
-- phrase recheck of 62k candidates read 294k buffers toasted, 52k inline (1.9 s -> 1.0 s
-- cold), and the table with its TOAST shrank from 1443 to 1090 MB. The GIN build reads
-- them from the heap too. MAIN still moves a vector out of line when a row cannot fit a
-- page otherwise. Rows written before this keep their storage until rewritten.
ALTER TABLE meeting_pages ALTER COLUMN search_vector SET STORAGE MAIN;

-- The search function reads the date histogram to size its date windows (1000 buckets).
ALTER TABLE meeting_pages ALTER COLUMN meeting_date SET STATISTICS 1000;

-- The search predicate as SQL text over positional parameters: $1 tsquery, $2 municipality
-- ids (bigint[]; `munis` is how many), $3 from, $4 to (dates), $5 document type. Only the
-- filters given are written, so every statement is planned for its own shape; one
-- municipality is an equality, so the (municipality_id, meeting_date) index walks it
-- newest first.
CREATE FUNCTION civicload_search_where(
    munis int, date_from bool, date_to bool, doc_type bool
) RETURNS text LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN 'p.search_vector @@ $1'
    || CASE WHEN munis = 1 THEN ' AND p.municipality_id = ($2)[1]'
            WHEN munis > 1 THEN ' AND p.municipality_id = ANY ($2)' ELSE '' END
    || CASE WHEN date_from THEN ' AND p.meeting_date >= $3' ELSE '' END
    || CASE WHEN date_to THEN ' AND p.meeting_date <= $4' ELSE '' END
    || CASE WHEN doc_type THEN ' AND EXISTS (SELECT 1 FROM meeting_documents d'
                              || ' WHERE d.id = p.document_id AND d.document_type = $5)'
            ELSE '' END;

-- The municipalities a filter allows: NULL when no filter, an empty array when none match.
CREATE FUNCTION civicload_search_municipalities(municipality text, state text)
RETURNS bigint[] LANGUAGE sql STABLE
RETURN CASE WHEN municipality IS NULL AND state IS NULL THEN NULL ELSE
    coalesce((SELECT array_agg(m.id ORDER BY m.id) FROM municipalities m
              WHERE ($1 IS NULL OR m.subdomain = $1)
                AND ($2 IS NULL OR upper(m.state) = upper($2))), '{}') END;

-- Matching pages, counted up to `cap` (the application shows "10,000+"). Reads the GIN
-- index (a bitmap), never the date walk: cost ~ the matches counted.
CREATE FUNCTION civicload_search_count(
    query text,
    municipality text DEFAULT NULL,
    state text DEFAULT NULL,
    date_from date DEFAULT NULL,
    date_to date DEFAULT NULL,
    doc_type text DEFAULT NULL,
    cap int DEFAULT 10000
) RETURNS bigint LANGUAGE plpgsql STABLE
SET enable_seqscan = off SET enable_indexscan = off SET jit = off
AS $$
DECLARE
    tsq tsquery := websearch_to_tsquery('simple', public.unaccent(coalesce(query, '')));
    munis bigint[] := civicload_search_municipalities(municipality, state);
    n bigint;
BEGIN
    IF numnode(tsq) = 0 OR munis = '{}' THEN
        RETURN 0;
    END IF;
    EXECUTE 'SELECT count(*) FROM (SELECT 1 FROM meeting_pages p WHERE '
            || civicload_search_where(coalesce(cardinality(munis), 0), date_from IS NOT NULL,
                                      date_to IS NOT NULL, doc_type IS NOT NULL)
            || ' LIMIT $6) AS capped'
        INTO n USING tsq, munis, date_from, date_to, doc_type, cap;
    RETURN n;
END $$;

-- How many matches make a search "common" (see civicload_search): by date, where sorting
-- every match starts to cost more than walking newest first until `wanted` matches turn
-- up (n = sqrt(wanted x pages), and no less than 10000); by rank, more than can be ranked
-- exactly. `civicload search-bench` reports the route with it.
CREATE FUNCTION civicload_search_threshold(order_by text, wanted int, rank_exact_up_to int DEFAULT 20000)
RETURNS bigint LANGUAGE sql STABLE
RETURN CASE WHEN order_by = 'rank' THEN greatest(rank_exact_up_to, wanted)::bigint + 1
    ELSE greatest(10000, sqrt(wanted::float8 * greatest(
        (SELECT c.reltuples FROM pg_class c WHERE c.oid = to_regclass('meeting_pages')), 0))::bigint) END;

-- The application's search: whole corpus, optional filters (municipality subdomain, state,
-- meeting dates from/to inclusive, document type), `page_size` results after
-- `page_offset`, ordered by meeting date newest first (`order_by => 'date'`, ties by page
-- id, newest first) or by ts_rank (`'rank'`, ties by date then id).
--
-- Newest first is exact, always: the same rows, in the same order, as sorting every match.
-- The plan is chosen from the matches the GIN index actually finds, counted up to
-- T = max(10000, sqrt(needed x pages)), never from the planner's estimate (which took a
-- rare phrase of common words for 100k matches and walked every document):
--   fewer than T: all matches from the GIN bitmap, then a top-N sort (cost ~ matches);
--   T or more: the newest-first btree, checking each page against the query, stopping at
--   the N-th match (cost ~ N x pages / matches <= N x pages / T).
-- By rank: ts_rank over every match when there are at most `rank_exact_up_to` (20000);
-- beyond that, over the `rank_window` (1000) newest matches: relevance among recent
-- meetings, the usual choice when a term is on most pages (ranking 800k matches of a
-- common word takes seconds on any PostgreSQL).
-- `common_from` overrides the threshold (tests use it to take either route on a small
-- corpus; both give the same rows newest first).
CREATE FUNCTION civicload_search(
    query text,
    order_by text DEFAULT 'date',
    municipality text DEFAULT NULL,
    state text DEFAULT NULL,
    date_from date DEFAULT NULL,
    date_to date DEFAULT NULL,
    doc_type text DEFAULT NULL,
    page_size int DEFAULT 100,
    page_offset int DEFAULT 0,
    rank_exact_up_to int DEFAULT 20000,
    rank_window int DEFAULT 1000,
    common_from bigint DEFAULT NULL
) RETURNS TABLE (
    id bigint, source_id text, subdomain text, document_type text, meeting_name text,
    meeting_date date, page_number int, rank real
) LANGUAGE plpgsql STABLE
SET enable_seqscan = off SET enable_indexscan = on SET enable_bitmapscan = on SET jit = off
AS $$
DECLARE
    tsq tsquery := websearch_to_tsquery('simple', public.unaccent(coalesce(query, '')));
    munis bigint[] := civicload_search_municipalities(municipality, state);
    wanted int := greatest(page_offset, 0) + greatest(page_size, 0);
    pred text;
    threshold bigint;
    n bigint;
    rows_sql text;
BEGIN
    IF order_by IS NULL OR order_by NOT IN ('date', 'rank') THEN
        RAISE EXCEPTION 'civicload_search: order_by must be ''date'' or ''rank'', not %', order_by
            USING ERRCODE = '22023';
    END IF;
    IF numnode(tsq) = 0 OR munis = '{}' OR page_size <= 0 THEN
        RETURN;
    END IF;
    pred := civicload_search_where(coalesce(cardinality(munis), 0), date_from IS NOT NULL,
                                   date_to IS NOT NULL, doc_type IS NOT NULL);
    threshold := coalesce(common_from, civicload_search_threshold(order_by, wanted, rank_exact_up_to));
    -- The actual matches, up to the threshold, from the GIN bitmap.
    PERFORM set_config('enable_indexscan', 'off', true);
    EXECUTE 'SELECT count(*) FROM (SELECT 1 FROM meeting_pages p WHERE ' || pred
            || ' LIMIT $6) AS capped'
        INTO n USING tsq, munis, date_from, date_to, doc_type, threshold;
    IF n < threshold THEN
        -- Every match (bitmap), sorted.
        rows_sql := 'SELECT p.id, p.meeting_date, p.search_vector FROM meeting_pages p WHERE ' || pred;
    ELSE
        -- The newest matches, walking the date btree (no bitmap: it would read every match).
        PERFORM set_config('enable_indexscan', 'on', true);
        PERFORM set_config('enable_bitmapscan', 'off', true);
        rows_sql := 'SELECT p.id, p.meeting_date, p.search_vector FROM meeting_pages p WHERE '
            || pred || ' ORDER BY p.meeting_date DESC, p.id DESC LIMIT '
            || CASE order_by WHEN 'date' THEN wanted ELSE greatest(rank_window, wanted) END;
    END IF;
    RETURN QUERY EXECUTE
        'SELECT top.id, p.source_id, m.subdomain, d.document_type, d.meeting_name,
                top.meeting_date, p.page_number, ts_rank(p.search_vector, $1)
         FROM (SELECT c.id, c.meeting_date FROM (' || rows_sql || ') AS c
               ORDER BY ' || CASE order_by WHEN 'date' THEN 'c.meeting_date DESC, c.id DESC'
                   ELSE 'ts_rank(c.search_vector, $1) DESC, c.meeting_date DESC, c.id DESC' END
        || '   LIMIT $6 OFFSET $7) AS top
         JOIN meeting_pages p ON p.id = top.id
         JOIN meeting_documents d ON d.id = p.document_id
         JOIN municipalities m ON m.id = p.municipality_id
         ORDER BY ' || CASE order_by WHEN 'date' THEN '6 DESC, 1 DESC' ELSE '8 DESC, 6 DESC, 1 DESC' END
        USING tsq, munis, date_from, date_to, doc_type, page_size, greatest(page_offset, 0);
END $$;
