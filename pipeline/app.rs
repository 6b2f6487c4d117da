//! Runs one command and maps its result to the exit status of the contract: 0 when every
//! requested job ended verified, 1 when any failed or was left unverified, 2 for usage or
//! configuration errors.

use std::sync::Arc;

use anyhow::Context;
use sqlx::PgPool;
use stages::source::SourceClient;
use stages::store::jobs::{self, JobStatus};
use stages::store::leases::{owner_id, Lease};
use stages::store::municipalities;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::backfill::Backfill;
use crate::cli::{
    check_template, BackfillArgs, Cli, Command, MunicipalitiesCommand, StatusArgs, TargetArg,
    VerifyArgs,
};
use crate::db::{connect, connect_target};
pub use crate::exit::{UsageError, EXIT_INCOMPLETE, EXIT_OK, EXIT_USAGE};
use crate::ui::report::{self, Unfinished};
use stages::target::{Generation, Target};

pub async fn run(cli: Cli) -> u8 {
    match dispatch(cli).await {
        Ok(code) => code,
        Err(e) => {
            error!("{}", crate::ui::error::one_line(&e));
            crate::exit::status_of(&e)
        }
    }
}

async fn dispatch(cli: Cli) -> anyhow::Result<u8> {
    match &cli.command {
        Command::Migrate => {
            connect(&cli, 1).await?;
            info!("The database is migrated.");
            Ok(EXIT_OK)
        }
        Command::Municipalities(MunicipalitiesCommand::Sync { from }) => {
            sync_municipalities(&cli, from).await
        }
        Command::Backfill(args) => backfill(&cli, args.clone()).await,
        Command::Status(args) => status(&cli, args).await,
        Command::Verify(args) => verify(&cli, args).await,
        Command::Refresh(_) | Command::Serve(_) if cli.target == TargetArg::CivicObserver => {
            Err(UsageError(
                "refresh and serve do not write civic-observer's tables yet: with --target civic-observer, keep the mirror current with `civicload verify --subdomain all --repair` (it keeps pages that notebook entries reference)".into(),
            )
            .into())
        }
        Command::Refresh(args) => crate::refresh::command(&cli, args).await,
        Command::Serve(args) => crate::serve::command(&cli, args).await,
        Command::Replay(args) => crate::archive::replay(&cli, args).await,
        Command::Reload(args) => crate::archive::reload(&cli, args).await,
        Command::Digest => {
            let (pool, target) = connect_target(&cli, 1).await?;
            let d = match target {
                Target::Civicload => stages::store::digest(&pool).await?,
                Target::CivicObserver(_) => stages::store::observer::digest(&pool).await?,
            };
            println!("{} pages, digest {}", d.pages, d.digest);
            Ok(EXIT_OK)
        }
        // Search readiness (issue 6): pipeline/vectorize.rs, maintain.rs, health.rs,
        // search_bench.rs.
        Command::Vectorize(_)
        | Command::Maintain(_)
        | Command::Health(_)
        | Command::SearchBench(_)
            if cli.target == TargetArg::CivicObserver =>
        {
            let (pool, target) = connect_target(&cli, 2).await?;
            let schema = target
                .observer()
                .expect("connected to civic-observer's tables");
            crate::health::observer_command(&pool, schema.generation, &cli.command).await
        }
        Command::Vectorize(args) => {
            let pool = connect(&cli, 2).await?;
            let finished = crate::maintain::run_vectorize(&pool, args).await?;
            Ok(if finished { EXIT_OK } else { EXIT_INCOMPLETE })
        }
        Command::Maintain(args) => {
            let pool = connect(&cli, 2).await?;
            crate::maintain::run_maintain(&pool, args).await?;
            Ok(EXIT_OK)
        }
        Command::Health(args) => {
            let pool = connect(&cli, 2).await?;
            crate::health::run(&pool, args).await?;
            Ok(EXIT_OK)
        }
        Command::SearchBench(args) => {
            let pool = connect(&cli, 2).await?;
            let report = crate::search_bench::run(&pool, args).await?;
            if args.json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                println!("{}", crate::search_bench::render(&report, args.show));
            }
            Ok(EXIT_OK)
        }
    }
}

