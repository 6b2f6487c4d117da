-- civicload's own objects for `--target civic-observer`, in its bookkeeping schema (the
-- first schema of the session's search_path, `civicload`): never among the application's
-- tables. Idempotent; run at start by store::observer::install under an advisory lock.

-- Pages gone upstream that civicload keeps because notebook entries reference them.
CREATE TABLE IF NOT EXISTS observer_kept_pages (
    page_id          text PRIMARY KEY,
    municipality_id  bigint NOT NULL REFERENCES municipalities (id),
    document_type    text NOT NULL,
    entries          int NOT NULL,
    kept_at          timestamptz NOT NULL DEFAULT now()
);

-- Switches the application's search-vector triggers on meetings_meetingpage off for the
-- calling transaction's batch (civicload supplies exactly the vector they would compute)
-- and returns them with their modes, so observer_restore_vector_triggers puts each back
-- exactly as it was before the transaction ends. Nothing outlives the transaction: a
-- crash rolls the change back with the batch.
CREATE OR REPLACE FUNCTION observer_disable_vector_triggers() RETURNS TABLE (name text, mode text)
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
DECLARE t record;
BEGIN
    FOR t IN
        SELECT tg.tgname::text AS tgname, tg.tgenabled
        FROM pg_trigger tg JOIN pg_proc pr ON pr.oid = tg.tgfoid
        WHERE tg.tgrelid = 'meetings_meetingpage'::regclass AND NOT tg.tgisinternal
          AND tg.tgenabled <> 'D'
          AND (pr.prosrc ILIKE '%search_vector%' OR encode(tg.tgargs, 'escape') ILIKE '%search_vector%')
        ORDER BY tg.tgname
    LOOP
        EXECUTE format('ALTER TABLE meetings_meetingpage DISABLE TRIGGER %I', t.tgname);
        name := t.tgname;
        mode := t.tgenabled::text;
        RETURN NEXT;
    END LOOP;
END $$;

CREATE OR REPLACE FUNCTION observer_restore_vector_triggers(names text[], modes text[]) RETURNS void
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
BEGIN
    -- ALTER TABLE refuses a table with pending trigger events: run the deferred
    -- foreign-key checks of this batch now (they would run at COMMIT anyway).
    SET CONSTRAINTS ALL IMMEDIATE;
    FOR i IN 1 .. coalesce(array_length(names, 1), 0) LOOP
        EXECUTE format('ALTER TABLE meetings_meetingpage ENABLE %s TRIGGER %I',
                       CASE modes[i] WHEN 'A' THEN 'ALWAYS' WHEN 'R' THEN 'REPLICA' ELSE '' END,
                       names[i]);
    END LOOP;
END $$;

-- The application's own job table shows civicload's jobs: a row per (municipality,
-- document type), `running` while civicload holds the job (the application's refresh
-- skips it then), ending with civicload's status, counters, counts and verification.
-- When every job of a municipality is completed and verified, its last_indexed is set.
CREATE OR REPLACE FUNCTION observer_mirror_job() RETURNS trigger LANGUAGE plpgsql
SET search_path FROM CURRENT AS $$
DECLARE
    muni uuid;
    mirror bigint;
    cap constant bigint := 2147483647;
