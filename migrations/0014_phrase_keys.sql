-- Phrase keys (issue 16): a phrase of common words ("fiscal year appropriation") has
-- hundreds of thousands of candidate pages at 1M pages (every page holding all its words),
-- and the GIN index over search_vector cannot tell which hold the words next to each
-- other: each candidate's vector was read to check the positions (3.5 s at 1M pages).
--
-- `phrase_keys` holds, per page, the hashes of every pair of lexemes at consecutive
-- positions of its stored vector, in 65,536 buckets: hashtext(a || ' ' || b) & 65535.
-- A page can match `a <-> b` only if its keys hold the pair's key, so a GIN index over the
-- keys narrows a phrase to the pages holding its pairs (plus bucket collisions), which the
-- search then checks against the vector as before. Results are unchanged: the keys are a
-- necessary condition, never a sufficient one.
--
-- civicload computes the keys with the vectors (stages/src/tsvector/phrase.rs, the same
-- hash) and writes them in the same COPY; for any other writer a trigger computes them from
-- the vector, after the vector's trigger (BEFORE row triggers fire in name order: hence the
-- `z`). Bulk mode (`civicload.bulk`) leaves them NULL like the vectors, and `civicload
-- maintain` fills them. The search uses the keys only when no page with a vector lacks
-- them, so a database migrated with pages in it searches as before until maintain ran.

ALTER TABLE meeting_pages ADD COLUMN phrase_keys int4[];
ALTER TABLE meeting_pages ALTER COLUMN phrase_keys SET STORAGE MAIN;
-- No statistics: ANALYZE samples up to 300k rows for the vectors' target of 1000, and an
-- array column's element statistics over that sample (~270 keys a page) took most of the
-- ANALYZE at the end of a 200k-page load; no plan needs them (the function decides).
ALTER TABLE meeting_pages ALTER COLUMN phrase_keys SET STATISTICS 0;
CREATE INDEX meeting_pages_phrase_keys_missing ON meeting_pages (id)
    WHERE phrase_keys IS NULL AND search_vector IS NOT NULL;

-- The key of one adjacent pair (the Rust side: stages/src/tsvector/phrase.rs).
CREATE FUNCTION civicload_phrase_key(a text, b text) RETURNS int4
LANGUAGE sql IMMUTABLE PARALLEL SAFE STRICT
RETURN hashtext(a || ' ' || b) & 65535;

-- A vector's keys: every pair at positions p, p + 1, sorted and distinct ('{}' for an
-- empty vector, NULL for NULL).
CREATE FUNCTION civicload_phrase_keys(v tsvector) RETURNS int4[]
LANGUAGE sql IMMUTABLE PARALLEL SAFE STRICT
RETURN (SELECT coalesce(array_agg(DISTINCT civicload_phrase_key(a.lexeme, b.lexeme)), '{}')
        FROM (SELECT u.lexeme, pos FROM unnest(v) AS u, unnest(u.positions) AS pos) AS a
        JOIN (SELECT u.lexeme, pos FROM unnest(v) AS u, unnest(u.positions) AS pos) AS b
          ON b.pos = a.pos + 1);

CREATE FUNCTION civicload_pages_phrase_keys_trigger() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.phrase_keys := civicload_phrase_keys(NEW.search_vector);
    RETURN NEW;
END $$;

-- Inserts: keys civicload did not supply (or that another writer supplied, unchecked).
CREATE TRIGGER meeting_pages_z_phrase_keys_insert
    BEFORE INSERT ON meeting_pages
    FOR EACH ROW
    WHEN (current_setting('civicload.bulk', true) IS DISTINCT FROM 'on'
          AND ((NEW.search_vector IS NULL) <> (NEW.phrase_keys IS NULL)
               OR (NEW.search_vector IS NOT NULL
                   AND current_setting('civicload.vectors_supplied', true) IS DISTINCT FROM 'on')))
    EXECUTE FUNCTION civicload_pages_phrase_keys_trigger();
ALTER TABLE meeting_pages ENABLE ALWAYS TRIGGER meeting_pages_z_phrase_keys_insert;
-- Updates: a vector that changed while the keys did not, or keys missing.
CREATE TRIGGER meeting_pages_z_phrase_keys_update
    BEFORE UPDATE ON meeting_pages
    FOR EACH ROW
    WHEN (current_setting('civicload.bulk', true) IS DISTINCT FROM 'on'
          AND ((NEW.search_vector IS NULL) <> (NEW.phrase_keys IS NULL)
               OR (NEW.search_vector IS DISTINCT FROM OLD.search_vector
                   AND NEW.phrase_keys IS NOT DISTINCT FROM OLD.phrase_keys)))
    EXECUTE FUNCTION civicload_pages_phrase_keys_trigger();