async fn backfill(cli: &Cli, args: BackfillArgs) -> anyhow::Result<u8> {
    let started = std::time::Instant::now();
    check_template(&cli.source_url).map_err(UsageError)?;
    let spool = crate::archive::open_spool(cli)?;
    let client =
        SourceClient::new(cli.source_config(args.http_timeout, args.max_retries, args.batch_size))
            .context("building the HTTP client")?;
    // Each running job (`--concurrency` and the two small-job workers) holds at most one
    // connection for its batch transaction; leave room for claims, heartbeats, verification
    // and the ANALYZE near the end of a bulk load.
    let (pool, target) = connect_target(cli, u32::from(args.concurrency) + 5).await?;
    // Bulk mode (issue 6), decided once before any job writes: see pipeline/maintain.rs.
    // Never into civic-observer's tables: they are in service, and their indexes theirs.
    let load_mode = match target {
        Target::Civicload => crate::maintain::decide_bulk(&pool, args.bulk_request()).await?,
        Target::CivicObserver(_) => crate::maintain::LoadMode {
            bulk: false,
            initial: false,
            pages_analyzed: false,
        },
    };
    let generation = target.observer().map(|o| o.generation);
    let args = BackfillArgs {
        bulk: load_mode.is_bulk(),
        ..args
    };
    let vectors = read_vector_rules(&pool, &args, generation);
    let skip_fk_checks = args.bulk && fk_checks_skippable(&pool).await;
    let cancel = CancellationToken::new();
    let owner = owner_id();
    // Installed before planning, so a SIGTERM at any moment is a graceful stop.
    crate::shutdown::on_signal(
        cancel.clone(),
        "no new fetches",
        Some(crate::shutdown::Leases {
            pool: pool.clone(),
            owner: owner.clone(),
        }),
    );
    let backfill = Arc::new(Backfill {
        vectors: vectors.clone(),
        pool: pool.clone(),
        client,
        args: args.clone(),
        owner,
        cancel: cancel.clone(),
        spool: spool.clone(),
        skip_fk_checks,
        target: target.clone(),
        pulses: Default::default(),
    });
    let ids = backfill.plan().await?;
    info!(jobs = ids.len(), owner = %backfill.owner, "Planned the backfill.");
    if target.observer().is_some() {
        stages::store::observer::municipalities::ensure_known(&pool).await?;
    }

    if args.verify_only {
        return verify_only(&backfill, &ids).await;
    }

    let run_started = chrono::Utc::now();
    let owner = backfill.owner.clone();
    let source = backfill.client.clone();
    let result = backfill.run(ids.clone()).await?;
    crate::refresh::record_backfill_usage(&pool, &source, &ids).await;
    if let Some(archive) = &spool {
        crate::archive::finish_run(archive, &pool, &ids, &owner, run_started).await;
    }

    // Start to the last job's end; an ANALYZE still running then counts as preparation.
    let load_phase = started.elapsed() - (result.wall - result.loaded);
    println!("{}", report::summary(&result.jobs, result.wall));
    println!("{}", report::stage_breakdown(&result.jobs));
    // Search readiness (issue 6): vectors, indexes, statistics, stats view (refreshed
    // there; here only when the run stops early).
    if target.observer().is_some() {
        // civic-observer's indexes are the application's: nothing to build after a load.
    } else if result.interrupted {
        if let Err(e) = jobs::refresh_stats(&pool).await {
            warn!(error = %e, "Could not refresh meeting_page_stats; `civicload maintain` refreshes it.");
        }
    } else {
        let load_mode = crate::maintain::LoadMode {
            pages_analyzed: result.pages_analyzed,
            ..load_mode
        };
        prepare_for_search(&pool, load_mode, &owner).await?;
        println!(
            "{}",
            report::phases(&result.jobs, load_phase, started.elapsed())
        );
    }
    end_of_run(&pool, &ids, result.interrupted).await
}