BEGIN
    IF NEW.status = 'pending' THEN
        RETURN NULL;
    END IF;
    SELECT o.id INTO muni FROM municipalities m JOIN municipalities_muni o ON o.subdomain = m.subdomain
    WHERE m.id = NEW.municipality_id;
    IF muni IS NULL THEN
        RETURN NULL;
    END IF;
    SELECT b.id INTO mirror FROM meetings_backfilljob b
    WHERE b.municipality_id = muni AND b.document_type = NEW.document_type ORDER BY b.id DESC LIMIT 1;
    IF mirror IS NULL THEN
        INSERT INTO meetings_backfilljob (created, modified, municipality_id, document_type, status,
            last_cursor, pages_fetched, pages_created, pages_updated, errors_encountered,
            expected_count, actual_count, verified_at, last_error, retry_count)
        VALUES (now(), now(), muni, NEW.document_type, NEW.status, coalesce(NEW.last_cursor, ''),
            least(NEW.pages_fetched, cap), least(NEW.pages_created, cap), least(NEW.pages_updated, cap),
            least(NEW.errors_encountered, cap), least(NEW.expected_count, cap), least(NEW.actual_count, cap),
            NEW.verified_at, coalesce(NEW.last_error, ''), NEW.retry_count);
    ELSE
        UPDATE meetings_backfilljob SET modified = now(), status = NEW.status,
            last_cursor = coalesce(NEW.last_cursor, ''), pages_fetched = least(NEW.pages_fetched, cap),
            pages_created = least(NEW.pages_created, cap), pages_updated = least(NEW.pages_updated, cap),
            errors_encountered = least(NEW.errors_encountered, cap),
            expected_count = least(NEW.expected_count, cap), actual_count = least(NEW.actual_count, cap),
            verified_at = NEW.verified_at, last_error = coalesce(NEW.last_error, ''),
            retry_count = NEW.retry_count
        WHERE id = mirror;
    END IF;
    IF NEW.status = 'completed' AND NEW.verified_at IS NOT NULL THEN
        -- Serializes the municipality's verifications: the last one sees the others'.
        PERFORM 1 FROM municipalities WHERE id = NEW.municipality_id FOR UPDATE;
    END IF;
    IF NEW.status = 'completed' AND NEW.verified_at IS NOT NULL AND NOT EXISTS (
        SELECT 1 FROM backfill_jobs j WHERE j.municipality_id = NEW.municipality_id
          AND j.id <> NEW.id AND (j.status <> 'completed' OR j.verified_at IS NULL)) THEN
        UPDATE municipalities_muni SET last_indexed = NEW.verified_at WHERE id = muni;
    END IF;
    RETURN NULL;
END $$;

CREATE OR REPLACE TRIGGER observer_mirror_job
    AFTER INSERT OR UPDATE ON backfill_jobs
    FOR EACH ROW EXECUTE FUNCTION observer_mirror_job();

-- Replaces pages by their re-OCR'd versions, in the caller's transaction: pairs (old id,
-- new id). Every notebook entry of an old id is re-pointed at the new one; a notebook that
-- already holds the new page keeps that entry, with the notes of both. The old pages are
-- removed (the caller writes the new ones in the same transaction: the foreign keys are
-- deferred to its commit). Returns the pages removed.
CREATE OR REPLACE FUNCTION observer_replace_reocr(p_old text[], p_new text[]) RETURNS bigint
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
DECLARE removed bigint;
BEGIN
    IF coalesce(array_length(p_old, 1), 0) = 0 THEN
        RETURN 0;
    END IF;
    WITH pairs AS (SELECT * FROM unnest(p_old, p_new) AS t(old_id, new_id)),
    merged AS (
        UPDATE notebooks_notebookentry n
        SET note = CASE WHEN o.note = '' OR o.note = n.note THEN n.note
                        WHEN n.note = '' THEN o.note
                        ELSE n.note || E'\n\n' || o.note END,
            modified = now()
        FROM pairs pr JOIN notebooks_notebookentry o ON o.meeting_page_id = pr.old_id
        WHERE n.meeting_page_id = pr.new_id AND n.notebook_id = o.notebook_id
        RETURNING o.id AS old_entry
    ), dropped AS (
        DELETE FROM notebooks_notebookentry e USING merged m WHERE e.id = m.old_entry
    )
    UPDATE notebooks_notebookentry e SET meeting_page_id = pr.new_id, modified = now()
    FROM pairs pr
    WHERE e.meeting_page_id = pr.old_id AND e.id NOT IN (SELECT old_entry FROM merged);
    DELETE FROM meetings_meetingpage WHERE id = ANY(p_old);
    GET DIAGNOSTICS removed = ROW_COUNT;
    RETURN removed;
END $$;

