-- Search vectors computed by civicload itself (stages/src/tsvector.rs reproduces
-- civicload_page_vector exactly, proven by its differential test against this server).
-- A load that supplies them sets `civicload.vectors_supplied` with SET LOCAL, for its own
-- transaction only: the trigger then keeps the supplied vector. Where civicload could not
-- guarantee one it sends NULL, and the server computes it as before (or, in bulk mode,
-- leaves it to `civicload vectorize`).
CREATE OR REPLACE FUNCTION civicload_pages_vector_trigger() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF coalesce(current_setting('civicload.vectors_supplied', true), '') = 'on' THEN
        IF NEW.search_vector IS NULL
           AND coalesce(current_setting('civicload.bulk', true), '') <> 'on'
           AND (TG_OP = 'INSERT' OR NEW.text IS DISTINCT FROM OLD.text OR OLD.search_vector IS NULL) THEN
            NEW.search_vector := civicload_page_vector(NEW.text);
        END IF;
        RETURN NEW;
    END IF;
    IF coalesce(current_setting('civicload.bulk', true), '') = 'on' THEN
        IF TG_OP = 'UPDATE' AND NEW.text IS DISTINCT FROM OLD.text THEN
            NEW.search_vector := NULL;
        END IF;
        RETURN NEW;
    END IF;
    IF TG_OP = 'INSERT' OR NEW.text IS DISTINCT FROM OLD.text OR NEW.search_vector IS NULL THEN
        NEW.search_vector := civicload_page_vector(NEW.text);
    END IF;
    RETURN NEW;
END $$;