/// civicload computes search vectors itself once it has read this server's rules (a few
/// seconds, in the background): see stages/src/tsvector.rs. A bulk load waits for them (a
/// vector left to the server costs a second write of the row); other runs start at once
/// and let PostgreSQL compute the first batches' vectors.
/// civicload computes search vectors itself once it has read this server's rules (a few
/// seconds, in the background): see stages/src/tsvector.rs. A bulk load waits for them (a
/// vector left to the server costs a second write of the row); other runs start at once and
/// let PostgreSQL compute the first batches' vectors. civic-observer's G2 has no vector
/// columns; into G1 every batch waits for civicload's vectors, since a batch without them
/// pays the application's trigger per page.
fn read_vector_rules(
    pool: &PgPool,
    args: &BackfillArgs,
    generation: Option<Generation>,
) -> stages::fetch::SharedVectors {
    use stages::tsvector::{Coverage, VectorBuilder};
    // Bounded: batches wait for the rules in a bulk load, so a probe that hangs (its
    // connection stalled) must not hold them; PostgreSQL computes the vectors then.
    const PROBE_LIMIT: std::time::Duration = std::time::Duration::from_secs(60);
    if args.server_vectors || args.verify_only || generation == Some(Generation::G2) {
        return stages::fetch::SharedVectors::none();
    }
    let vectors = stages::fetch::SharedVectors::pending(args.bulk || generation.is_some());
    let shared = vectors.clone();
    let probe_pool = pool.clone();
    let probe = move |coverage| {
        let pool = probe_pool.clone();
        async move {
            match tokio::time::timeout(
                PROBE_LIMIT,
                VectorBuilder::from_server_covering(&pool, coverage),
            )
            .await
            {
                Ok(r) => r.map_err(|e| e.to_string()),
                Err(_) => Err(format!(
                    "reading the rules took over {} s",
                    PROBE_LIMIT.as_secs()
                )),
            }
        }
    };
    // Planes 0 and 1 first (about a second: every script in common use, and the
    // emoji); every assigned code point (several seconds of the server's CPU) only once
    // a text has a rarer one. Such texts get their vectors from PostgreSQL meanwhile.
    tokio::spawn(async move {
        let common = match probe(Coverage::Common).await {
            Ok(v) => Arc::new(v),
            Err(e) => {
                warn!("PostgreSQL computes the search vectors in this run: civicload cannot reproduce this server's exactly ({e}).");
                shared.resolve(None);
                return;
            }
        };
        shared.resolve(Some(common.clone()));
        common.beyond_coverage().await;
        info!("A page has a code point beyond U+1FFFF: reading the server's rules for every assigned code point.");
        match probe(Coverage::Assigned).await {
            Ok(v) => shared.resolve(Some(Arc::new(v))),
            Err(e) => warn!("PostgreSQL computes the search vectors of texts with code points beyond U+1FFFF in this run ({e})."),
        }
    });
    vectors
}

/// The last lines of a backfill and its exit status: what stopped it, or the jobs of this
/// run (by any worker) that are not completed and verified.
async fn end_of_run(pool: &PgPool, ids: &[i64], interrupted: bool) -> anyhow::Result<u8> {
    let rows = jobs::list(pool, Some(ids)).await?;
    let unfinished: Vec<Unfinished> = rows
        .iter()
        .filter(|j| !j.completed_and_verified())
        .map(Unfinished::from)
        .collect();
    if interrupted {
        println!("Stopped: in-flight batches were committed and unfinished jobs are paused. Run the same command again (or add --resume) to continue from their checkpoints.");
        return Ok(EXIT_INCOMPLETE);
    }
    if unfinished.is_empty() {
        println!("All {} jobs completed and verified.", rows.len());
        Ok(EXIT_OK)
    } else {
        println!(
            "{}",
            report::unfinished(&unfinished, rows.len(), "completed and verified")
        );
        println!("See `civicload status --incomplete`; rerun the same command to continue them.");
        Ok(EXIT_INCOMPLETE)
    }
}

