-- Archive replay: which spooled Parquet files this database has loaded. `civicload replay`
-- and `civicload reload` record a file here in the same transaction as its pages, rejects
-- and job counters, so a replay killed at any instant resumes with the first file not
-- recorded, and a second replay of the same archive loads nothing twice.
CREATE TABLE replay_files (
    -- The file's path relative to the archive root ({subdomain}/{document_type}/{pass}-{seq}.parquet)
    -- and its content hash: a file rewritten with other content (a resumed backfill
    -- re-spooling a batch) is a different file and is loaded again.
    path        text NOT NULL,
    sha256      text NOT NULL,
    job_id      bigint NOT NULL REFERENCES backfill_jobs (id),
    pass        int NOT NULL,
    seq         bigint NOT NULL,
    pages       bigint NOT NULL,
    rejects     bigint NOT NULL,
    loaded_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (path, sha256)
);
CREATE INDEX replay_files_job ON replay_files (job_id);
