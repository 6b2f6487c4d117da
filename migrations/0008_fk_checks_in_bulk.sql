-- A bulk load COPYs new pages as a replica session (`SET LOCAL session_replication_role
-- = replica`, for that statement only, when its role may set it): the per-row foreign-key
-- triggers of meeting_pages do not fire, and the load proves the references afterwards
-- with one set-based query (stages/src/store/integrity.rs). The search-vector trigger must
-- fire all the same, for the pages whose vector civicload leaves to the server: ENABLE
-- ALWAYS makes it fire in replica sessions too. Nothing changes for ordinary sessions
-- (origin). A logical-replication subscriber applying these rows now runs it as well: it
-- keeps the vector it receives unless the row's text changed or its vector is NULL, as
-- on the publisher.
ALTER TABLE meeting_pages ENABLE ALWAYS TRIGGER meeting_pages_search_vector;