/// Whether this bulk load may COPY pages without per-row foreign-key checks (see
/// stages/src/store/integrity.rs); says which way it goes.
async fn fk_checks_skippable(pool: &PgPool) -> bool {
    match stages::store::integrity::may_skip_fk_checks(pool).await {
        Ok(true) => {
            info!("Bulk mode: new pages are written without per-row foreign-key checks (session_replication_role = replica, for the COPY only); one query after the load proves every page's document and municipality exist.");
            true
        }
        Ok(false) => {
            info!(
                "Bulk mode with per-row foreign-key checks: this role may not set session_replication_role. {}.",
                stages::store::integrity::GRANT_HINT
            );
            false
        }
        Err(e) => {
            warn!(error = %e, "Could not tell whether this role may set session_replication_role; keeping the per-row foreign-key checks.");
            false
        }
    }
}

/// Vectors, indexes and statistics after a load, by the last worker to finish: while
/// other processes still load, or one already prepares, this one leaves it to them.
async fn prepare_for_search(
    pool: &PgPool,
    mode: crate::maintain::LoadMode,
    owner: &str,
) -> anyhow::Result<()> {
    let others = jobs::running_elsewhere(pool, owner).await?;
    if others > 0 {
        println!("{others} jobs are still being loaded by other workers: the last to finish builds the search vectors and indexes (or run `civicload vectorize`, then `civicload maintain`).");
        return Ok(());
    }
    let Some(lease) = Lease::try_acquire(pool, jobs::POST_LOAD_LEASE, owner).await? else {
        println!("Another civicload process is preparing the database for search; leaving it to that one.");
        return Ok(());
    };
    let result = crate::maintain::after_backfill(pool, mode).await;
    let _ = lease.release().await;
    result
}

async fn verify_only(backfill: &Backfill, ids: &[i64]) -> anyhow::Result<u8> {
    let mut all_verified = true;
    for row in jobs::list(&backfill.pool, Some(ids)).await? {
        let key = row.key();
        let r = stages::reconcile::reconcile(
            &backfill.pool,
            &backfill.client,
            &backfill.target,
            &key,
            None,
        )
        .await?;
        all_verified &= r.verdict == stages::reconcile::Verdict::Verified;
        println!("{key}: {}", r.describe());
    }
    Ok(if all_verified {
        EXIT_OK
    } else {
        EXIT_INCOMPLETE
    })
}

async fn verify(cli: &Cli, args: &VerifyArgs) -> anyhow::Result<u8> {
    check_template(&cli.source_url).map_err(UsageError)?;
    let client = SourceClient::new(cli.source_config(args.http_timeout, args.max_retries, 1000))?;
    let (pool, target) = connect_target(cli, 4).await?;
    let ids =
        crate::plan::plan_jobs(&pool, &args.subdomain, args.document_type.map(Into::into)).await?;
    let opts = crate::verify::VerifyOptions {
        deep: args.deep,
        repair: args.repair,
        force: args.force,
        max_delete_share: args.max_delete_percent / 100.0,
    };
    let owner = owner_id();
    let mut all_verified = true;
    for row in jobs::list(&pool, Some(&ids)).await? {
        match crate::verify::verify_job(&pool, &client, &target, &row, &owner, &opts).await {
            Ok(v) => {
                all_verified &= v.verified;
                for line in &v.lines {
                    println!("{}: {line}", v.job);
                }
            }
            Err(e) => {
                all_verified = false;
                println!(
                    "{}/{}: FAILED: {}",
                    row.subdomain,
                    row.document_type,
                    crate::ui::error::one_line(&e)
                );
            }
        }
    }
    if args.repair || args.deep {
        jobs::refresh_stats(&pool).await?;
    }
    Ok(if all_verified {
        EXIT_OK
    } else {
        EXIT_INCOMPLETE
    })
}