-- Writes a staged batch (civicload_stage, filled and checked by the caller) into pages:
-- the re-OCR'd pages replaced, then an upsert by id that writes only what changed
-- (`created` kept for an unchanged page and, via keep_created, for a re-OCR'd one).
-- With p_switch (G1, the batch carries civicload's vectors) the application's vector
-- triggers are off around these writes only, in this one call: the lock that switch
-- takes is held for the writes, the checkpoint and the commit, with no round trip
-- between the switch and the writes. p_cleaner: target::clean_gin_pending_lists runs
-- beside the load. Returns (pages replaced, created, updated).
CREATE OR REPLACE FUNCTION observer_write_pages(p_subdomain text, p_doc_type text, p_old text[],
    p_new text[], p_g1 boolean, p_switch boolean, p_cleaner boolean)
RETURNS TABLE (o_replaced bigint, o_created bigint, o_updated bigint)
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
DECLARE
    names text[];
    modes text[];
BEGIN
    IF p_switch THEN
        -- The lock is held to the commit: the commit does not wait for the WAL flush.
        -- A crash loses the batch and its checkpoint together (one transaction), so the
        -- resume fetches it again: exactly once still.
        PERFORM set_config('synchronous_commit', 'off', true);
        -- The GIN pending list is merged beside the load (target::clean_gin_pending_lists),
        -- not by this batch under the lock; past 64 MB a batch merges it itself.
        IF p_cleaner THEN
            PERFORM set_config('gin_pending_list_limit', '65536', true);
        END IF;
        SELECT array_agg(name), array_agg(mode) INTO names, modes FROM observer_disable_vector_triggers();
    END IF;
    o_replaced := observer_replace_reocr(p_old, p_new);
    IF p_g1 THEN
        -- The vector is civicload's (stages::tsvector, exactly the application's
        -- expression), or for the few it leaves to the server, that expression itself.
        WITH written AS (
            INSERT INTO meetings_meetingpage AS p
                (id, created, modified, document_id, page_number, text, page_image, search_vector)
            SELECT s.source_id, coalesce(s.keep_created, now()), now(), d.id, s.page_number, s.text,
                   coalesce(s.page_image, ''),
                   coalesce(s.search_vector, to_tsvector('simple', unaccent(coalesce(s.text, ''))))
            FROM civicload_stage s
            JOIN municipalities_muni m ON m.subdomain = p_subdomain
            JOIN meetings_meetingdocument d ON d.municipality_id = m.id AND d.document_type = p_doc_type
             AND d.meeting_name = s.meeting AND d.meeting_date = s.meeting_date
            ON CONFLICT (id) DO UPDATE SET text = EXCLUDED.text, page_image = EXCLUDED.page_image,
                search_vector = EXCLUDED.search_vector, modified = EXCLUDED.modified
            WHERE (p.text, p.page_image, p.search_vector)
                  IS DISTINCT FROM (EXCLUDED.text, EXCLUDED.page_image, EXCLUDED.search_vector)
            RETURNING (xmax = 0) AS fresh
        )
        SELECT count(*) FILTER (WHERE fresh), count(*) FILTER (WHERE NOT fresh)
        INTO o_created, o_updated FROM written;
    ELSE
        WITH written AS (
            INSERT INTO meetings_meetingpage AS p
                (id, created, modified, document_id, page_number, text, page_image, municipality_id,
                 municipality_subdomain, municipality_name, state, meeting_name, meeting_date, document_type)
            SELECT s.source_id, coalesce(s.keep_created, now()), now(), d.id, s.page_number, s.text,
                   coalesce(s.page_image, ''), m.id, m.subdomain, m.name, m.state, d.meeting_name,
                   d.meeting_date, d.document_type
            FROM civicload_stage s
            JOIN municipalities_muni m ON m.subdomain = p_subdomain
            JOIN meetings_meetingdocument d ON d.municipality_id = m.id AND d.document_type = p_doc_type
             AND d.meeting_name = s.meeting AND d.meeting_date = s.meeting_date
            ON CONFLICT (id) DO UPDATE SET text = EXCLUDED.text, page_image = EXCLUDED.page_image,
                municipality_id = EXCLUDED.municipality_id,
                municipality_subdomain = EXCLUDED.municipality_subdomain,
                municipality_name = EXCLUDED.municipality_name, state = EXCLUDED.state,
                meeting_name = EXCLUDED.meeting_name, meeting_date = EXCLUDED.meeting_date,
                document_type = EXCLUDED.document_type, modified = EXCLUDED.modified
            WHERE (p.text, p.page_image, p.municipality_id, p.municipality_subdomain, p.municipality_name,
                   p.state, p.meeting_name, p.meeting_date, p.document_type)
                  IS DISTINCT FROM
                  (EXCLUDED.text, EXCLUDED.page_image, EXCLUDED.municipality_id, EXCLUDED.municipality_subdomain,
                   EXCLUDED.municipality_name, EXCLUDED.state, EXCLUDED.meeting_name, EXCLUDED.meeting_date,
                   EXCLUDED.document_type)
            RETURNING (xmax = 0) AS fresh
        )
        SELECT count(*) FILTER (WHERE fresh), count(*) FILTER (WHERE NOT fresh)
        INTO o_created, o_updated FROM written;
    END IF;
    IF p_switch THEN
        PERFORM observer_restore_vector_triggers(coalesce(names, '{}'), coalesce(modes, '{}'));
    END IF;
    RETURN NEXT;
END $$;
