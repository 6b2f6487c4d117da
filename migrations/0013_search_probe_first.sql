-- Search at scale, second pass (issue 16): `civicload_search` keeps its signature and its
-- results (newest first is exact; by rank, exact up to `rank_exact_up_to` matches, else
-- the `rank_window` newest matches ranked) and takes cheaper routes to them.
--
-- What 0009 did per search, and what it cost at 1M pages:
--   1. count the matches from the GIN bitmap up to a threshold T (10,000 newest first,
--      20,001 by rank): a heap visit per match counted, and for a phrase a recheck of
--      every candidate page's vector (all pages holding every word);
--   2. fewer than T: read every match from the GIN bitmap again and sort it (a second
--      full pass: a phrase rechecked every candidate twice); else walk newest first.
--
-- Now:
--   0. newest first: a probe walks the `10 x wanted` newest pages within the filters
--      (no text predicate, an index walk) and stops at the `wanted`-th match. If it gets
--      there, the newest-first walk answers exactly (the newest `wanted` matches lie
--      among those pages) for the cost of ~wanted / frequency pages: a common term,
--      a negation, an OR, a municipality or a date range with a common term.
--   1. otherwise one capped pass over the GIN bitmap collects the matches' (id,
--      municipality, date), up to T: fewer than T are every match, sorted from memory
--      (by rank: ranked joining back by the partition key); T or more take the walk.
-- work_mem 64MB (this function's statements only): a GIN bitmap of a common word over a
-- 1M-page partition set outgrew the default 4MB and went lossy (every row of a lossy heap
-- page rechecked: 2,587 extra rechecks in one partition at 1M pages).
-- The routes are still the two of 0009 (all matches / newest-first walk), and
-- `common_from` still forces either (the tests compare both with a brute force).

-- The filters alone (no text predicate), as SQL over the parameters of
-- civicload_search_where: $2 municipality ids, $3 from, $4 to, $5 document type.
CREATE FUNCTION civicload_search_filters(
    munis int, date_from bool, date_to bool, doc_type bool
) RETURNS text LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN 'true'
    || CASE WHEN munis = 1 THEN ' AND p.municipality_id = ($2)[1]'
            WHEN munis > 1 THEN ' AND p.municipality_id = ANY ($2)' ELSE '' END
    || CASE WHEN date_from THEN ' AND p.meeting_date >= $3' ELSE '' END
    || CASE WHEN date_to THEN ' AND p.meeting_date <= $4' ELSE '' END
    || CASE WHEN doc_type THEN ' AND EXISTS (SELECT 1 FROM meeting_documents d'
                              || ' WHERE d.id = p.document_id AND d.document_type = $5)'
            ELSE '' END;

-- Step 0: do the `probe` newest pages within the filters hold `wanted` matches? Walks the
-- newest-first btree (meeting_pages_newest, or meeting_pages_municipality_newest for one
-- municipality), checking each page's vector, stopping at the `wanted`-th match: at most
-- `probe` pages read.
CREATE FUNCTION civicload_search_probe(
    tsq tsquery, munis bigint[], date_from date, date_to date, doc_type text,
    wanted int, probe int
) RETURNS bool LANGUAGE plpgsql STABLE
SET enable_seqscan = off SET enable_indexscan = on SET enable_bitmapscan = off SET jit = off
AS $$
DECLARE
    n int;
BEGIN
    IF wanted <= 0 OR probe < wanted THEN
        RETURN false;
    END IF;
    EXECUTE 'SELECT count(*) FROM (SELECT 1 FROM (SELECT p.search_vector FROM meeting_pages p WHERE '
            || civicload_search_filters(coalesce(cardinality(munis), 0), date_from IS NOT NULL,
                                        date_to IS NOT NULL, doc_type IS NOT NULL)
            || ' ORDER BY p.meeting_date DESC, p.id DESC LIMIT $7) AS w'
            || ' WHERE w.search_vector @@ $1 LIMIT $6) AS found'
        INTO n USING tsq, munis, date_from, date_to, doc_type, wanted, probe;
    RETURN n >= wanted;
END $$;

-- The route civicload_search takes for a request ('all_matches' or 'newest_first_walk'),
-- by the same steps: `civicload search-bench` reports it.
CREATE FUNCTION civicload_search_route(
    query text,
    order_by text DEFAULT 'date',
    municipality text DEFAULT NULL,
    state text DEFAULT NULL,
    date_from date DEFAULT NULL,
    date_to date DEFAULT NULL,
    doc_type text DEFAULT NULL,
    page_size int DEFAULT 100,
    page_offset int DEFAULT 0,
    rank_exact_up_to int DEFAULT 20000
) RETURNS text LANGUAGE plpgsql STABLE
AS $$
DECLARE
    tsq tsquery := websearch_to_tsquery('simple', public.unaccent(coalesce(query, '')));
    munis bigint[] := civicload_search_municipalities(municipality, state);
    wanted int := greatest(page_offset, 0) + greatest(page_size, 0);
    threshold bigint := civicload_search_threshold(order_by, wanted, rank_exact_up_to);
BEGIN
    IF numnode(tsq) = 0 OR munis = '{}' OR page_size <= 0 THEN
        RETURN 'all_matches';
    END IF;
    IF order_by = 'date' AND civicload_search_probe(tsq, munis, date_from, date_to, doc_type,
                                                    wanted, 10 * wanted) THEN
        RETURN 'newest_first_walk';
    END IF;
    RETURN CASE WHEN civicload_search_count(query, municipality, state, date_from, date_to,
                                            doc_type, least(threshold, 2147483647)::int) < threshold
                THEN 'all_matches' ELSE 'newest_first_walk' END;
END $$;

CREATE OR REPLACE FUNCTION civicload_search(
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
SET work_mem = '64MB'
AS $$
DECLARE
    tsq tsquery := websearch_to_tsquery('simple', public.unaccent(coalesce(query, '')));
    munis bigint[] := civicload_search_municipalities(municipality, state);
    wanted int := greatest(page_offset, 0) + greatest(page_size, 0);
    pred text;
    threshold bigint;
    walk bool := false;
    n bigint;
    ids bigint[];
    muni_ids bigint[];
    dates date[];
    ranks real[];
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
    -- 0. Newest first: the probe (an index walk of at most 10 x wanted pages).
    IF order_by = 'date' AND common_from IS NULL THEN
        walk := civicload_search_probe(tsq, munis, date_from, date_to, doc_type, wanted, 10 * wanted);
    END IF;
    -- 1. The matches from the GIN bitmap, up to the threshold.
    PERFORM set_config('enable_indexscan', 'off', true);
    IF NOT walk AND threshold > 0 AND order_by = 'rank' AND strpos(tsq::text, '<') = 0 THEN
        -- By rank, no phrase: a capped count (no vector read), then, when fewer, every
        -- match ranked in a second bitmap pass (0009's route: cheaper than collecting
        -- 20,000 rows for a common term that then takes the walk).
        EXECUTE 'SELECT count(*) FROM (SELECT 1 FROM meeting_pages p WHERE ' || pred
                || ' LIMIT $6) AS capped'
            INTO n USING tsq, munis, date_from, date_to, doc_type, least(threshold, 2147483647);
        walk := n >= threshold;
        rows_sql := 'SELECT p.id, p.municipality_id, p.meeting_date, ts_rank(p.search_vector, $1) AS rank
                     FROM meeting_pages p WHERE ' || pred;
    ELSIF NOT walk AND threshold > 0 THEN
        -- Newest first (the probe failed), or a phrase by rank: one capped pass collects
        -- (id, municipality, date, and by rank ts_rank) of every match: a phrase rechecks
        -- each candidate's vector once, not twice.
        EXECUTE 'SELECT array_agg(c.id), array_agg(c.municipality_id), array_agg(c.meeting_date),
                        array_agg(c.rank)
                 FROM (SELECT p.id, p.municipality_id, p.meeting_date, '
                || CASE order_by WHEN 'rank' THEN 'ts_rank(p.search_vector, $1)' ELSE 'NULL::real' END
                || ' AS rank FROM meeting_pages p WHERE ' || pred || ' LIMIT $6) AS c'
            INTO ids, muni_ids, dates, ranks
            USING tsq, munis, date_from, date_to, doc_type, least(threshold, 2147483647);
        walk := coalesce(cardinality(ids), 0) >= threshold;
        rows_sql := 'SELECT c.id, c.municipality_id, c.meeting_date, c.rank
                     FROM unnest($8, $9, $10, $11) AS c(id, municipality_id, meeting_date, rank)';
        PERFORM set_config('enable_indexscan', 'on', true);
        PERFORM set_config('enable_bitmapscan', 'off', true);
    ELSE
        walk := true;
    END IF;
    IF walk THEN
        -- The newest matches, walking the date btree (no bitmap: it would read every match).
        PERFORM set_config('enable_indexscan', 'on', true);
        PERFORM set_config('enable_bitmapscan', 'off', true);
        rows_sql := 'SELECT p.id, p.municipality_id, p.meeting_date, ts_rank(p.search_vector, $1) AS rank
                     FROM meeting_pages p WHERE ' || pred
            || ' ORDER BY p.meeting_date DESC, p.id DESC LIMIT '
            || CASE order_by WHEN 'date' THEN wanted ELSE greatest(rank_window, wanted) END;
    END IF;
    -- The page of results: the chosen rows sorted, then their columns (joined by the
    -- partition key: one partition's index probed per row).
    RETURN QUERY EXECUTE
        'SELECT top.id, p.source_id, m.subdomain, d.document_type, d.meeting_name,
                top.meeting_date, p.page_number, ts_rank(p.search_vector, $1)
         FROM (SELECT c.id, c.municipality_id, c.meeting_date FROM (' || rows_sql || ') AS c
               ORDER BY ' || CASE order_by WHEN 'date' THEN 'c.meeting_date DESC, c.id DESC'
                   ELSE 'c.rank DESC, c.meeting_date DESC, c.id DESC' END
        || '   LIMIT $6 OFFSET $7) AS top
         JOIN meeting_pages p ON p.id = top.id AND p.municipality_id = top.municipality_id
         JOIN meeting_documents d ON d.id = p.document_id
         JOIN municipalities m ON m.id = p.municipality_id
         ORDER BY ' || CASE order_by WHEN 'date' THEN '6 DESC, 1 DESC' ELSE '8 DESC, 6 DESC, 1 DESC' END
        USING tsq, munis, date_from, date_to, doc_type, page_size, greatest(page_offset, 0),
              ids, muni_ids, dates, ranks;
END $$;