async fn status(cli: &Cli, args: &StatusArgs) -> anyhow::Result<u8> {
    let (pool, target) = connect_target(cli, 1).await?;
    if target.observer().is_some() {
        report_kept(&pool, args.json).await?;
    }
    if args.totals {
        let totals = jobs::totals(&pool).await?;
        if args.json {
            println!("{}", serde_json::to_string_pretty(&totals)?);
        } else {
            println!("{}", report::totals_table(&totals));
        }
        return Ok(EXIT_OK);
    }
    let rows: Vec<_> = jobs::list(&pool, None)
        .await?
        .into_iter()
        .filter(|j| !args.failed || j.status == JobStatus::Failed)
        .filter(|j| !args.incomplete || !j.completed_and_verified())
        .collect();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else if rows.is_empty() {
        println!("No jobs match. Start with `civicload backfill --subdomain <SUB>`.");
    } else {
        println!("{}", report::status_table(&rows));
    }
    Ok(EXIT_OK)
}

pub(crate) async fn sync_municipalities(cli: &Cli, from: &str) -> anyhow::Result<u8> {
    let sites = if from.starts_with("http://") || from.starts_with("https://") {
        let client = SourceClient::new(stages::source::SourceConfig {
            service_secret: cli.service_secret.clone().map(stages::Secret::new),
            ..Default::default()
        })?;
        client
            .sites(from)
            .await
            .with_context(|| format!("reading the sites table at {from}"))?
    } else {
        let text = std::fs::read_to_string(from).with_context(|| format!("reading {from}"))?;
        stages::store::municipalities::parse_sites(&text, from)
            .map_err(|e| UsageError(format!("{from}: {e}")))?
    };
    if sites.is_empty() {
        return Err(UsageError(format!("{from} lists no municipalities")).into());
    }
    let (pool, target) = connect_target(cli, 1).await?;
    let (inserted, updated) = municipalities::upsert_sites(&pool, &sites).await?;
    if let Some(o) = target.observer() {
        use stages::store::observer::municipalities as observer;
        let unfit = observer::unfit_sites(&sites);
        for (sub, why) in &unfit {
            warn!("{sub}: not written to civic-observer's municipalities_muni: {why}. Fix the sites list (nothing is truncated).");
        }
        let fit: Vec<_> = sites
            .iter()
            .filter(|s| !unfit.iter().any(|u| u.0 == s.subdomain))
            .cloned()
            .collect();
        let (added, changed) = observer::upsert_sites(&pool, o.generation, &fit).await?;
        println!("civic-observer's municipalities_muni: {added} new, {changed} changed.");
        if !unfit.is_empty() {
            return Ok(EXIT_INCOMPLETE);
        }
    }
    let pages: i64 = sites.iter().filter_map(|s| s.pages).sum();
    println!("Synced {} municipalities from {from}: {inserted} new, {updated} updated; {pages} pages expected in all.", sites.len());
    Ok(EXIT_OK)
}

/// civic-observer: pages gone upstream that civicload keeps because users' notebook
/// entries reference them (on stderr with `--json`, which stays the job list).
async fn report_kept(pool: &PgPool, json: bool) -> anyhow::Result<()> {
    let kept = stages::store::observer::pages::kept_pages(pool).await?;
    if kept.is_empty() {
        return Ok(());
    }
    let entries: i64 = kept.iter().map(|k| i64::from(k.3)).sum();
    let mut lines = vec![format!(
        "{} pages gone upstream are kept because {entries} notebook entries reference them:",
        kept.len()
    )];
    for (sub, doc, id, n) in &kept {
        lines.push(format!("  {sub}/{doc}: page {id} ({n} entries)"));
    }
    if json {
        eprintln!("{}", lines.join("\n"));
    } else {
        println!("{}", lines.join("\n"));
    }
    Ok(())
}
