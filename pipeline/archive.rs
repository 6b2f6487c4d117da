//! The archive commands: `civicload replay` (load a spool archive's files through the load
//! stage, resumable per file, no source API calls), `civicload reload` (exactly a
//! manifest's files into an empty database, then the digest), and the run manifest a
//! spooled backfill writes when it ends.

use std::collections::BTreeMap;
use std::io::{BufRead, IsTerminal, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::{DateTime, Utc};
use sqlx::PgPool;
use stages::archive::{Archive, ArchiveError, JobFiles, Manifest};
use stages::load::{Load, LoadConfig, LoadObserver};
use stages::replay::{FileCheckpoint, Reader};
use stages::store::jobs::{self, Outcome};
use stages::store::leases::owner_id;
use stages::store::{self, municipalities};
use stages::target::{Generation, Target};
use stages::tsvector::{Coverage, VectorBuilder};
use stages::JobKey;
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::backfill::release_dead_local_leases;
use crate::cli::{Cli, ReloadArgs, ReplayArgs, ReplayLoadArgs};
use crate::db::connect_target;
use crate::exit::{UsageError, EXIT_INCOMPLETE, EXIT_OK};
use crate::ui::progress::Progress;
use crate::ui::report::{self, JobResult, Unfinished};

/// Batches in flight between the reader and load of one job.
const CHANNEL_CAPACITY: usize = 2;

/// Opens `--spool` for a backfill, if given (a bad URL is a usage error).
pub fn open_spool(cli: &Cli) -> anyhow::Result<Option<Archive>> {
    match cli.spool.as_deref().filter(|s| !s.is_empty()) {
        Some(url) => {
            let archive = Archive::open(url).map_err(|e| UsageError(e.to_string()))?;
            info!(spool = %archive.url(), "Spooling every batch as Parquet before it is loaded.");
            Ok(Some(archive))
        }
        None => Ok(None),
    }
}

/// Writes the run manifest of a spooled backfill: every file of the run's jobs (all
/// passes), as the job manifests hold them now. Prints its URL; a failure is a warning
/// (the job manifests are complete without it).
pub async fn finish_run(
    archive: &Archive,
    pool: &PgPool,
    ids: &[i64],
    owner: &str,
    started: DateTime<Utc>,
) {
    let result: anyhow::Result<String> = async {
        let mut files = Vec::new();
        for row in jobs::list(pool, Some(ids)).await? {
            let key = row.key();
            if let Some(m) = archive
                .read_job_manifest(&key.subdomain, key.document_type)
                .await?
            {
                files.extend(m.jobs);
            }
        }
        let finished = Utc::now();
        let run_id = format!(
            "{}-{}",
            started.format("%Y%m%dT%H%M%SZ"),
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        let run = BTreeMap::from([
            ("id".to_string(), run_id.clone()),
            ("owner".to_string(), owner.to_string()),
            ("archive".to_string(), archive.url().to_string()),
            ("started_at".to_string(), started.to_rfc3339()),
            ("finished_at".to_string(), finished.to_rfc3339()),
        ]);
        let manifest = Manifest::for_run(run, files);
        Ok(archive.write_run_manifest(&run_id, &manifest).await?)
    }
    .await;
    match result {
        Ok(url) => crate::outln!("Run manifest: {url}"),
        Err(e) => warn!("Could not write the run manifest: {}. The job manifests under the archive still list every spooled file; `civicload replay --from` reads those.", crate::ui::error::one_line(&e)),
    }
}

/// `civicload replay --from URL [--subdomain ...]`.
pub async fn replay(cli: &Cli, args: &ReplayArgs) -> anyhow::Result<u8> {
    let url = args
        .from
        .clone()
        .or_else(|| cli.spool.clone())
        .filter(|s| !s.is_empty())
        .ok_or_else(|| {
            UsageError("replay needs the archive: --from <file:///... | s3://bucket/prefix> (or --spool / CIVICLOAD_SPOOL)".into())
        })?;
    let archive = Archive::open_existing(&url).map_err(|e| UsageError(e.to_string()))?;
    let subdomains: Vec<String> = args
        .subdomain
        .iter()
        .map(|s| s.trim().to_ascii_lowercase())
        .filter(|s| !s.is_empty())
        .collect();
    let jobs = archive
        .job_manifests((!subdomains.is_empty()).then_some(subdomains.as_slice()))
        .await
        .with_context(|| format!("reading the job manifests of {url}"))?;
    if jobs.is_empty() {
        return Err(UsageError(format!(
            "{url} holds no job manifests{}: is it the archive a `backfill --spool` wrote?",
            if subdomains.is_empty() {
                String::new()
            } else {
                format!(" for {}", subdomains.join(", "))
            }
        ))
        .into());
    }
    let files: usize = jobs.iter().map(|j| j.files.len()).sum();
    info!(archive = %url, jobs = jobs.len(), files, "Replaying the archive.");
    let (pool, target) = connect_target(cli, u32::from(args.load.concurrency) + 3).await?;
    let outcome = load_jobs(&pool, &target, &archive, jobs, &args.load).await?;
    refresh_stats(&pool).await;
    Ok(outcome.print())
}

/// The page statistics view is derived from the pages: rebuild it after loading.
async fn refresh_stats(pool: &PgPool) {
    if let Err(e) = jobs::refresh_stats(pool).await {
        warn!(error = %e, "Could not refresh meeting_page_stats; `civicload maintain` refreshes it.");
    }
}

/// `civicload reload --manifest URL [--yes]`.
pub async fn reload(cli: &Cli, args: &ReloadArgs) -> anyhow::Result<u8> {
    let (archive, manifest) =
        Archive::open_manifest(&args.manifest)
            .await
            .map_err(|e| match e {
                ArchiveError::Missing { .. }
                | ArchiveError::BadUrl { .. }
                | ArchiveError::BadManifest { .. } => anyhow::Error::new(UsageError(e.to_string())),
                e => anyhow::Error::new(e),
            })?;
    let (pool, target) = connect_target(cli, u32::from(args.load.concurrency) + 3).await?;
    if target.observer().is_some() {
        // civicload never empties the application's tables.
        let held = store::observer::digest(&pool).await?.pages;
        if held > 0 {
            return Err(UsageError(format!(
                "civic-observer's meetings_meetingpage holds {held} pages: civicload reloads only into empty application tables and never deletes users' data; use `civicload replay --from <archive>` to bring a database in service up to the archive"
            ))
            .into());
        }
    } else if !store::replay::is_empty(&pool).await? {
        let db = store::connect_options(cli.database_url.as_deref())
            .ok()
            .and_then(|o| o.get_database().map(str::to_string))
            .unwrap_or_else(|| "(default)".into());
        if !args.yes && !confirm_empty(&db)? {
            return Err(UsageError(format!(
                "the database {db} is not empty and was left as it is; reload only into an empty database, or add --yes to empty it first"
            ))
            .into());
        }
        store::replay::empty(&pool).await?;
        info!(database = %db, "Emptied the database for the reload.");
    }
    info!(manifest = %args.manifest, archive = %archive.url(), jobs = manifest.jobs.len(), files = manifest.file_count(), "Reloading the manifest's files.");
    let outcome = load_jobs(&pool, &target, &archive, manifest.jobs, &args.load).await?;
    let code = outcome.print();
    refresh_stats(&pool).await;
    let d = match target {
        Target::Civicload => store::digest(&pool).await?,
        Target::CivicObserver(_) => store::observer::digest(&pool).await?,
    };
    crate::outln!("{} pages, digest {}", d.pages, d.digest);
    Ok(code)
}

/// Asks on the terminal; refuses (false) without one.
fn confirm_empty(db: &str) -> anyhow::Result<bool> {
    if !std::io::stdin().is_terminal() {
        return Ok(false);
    }
    eprint!("The database {db} is not empty. Type `yes` to delete its pages, documents, rejects and jobs before the reload: ");
    std::io::stderr().flush()?;
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    Ok(answer.trim() == "yes")
}

/// The end of a replay or reload.
struct LoadOutcome {
    results: Vec<JobResult>,
    wall: Duration,
    interrupted: bool,
}

impl LoadOutcome {
    /// Prints the summary and returns the exit status.
    fn print(&self) -> u8 {
        crate::outln!("{}", report::summary(&self.results, self.wall));
        let bad: Vec<Unfinished> = self
            .results
            .iter()
            .filter(|r| r.status != Outcome::Completed || !r.verified)
            .map(Unfinished::from)
            .collect();
        if self.interrupted {
            crate::outln!("Stopped: files in flight were committed. Run the same command again to load the rest; loaded files are skipped.");
            return EXIT_INCOMPLETE;
        }
        if bad.is_empty() {
            crate::outln!(
                "All {} jobs loaded and verified against the manifests.",
                self.results.len()
            );
            return EXIT_OK;
        }
        crate::outln!(
            "{}",
            report::unfinished(&bad, self.results.len(), "loaded and verified")
        );
        crate::outln!("Fix or restore the files named above, then run the same command again: files already loaded are skipped.");
        EXIT_INCOMPLETE
    }
}

/// Registers the archive's jobs (first, so a dead replay's leases on this machine can be
/// released) and releases those leases.
async fn register_jobs(
    pool: &PgPool,
    target: &Target,
    jobs: Vec<JobFiles>,
) -> anyhow::Result<Vec<(i64, JobFiles)>> {
    let mut planned = Vec::new();
    for job in jobs {
        let doc = job.doc_type()?;
        let municipality_id = municipalities::ensure(pool, &job.subdomain).await?;
        let job_id = jobs::ensure(pool, municipality_id, doc).await?;
        planned.push((job_id, job));
    }
    if target.observer().is_some() {
        store::observer::municipalities::ensure_known(pool).await?;
    }
    let ids: Vec<i64> = planned.iter().map(|(id, _)| *id).collect();
    let released = release_dead_local_leases(pool, &ids).await?;
    if released > 0 {
        info!(
            jobs = released,
            "Took over jobs whose replay on this machine is gone."
        );
    }
    Ok(planned)
}

/// The builder of the search vectors a replay computes itself, as the backfill does
/// (stages/src/tsvector.rs): none for civic-observer's G2, which has no vector columns, or
/// when civicload cannot reproduce this server's vectors (PostgreSQL computes them then).
async fn replay_vectors(pool: &PgPool, target: &Target) -> Option<Arc<VectorBuilder>> {
    if target
        .observer()
        .is_some_and(|o| o.generation == Generation::G2)
    {
        return None;
    }
    let probe = VectorBuilder::from_server_covering(pool, Coverage::Common);
    match tokio::time::timeout(Duration::from_secs(60), probe).await {
        Ok(Ok(builder)) => Some(Arc::new(builder)),
        Ok(Err(e)) => {
            warn!("PostgreSQL computes the search vectors in this replay: civicload cannot reproduce this server's exactly ({e}).");
            None
        }
        Err(_) => {
            warn!("PostgreSQL computes the search vectors in this replay: reading its rules took over 60 s.");
            None
        }
    }
}

/// Loads the given jobs' files, `concurrency` jobs at a time.
async fn load_jobs(
    pool: &PgPool,
    target: &Target,
    archive: &Archive,
    jobs: Vec<JobFiles>,
    args: &ReplayLoadArgs,
) -> anyhow::Result<LoadOutcome> {
    let started = Instant::now();
    let owner = owner_id();
    let lease = Duration::from_secs(args.lease_seconds.max(5));
    let cancel = CancellationToken::new();
    let signals = crate::shutdown::on_signal(
        cancel.clone(),
        "no new files",
        Some(crate::shutdown::Leases {
            pool: pool.clone(),
            owner: owner.clone(),
        }),
    );

    let planned = register_jobs(pool, target, jobs).await?;
    let vectors = replay_vectors(pool, target).await;
    let expected: u64 = planned
        .iter()
        .map(|(_, j)| j.files.iter().map(|f| f.pages).sum::<u64>())
        .sum();
    let progress = Progress::new(planned.len() as u64, Some(expected), Progress::terminal());
    let stop = CancellationToken::new();
    tokio::spawn(
        progress
            .clone()
            .log_periodically(Duration::from_secs(10), stop.clone()),
    );
    tokio::spawn(heartbeat(pool.clone(), owner.clone(), lease, stop.clone()));

    let slots = Arc::new(Semaphore::new(usize::from(args.concurrency)));
    let mut tasks = JoinSet::new();
    for (job_id, files) in planned {
        let ctx = JobContext {
            target: target.clone(),
            pool: pool.clone(),
            archive: archive.clone(),
            owner: owner.clone(),
            lease,
            read_ahead: usize::from(args.read_ahead),
            vectors: vectors.clone(),
            cancel: cancel.clone(),
            progress: progress.clone(),
        };
        let slots = slots.clone();
        tasks.spawn(async move {
            let _slot = slots
                .acquire_owned()
                .await
                .expect("the semaphore is never closed");
            ctx.run(job_id, files).await
        });
    }
    let mut results = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        results.push(joined.context("a replay task panicked")?);
    }
    stop.cancel();
    signals.abort();
    progress.finish();
    Ok(LoadOutcome {
        results,
        wall: started.elapsed(),
        interrupted: cancel.is_cancelled(),
    })
}

/// What one job's replay needs.
struct JobContext {
    pool: PgPool,
    target: Target,
    archive: Archive,
    owner: String,
    lease: Duration,
    read_ahead: usize,
    vectors: Option<Arc<VectorBuilder>>,
    cancel: CancellationToken,
    progress: Arc<Progress>,
}

impl JobContext {
    /// One job: claim it, load the files it has not loaded yet, verify against the manifest.
    async fn run(self, job_id: i64, job: JobFiles) -> JobResult {
        let mut result = JobResult {
            subdomain: job.subdomain.clone(),
            document_type: job.document_type.clone(),
            status: Outcome::Failed,
            ..JobResult::default()
        };
        if let Err(e) = self.load(job_id, &job, &mut result).await {
            let e = crate::ui::error::one_line(&e);
            warn!("{}/{}: {e}", job.subdomain, job.document_type);
            result.status = Outcome::Failed;
            result.error = Some(e);
        }
        result
    }

    async fn load(
        &self,
        job_id: i64,
        job: &JobFiles,
        result: &mut JobResult,
    ) -> anyhow::Result<()> {
        if self.cancel.is_cancelled() {
            result.status = Outcome::Paused;
            return Ok(());
        }
        let started = Instant::now();
        let row = store::replay::claim(&self.pool, job_id, &self.owner, self.lease)
            .await?
            .ok_or_else(|| anyhow::anyhow!("another civicload process holds this job's lease; rerun once it has finished (or its lease has expired)"))?;
        let key = Arc::new(row.key());
        result.resumed_from = row.pages_fetched.max(0) as u64;
        let loaded = store::replay::loaded_files(&self.pool, job_id).await?;
        let pending: Arc<[_]> = job
            .files
            .iter()
            .filter(|f| !loaded.contains(&(f.path.clone(), f.sha256.clone())))
            .cloned()
            .collect();
        if pending.len() < job.files.len() {
            info!(job = %key, skipped = job.files.len() - pending.len(), "Files already loaded into this database are skipped.");
        }
        self.progress.job_started(&key, result.resumed_from);

        let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
        let reader = Reader {
            archive: self.archive.clone(),
            files: pending.clone(),
            read_ahead: self.read_ahead,
            vectors: self.vectors.clone(),
        };
        // A replay into a database that holds nothing of this job COPYs straight into
        // meeting_pages (the first conflict switches it to upserts).
        let insert_first = self.target.observer().is_none()
            && stages::store::jobs::stores_nothing(
                &self.pool,
                key.municipality_id,
                key.document_type.as_str(),
            )
            .await
            .unwrap_or(false);
        let load = Load::new(
            self.pool.clone(),
            LoadConfig {
                owner: self.owner.clone(),
                insert_first,
                target: self.target.clone(),
                ..LoadConfig::default()
            },
        )
        .with_checkpoint(Arc::new(FileCheckpoint {
            owner: self.owner.clone(),
            files: pending,
        }));
        let observer: Arc<dyn LoadObserver> = self.progress.clone();
        let read_task = tokio::spawn(reader.run(key.clone(), tx, self.cancel.clone()));
        let load_result = load.run(key.clone(), rx, observer).await;
        let read = read_task.await.context("the file reader panicked")?;

        let mut problems: Vec<String> = read.failures.iter().map(|e| e.to_string()).collect();
        let outcome = match &load_result {
            Ok(load) => {
                result.absorb(load);
                result.fetch_time = read.read_time;
                if read.cancelled {
                    Outcome::Paused
                } else if problems.is_empty() {
                    Outcome::Completed
                } else {
                    Outcome::Failed
                }
            }
            Err(e) => {
                problems.push(format!(
                    "{e}; rerun the same command to continue with the files not loaded yet"
                ));
                Outcome::Failed
            }
        };
        let error = (!problems.is_empty()).then(|| problems.join("; "));
        jobs::release(&self.pool, job_id, &self.owner, outcome, error.as_deref()).await?;
        result.seconds = started.elapsed().as_secs_f64();
        result.error = error.clone();
        result.status = outcome;

        if outcome != Outcome::Paused {
            self.verify(job_id, &key, job, error.as_deref(), result)
                .await?;
        }
        self.progress.job_finished(&key, &result.one_line());
        Ok(())
    }

    /// Holds the job's pages and rejects against its manifest's count and records the
    /// verdict (a shortfall fails the job).
    async fn verify(
        &self,
        job_id: i64,
        key: &JobKey,
        job: &JobFiles,
        error: Option<&str>,
        result: &mut JobResult,
    ) -> anyhow::Result<()> {
        let verify_started = Instant::now();
        let doc = key.document_type;
        let expected = job.expected_rows() as i64;
        let held = self.target.count_pages(&self.pool, key).await?;
        let actual = held.stored - held.kept
            + jobs::count_rejects(&self.pool, key.municipality_id, doc).await?;
        let verdict = ManifestVerdict::judge(expected, actual, error);
        jobs::record_verification(
            &self.pool,
            job_id,
            Some((expected, "spool manifest")),
            actual,
            verdict.verified,
            verdict.failed_reason.as_deref(),
        )
        .await?;
        result.verified = verdict.verified;
        result.verification = verdict.verification;
        if verdict.failed_reason.is_some() {
            result.status = Outcome::Failed;
        }
        result.verify_time = verify_started.elapsed();

        Ok(())
    }
}

/// A replayed job's pages and rejects held against the count its manifest lists.
#[derive(Debug, PartialEq, Eq)]
struct ManifestVerdict {
    verified: bool,
    /// Why the job failed: pages missing, or the load's own error.
    failed_reason: Option<String>,
    /// The line for the report.
    verification: String,
}

impl ManifestVerdict {
    /// Verified when exactly the manifest's rows are held and the load had no error; failed
    /// when rows are missing or the load failed. More rows than listed is neither: pages
    /// loaded from elsewhere, or deleted at the source since.
    fn judge(expected: i64, actual: i64, error: Option<&str>) -> ManifestVerdict {
        let verified = actual == expected && error.is_none();
        let failed_reason = if actual < expected {
            Some(format!(
                "{actual} pages + rejects stored, the archive's manifest lists {expected}: {} missing{}",
                expected - actual,
                error.map(|e| format!(" ({e})")).unwrap_or_default()
            ))
        } else {
            error.map(str::to_string)
        };
        let verification = if verified {
            format!("verified: {actual} pages + rejects = the manifest's {expected}")
        } else if actual > expected {
            format!("{actual} pages + rejects stored, {} more than the manifest's {expected} (pages loaded from elsewhere, or deleted at the source since)", actual - expected)
        } else {
            format!("{actual} pages + rejects stored, the manifest lists {expected}")
        };
        ManifestVerdict {
            verified,
            failed_reason,
            verification,
        }
    }
}

/// Renews this process's leases until stopped.
async fn heartbeat(pool: PgPool, owner: String, lease: Duration, stop: CancellationToken) {
    let mut tick = tokio::time::interval(lease / 4);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                if let Err(e) = jobs::heartbeat(&pool, &owner, lease).await {
                    warn!(error = %e, "Could not renew job leases; retrying.");
                }
            }
            _ = stop.cancelled() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::ManifestVerdict;

    #[test]
    fn exactly_the_manifests_rows_without_an_error_is_verified() {
        let v = ManifestVerdict::judge(1_200, 1_200, None);
        assert!(v.verified);
        assert_eq!(v.failed_reason, None);
        assert_eq!(
            v.verification,
            "verified: 1200 pages + rejects = the manifest's 1200"
        );
    }

    #[test]
    fn missing_rows_fail_the_job_and_name_the_files_error() {
        let v = ManifestVerdict::judge(1_200, 1_000, Some("a.parquet: checksum mismatch"));
        assert!(!v.verified);
        assert_eq!(
            v.failed_reason.as_deref(),
            Some("1000 pages + rejects stored, the archive's manifest lists 1200: 200 missing (a.parquet: checksum mismatch)")
        );
    }

    #[test]
    fn all_rows_but_a_load_error_fails_with_that_error() {
        let v = ManifestVerdict::judge(1_200, 1_200, Some("a.parquet: unreadable"));
        assert!(!v.verified);
        assert_eq!(v.failed_reason.as_deref(), Some("a.parquet: unreadable"));
    }

    #[test]
    fn more_rows_than_listed_is_unverified_but_not_failed() {
        let v = ManifestVerdict::judge(1_200, 1_250, None);
        assert!(!v.verified);
        assert_eq!(v.failed_reason, None);
        assert!(v.verification.contains("50 more than the manifest's 1200"));
    }
}
