-- Named, expiring leases that let one civicload process at a time run a piece of
-- maintenance: the post-load phase of a backfill, a `maintain` run, a search index build
-- (stages/src/store/leases.rs). They replace session advisory locks, which a
-- transaction-pooling PgBouncer cannot hold. The holder renews `expires_at` while it
-- works; a dead holder's lease expires.
CREATE TABLE maintenance_leases (
    name text PRIMARY KEY,
    owner text NOT NULL,
    acquired_at timestamptz NOT NULL DEFAULT now(),
    heartbeat_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL
);
