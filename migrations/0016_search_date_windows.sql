-- The newest matches of a sparse query from date windows (issue 16, measured at 5M pages).
--
-- Newest first, when the probe finds fewer than a tenth of the newest pages matching and
-- the matches are more than the function collects (10,000, or sqrt(100 x pages)), the
-- search walked the date btree until it had 100 matches, reading every page in between:
-- at 5M pages `arbor` (29,465 matches, 0.6% of the pages) took 4.2 s p50 / 7.7 s p95, and
-- by rank, whose window of the 1,000 newest matches was walked the same way, 3.7 / 4.0 s.
--
-- Now the newest k matches come from date windows: the date of the n-th newest page
-- within the filters (an index-only walk of n entries of the date btree), then every
-- match on or after it from the bitmaps (the vector's GIN, the date range), sorted. n is
-- twice the pages that should hold k matches at the density the statistics give; a
-- window with fewer than k matches is widened four times over until it has them or spans
-- every page. Exact: every match on or after the window's first date is in it, and pages
-- without a date (which sort first, as in the walk) are always in it.
--
-- By rank, the window of the newest matches is taken from date windows when the
-- statistics put the matches under a tenth of the pages; over that, the walk stays (it
-- finds them within ~10 pages each). Newest first, a probe that found the newest pages
-- dense still walks. A phrase (whose estimate is its words') goes to the windows only
-- when its capped pass found more matches than it collects, and sizes them for that many.
-- `civicload_search_route` says which: 'newest_in_date_windows'.

-- By rank, every match is ranked only up to 5,000 matches (`rank_exact_up_to`, 20,000
-- before): ts_rank reads each match's vector, 40-60 us a match at 1M pages, so 20,000
-- matches cost 0.8-1.2 s, over the 500 ms target. On a 1M-page corpus with a large,
-- OCR-like vocabulary, `council` in one municipality's minutes (7,001 matches) took
-- 428 / 502 ms and `budget parking` 324 / 400 ms p50 / p95. Beyond the limit the 1,000
-- newest matches are ranked (`rank_window`), as before beyond 20,000. A caller may pass
-- a larger limit and pay the time.

-- Under this share of the pages (by the statistics) the newest matches are sparse.
CREATE FUNCTION civicload_search_sparse_below() RETURNS float8
LANGUAGE sql IMMUTABLE PARALLEL SAFE RETURN 0.1;

-- The share of the pages within the filters that the query matches, by the statistics.
-- The pages are counted without the document type, as the windows' pages are (below).
CREATE FUNCTION civicload_search_density(
    estimate float8, munis bigint[], date_from date, date_to date, doc_type text
) RETURNS float8 LANGUAGE plpgsql VOLATILE
AS $$
BEGIN
    RETURN estimate / greatest(civicload_search_estimate(
        civicload_search_filters(coalesce(cardinality(munis), 0), date_from IS NOT NULL,
                                 date_to IS NOT NULL, false),
        NULL::tsquery, munis, date_from, date_to, doc_type), 1);
END $$;

CREATE FUNCTION civicload_search_sparse(
    estimate float8, munis bigint[], date_from date, date_to date, doc_type text
) RETURNS bool LANGUAGE sql VOLATILE
RETURN civicload_search_density(estimate, munis, date_from, date_to, doc_type)
       < civicload_search_sparse_below();

-- The meeting date of the `pages`-th newest page within the filters (NULL when there are
-- fewer pages, or when that page has no date: no lower bound then). The document type is
-- left out: it is a lookup per page, not in the date btrees (107 ms for 3,000 pages of one
-- municipality's minutes at 1M), and any start date gives exact results.
CREATE FUNCTION civicload_search_window_start(
    munis bigint[], date_from date, date_to date, doc_type text, pages bigint
) RETURNS date LANGUAGE plpgsql STABLE
SET enable_seqscan = off SET enable_bitmapscan = off SET enable_indexscan = on SET jit = off
AS $$
DECLARE
    since date;
BEGIN
    EXECUTE 'SELECT p.meeting_date FROM meeting_pages p WHERE '
            || civicload_search_filters(coalesce(cardinality(munis), 0), date_from IS NOT NULL,
                                        date_to IS NOT NULL, false)
            || ' ORDER BY p.meeting_date DESC, p.id DESC OFFSET $6 LIMIT 1'
        INTO since USING NULL::tsquery, munis, date_from, date_to, doc_type, greatest(pages - 1, 0);
    RETURN since;
END $$;

-- The `k` newest matches of `pred` (civicload_search_where's text, over the same
-- parameters), with their rank when `ranked`, from date windows sized for `density`.
CREATE FUNCTION civicload_search_newest(
    pred text, tsq tsquery, munis bigint[], date_from date, date_to date, doc_type text,
    k int, density float8, ranked bool,
    OUT ids bigint[], OUT muni_ids bigint[], OUT dates date[], OUT ranks real[]
) LANGUAGE plpgsql STABLE
SET enable_seqscan = off SET enable_indexscan = off SET enable_bitmapscan = on SET jit = off
AS $$
DECLARE
    pages bigint := ceil(2 * k / greatest(least(density, 1), 1e-9))::bigint;
    since date;
BEGIN
    LOOP
        since := civicload_search_window_start(munis, date_from, date_to, doc_type, pages);
        -- Ranked after the LIMIT: ts_rank reads a vector, so only the k kept are ranked.
        EXECUTE 'SELECT array_agg(c.id), array_agg(c.municipality_id), array_agg(c.meeting_date),
                        array_agg(' || CASE WHEN ranked THEN 'ts_rank(c.search_vector, $1)'
                                            ELSE 'NULL::real' END || ')
                 FROM (SELECT p.id, p.municipality_id, p.meeting_date, '
                || CASE WHEN ranked THEN 'p.search_vector' ELSE 'NULL::tsvector AS search_vector' END
                || ' FROM meeting_pages p WHERE ' || pred
                || CASE WHEN since IS NULL THEN ''
                        ELSE ' AND (p.meeting_date >= $6 OR p.meeting_date IS NULL)' END
                || ' ORDER BY p.meeting_date DESC NULLS FIRST, p.id DESC LIMIT $7) AS c'
            INTO ids, muni_ids, dates, ranks
            USING tsq, munis, date_from, date_to, doc_type, since, k;
        EXIT WHEN since IS NULL OR coalesce(cardinality(ids), 0) >= k;
        pages := pages * 4;
    END LOOP;
END $$;

CREATE OR REPLACE FUNCTION civicload_search_route(
    query text,
    order_by text DEFAULT 'date',
    municipality text DEFAULT NULL,
    state text DEFAULT NULL,
    date_from date DEFAULT NULL,
    date_to date DEFAULT NULL,
    doc_type text DEFAULT NULL,
    page_size int DEFAULT 100,
    page_offset int DEFAULT 0,
    rank_exact_up_to int DEFAULT 5000
) RETURNS text LANGUAGE plpgsql STABLE
AS $$
DECLARE
    tsq tsquery := websearch_to_tsquery('simple', public.unaccent(coalesce(query, '')));
    munis bigint[] := civicload_search_municipalities(municipality, state);
    wanted int := greatest(page_offset, 0) + greatest(page_size, 0);
    threshold bigint := civicload_search_threshold(order_by, wanted, rank_exact_up_to);
    pred text;
    estimate float8;
BEGIN
    IF numnode(tsq) = 0 OR munis = '{}' OR page_size <= 0 THEN
        RETURN 'all_matches';
    END IF;
    pred := civicload_search_where(coalesce(cardinality(munis), 0), date_from IS NOT NULL,
                                   date_to IS NOT NULL, doc_type IS NOT NULL);
    estimate := civicload_search_estimate(pred, tsq, munis, date_from, date_to, doc_type);
    IF order_by = 'date' AND estimate >= civicload_search_rare_below()
       AND civicload_search_probe(tsq, munis, date_from, date_to, doc_type, wanted, 10 * wanted) THEN
        RETURN 'newest_first_walk';
    END IF;
    IF order_by = 'date' AND strpos(tsq::text, '<') = 0 AND estimate >= threshold THEN
        RETURN 'newest_in_date_windows';
    END IF;
    IF (order_by = 'rank' AND strpos(tsq::text, '<') = 0
        AND estimate >= civicload_search_surely_above(threshold))
       OR civicload_search_count(query, municipality, state, date_from, date_to,
                                 doc_type, least(threshold, 2147483647)::int) >= threshold THEN
        RETURN CASE WHEN order_by = 'date'
                         OR civicload_search_sparse(estimate, munis, date_from, date_to, doc_type)
                    THEN 'newest_in_date_windows' ELSE 'newest_first_walk' END;
    END IF;
    RETURN 'all_matches';
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
    rank_exact_up_to int DEFAULT 5000,
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
    windows bool := false;
    estimate float8;
    n bigint;
    ids bigint[];
    muni_ids bigint[];
    dates date[];
    ranks real[];
    rows_sql text;
    windowed record;
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
    IF common_from IS NULL THEN
        estimate := civicload_search_estimate(pred, tsq, munis, date_from, date_to, doc_type);
    END IF;
    pred := civicload_search_narrowed(pred, tsq, coalesce(estimate, 0));
    -- 0. Newest first: the probe (an index walk of at most 10 x wanted pages).
    IF order_by = 'date' AND common_from IS NULL AND estimate >= civicload_search_rare_below() THEN
        walk := civicload_search_probe(tsq, munis, date_from, date_to, doc_type, wanted, 10 * wanted);
    END IF;
    -- 1. The matches from the GIN bitmap, up to the threshold.
    PERFORM set_config('enable_indexscan', 'off', true);
    IF NOT walk AND order_by = 'date' AND common_from IS NULL AND estimate >= threshold
       AND strpos(tsq::text, '<') = 0 THEN
        -- Newest first, the probe failed and the statistics put the matches beyond the
        -- threshold: straight to the date windows (below). Not for a phrase, which the
        -- statistics take for an AND of its words: its capped pass decides.
        windows := true;
    ELSIF NOT walk AND threshold > 0 AND order_by = 'rank' AND strpos(tsq::text, '<') = 0 THEN
        -- By rank, no phrase: a capped count (no vector read), then, when fewer, every
        -- match ranked in a second bitmap pass (0009's route: cheaper than collecting
        -- 20,000 rows for a common term that then takes the walk).
        IF estimate >= civicload_search_surely_above(threshold) THEN
            walk := true;
        ELSE
            EXECUTE 'SELECT count(*) FROM (SELECT 1 FROM meeting_pages p WHERE ' || pred
                    || ' LIMIT $6) AS capped'
                INTO n USING tsq, munis, date_from, date_to, doc_type, least(threshold, 2147483647);
            walk := n >= threshold;
        END IF;
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
        IF coalesce(cardinality(ids), 0) >= threshold THEN
            -- Newest first, the probe already found the newest pages sparse.
            windows := order_by = 'date';
            walk := order_by = 'rank';
        END IF;
        rows_sql := 'SELECT c.id, c.municipality_id, c.meeting_date, c.rank
                     FROM unnest($8, $9, $10, $11) AS c(id, municipality_id, meeting_date, rank)';
        PERFORM set_config('enable_indexscan', 'on', true);
        PERFORM set_config('enable_bitmapscan', 'off', true);
    ELSE
        walk := true;
    END IF;
    -- By rank beyond the exact limit: the newest matches, ranked. When they are sparse (under
    -- a tenth of the pages by the statistics), from date windows rather than a walk.
    IF walk AND order_by = 'rank' AND threshold > 0
       AND civicload_search_sparse(coalesce(estimate, 0), munis, date_from, date_to, doc_type) THEN
        walk := false;
        windows := true;
    END IF;
    IF windows THEN
        -- The newest matches from date windows (migration 0016): exact, and a bitmap per
        -- window instead of a walk that would read every page between two matches.
        windowed := civicload_search_newest(pred, tsq, munis, date_from, date_to, doc_type,
            CASE order_by WHEN 'date' THEN wanted ELSE greatest(rank_window, wanted) END,
            -- A phrase's estimate is its words'; its capped pass found at least `threshold`.
            civicload_search_density(CASE WHEN strpos(tsq::text, '<') > 0 THEN threshold
                                          ELSE coalesce(estimate, 0) END,
                                     munis, date_from, date_to, doc_type),
            order_by = 'rank');
        ids := windowed.ids;
        muni_ids := windowed.muni_ids;
        dates := windowed.dates;
        ranks := windowed.ranks;
        rows_sql := 'SELECT c.id, c.municipality_id, c.meeting_date, c.rank
                     FROM unnest($8, $9, $10, $11) AS c(id, municipality_id, meeting_date, rank)';
        PERFORM set_config('enable_indexscan', 'on', true);
        PERFORM set_config('enable_bitmapscan', 'off', true);
    ELSIF walk THEN
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
