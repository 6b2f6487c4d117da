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