ALTER TABLE meeting_pages ENABLE ALWAYS TRIGGER meeting_pages_z_phrase_keys_update;

-- The keys every match of a query must hold: its pairs joined by `<->` (adjacent
-- positions), sorted and distinct; '{}' when none can be relied on. Read from the query's
-- text form, left to right: a pair counts only when both lexemes sit right next to the
-- operator (`'a' <-> 'b'`; a parenthesis, another operator or a negation in between
-- breaks it). An OR anywhere, a negated group or a prefix/weight mark gives '{}': the
-- pairs would no longer be necessary.
CREATE FUNCTION civicload_phrase_pairs(tsq tsquery) RETURNS int4[]
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE STRICT
AS $$
DECLARE
    t text := tsq::text;
    -- The operators alone: the query's text without its quoted lexemes.
    ops text := regexp_replace(t, '''(?:[^''\\]|''''|\\.)*''', '', 'g');
    tok text[];
    prev text;
    joined bool := false;
    negated bool := false;
    lexeme text;
    keys int4[] := '{}';
BEGIN
    IF strpos(ops, '<->') = 0 OR ops ~ '[|:]|!\s*\(' THEN
        RETURN '{}';
    END IF;
    FOR tok IN SELECT regexp_matches(t, '''((?:[^''\\]|''''|\\.)*)''|(<->)|(<\d+>|[&!()])', 'g') LOOP
        IF tok[1] IS NOT NULL THEN
            lexeme := regexp_replace(replace(tok[1], '''''', ''''), '\\(.)', '\1', 'g');
            IF joined AND prev IS NOT NULL AND NOT negated THEN
                keys := keys || civicload_phrase_key(prev, lexeme);
            END IF;
            prev := CASE WHEN negated THEN NULL ELSE lexeme END;
            joined := false;
            negated := false;
        ELSIF tok[2] IS NOT NULL THEN
            joined := true;
        ELSE
            prev := NULL;
            joined := false;
            negated := tok[3] = '!';
        END IF;
    END LOOP;
    RETURN ARRAY(SELECT DISTINCT k FROM unnest(keys) AS k ORDER BY k);
END $$;


-- Part two: search decisions from the planner's statistics where they are clear (issue 16).
--
-- At 1M pages two searches still paid for a step whose answer the statistics already
-- gave (the vectors and dates carry statistics targets of 1000: the planner's estimate of
-- a term's matches was within ~15% of the count on every class at 200k pages):
--   - by rank, a common term (or one within a year) counted its matches up to 20,001, a
--     heap visit per match (1.1-1.3 s p95 within one year), only to learn there were more
--     than can be ranked exactly. Now, when the estimate is at least 1.2 x that limit,
--     the search takes the window of the newest matches without counting;
--   - newest first, a rare term or a word that matches nothing first walked up to 1,000
--     newest pages looking for 100 matches (the probe). Now, when the estimate is under
--     2,000 matches, it goes straight to collecting every match (at most a few thousand).
-- Both are shortcuts to the route the exact steps would mostly take; when the estimate is
-- wrong, the result stays exact by date (the capped pass walks newest first if it finds
-- more than expected) and by rank the 20,000 limit is applied on the estimate's word.
-- Phrases keep the exact count (the planner takes a phrase for an AND of its words), and
-- a phrase of common words takes its candidates from the pairs' index alone (below).

-- The planner's estimate of the rows `pred` matches, for the same values (EXPLAIN is not
-- allowed in a non-volatile function, hence VOLATILE; it reads nothing but statistics).
CREATE FUNCTION civicload_search_estimate(
    pred text, tsq tsquery, munis bigint[], date_from date, date_to date, doc_type text
) RETURNS float8 LANGUAGE plpgsql VOLATILE
AS $$
DECLARE
    plan json;
BEGIN
    EXECUTE 'EXPLAIN (FORMAT JSON) SELECT 1 FROM meeting_pages p WHERE ' || pred
        INTO plan USING tsq, munis, date_from, date_to, doc_type;
    RETURN (plan -> 0 -> 'Plan' ->> 'Plan Rows')::float8;
END $$;

-- Below this estimate newest first skips the probe.
CREATE FUNCTION civicload_search_rare_below() RETURNS float8
LANGUAGE sql IMMUTABLE PARALLEL SAFE RETURN 2000;

-- At or above this estimate, by rank, the matches are taken to exceed `threshold`.
CREATE FUNCTION civicload_search_surely_above(threshold bigint) RETURNS float8
LANGUAGE sql IMMUTABLE PARALLEL SAFE RETURN 1.2 * threshold;

-- The search's extra condition for a phrase: ' AND p.phrase_keys @> ...' (a GIN-indexable
-- containment of literal integers), or '' when the query has no usable pair, some page
-- with a vector has no keys yet, or the pairs' index is not in service: without it (a
-- load that dropped it and has not rebuilt it yet, an interrupted build) the containment
-- test has no index to use, and for common words, whose vector test is written so the
-- planner leaves the vector index alone, that would be a scan of every page.
CREATE FUNCTION civicload_phrase_filter(tsq tsquery) RETURNS text
LANGUAGE plpgsql STABLE
SET enable_seqscan = off
AS $$
DECLARE
    keys int4[] := civicload_phrase_pairs(tsq);
BEGIN
    IF coalesce(cardinality(keys), 0) = 0
       OR NOT EXISTS (SELECT 1 FROM pg_index
                      WHERE indexrelid = to_regclass('meeting_pages_phrase_keys_gin') AND indisvalid)
       OR EXISTS (SELECT 1 FROM meeting_pages WHERE phrase_keys IS NULL AND search_vector IS NOT NULL) THEN
        RETURN '';
    END IF;
    RETURN format(' AND p.phrase_keys @> %L::int4[]', keys);
END $$;

-- Estimated matches of the words alone at or above which a phrase's candidates come from
-- the pairs' index alone: the words' own index then costs more than it removes (at 1M
-- pages `"fiscal year"`: 17 ms of vector-index scan per partition to drop a quarter of
-- the pairs' candidates; 38 ms warm in all instead of 153 ms).
CREATE FUNCTION civicload_search_common_words() RETURNS float8
LANGUAGE sql IMMUTABLE PARALLEL SAFE RETURN 20000;

-- The predicate with the phrase narrowing (migration 0014) added: for common words the
-- vector test is written `ts_match_vq(...)`, the same test as `@@`, which the planner
-- does not take to the vector index, so the pairs' index alone makes the bitmap.
CREATE FUNCTION civicload_search_narrowed(pred text, tsq tsquery, words_estimate float8)
RETURNS text LANGUAGE plpgsql STABLE
AS $$
DECLARE
    phrase text := civicload_phrase_filter(tsq);
BEGIN
    IF phrase = '' THEN
        RETURN pred;
    ELSIF words_estimate >= civicload_search_common_words() THEN
        RETURN replace(pred, 'p.search_vector @@ $1', 'ts_match_vq(p.search_vector, $1)') || phrase;
    END IF;
    RETURN pred || phrase;
END $$;

CREATE OR REPLACE FUNCTION civicload_search_count(
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
    pred text;
BEGIN
    IF numnode(tsq) = 0 OR munis = '{}' THEN
        RETURN 0;
    END IF;
    pred := civicload_search_where(coalesce(cardinality(munis), 0), date_from IS NOT NULL,
                                   date_to IS NOT NULL, doc_type IS NOT NULL);
    IF strpos(tsq::text, '<') > 0 THEN
        pred := civicload_search_narrowed(pred, tsq,
            civicload_search_estimate(pred, tsq, munis, date_from, date_to, doc_type));
    END IF;
    EXECUTE 'SELECT count(*) FROM (SELECT 1 FROM meeting_pages p WHERE ' || pred
            || ' LIMIT $6) AS capped'
        INTO n USING tsq, munis, date_from, date_to, doc_type, cap;
    RETURN n;
END $$;

-- The probe (0013), with a phrase's pairs tested before its vector.
CREATE OR REPLACE FUNCTION civicload_search_probe(
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
    -- A phrase's pairs (migration 0014) are checked first: an array test instead of
    -- decompressing the vector for most of the pages walked.
    EXECUTE 'SELECT count(*) FROM (SELECT 1 FROM (SELECT p.search_vector, p.phrase_keys FROM meeting_pages p WHERE '
            || civicload_search_filters(coalesce(cardinality(munis), 0), date_from IS NOT NULL,
                                        date_to IS NOT NULL, doc_type IS NOT NULL)
            || ' ORDER BY p.meeting_date DESC, p.id DESC LIMIT $7) AS w WHERE true'
            || replace(civicload_phrase_filter(tsq), 'p.phrase_keys', 'w.phrase_keys')
            || ' AND w.search_vector @@ $1 LIMIT $6) AS found'
        INTO n USING tsq, munis, date_from, date_to, doc_type, wanted, probe;
    RETURN n >= wanted;
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
    rank_exact_up_to int DEFAULT 20000
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
    IF order_by = 'rank' AND strpos(tsq::text, '<') = 0
       AND estimate >= civicload_search_surely_above(threshold) THEN
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
    estimate float8;
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
    IF NOT walk AND threshold > 0 AND order_by = 'rank' AND strpos(tsq::text, '<') = 0 THEN
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
