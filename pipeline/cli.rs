//! The command line (DESIGN.md, "Command-line contract"): flags win over environment.

use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use stages::source::SourceConfig;
use stages::{DocumentType, Secret};

use crate::ui::log::LogFormat;

pub const DEFAULT_SOURCE_TEMPLATE: &str = stages::source::DEFAULT_TEMPLATE;

#[derive(Debug, Parser)]
#[command(
    name = "civicload",
    version,
    about = "Mirror civic.band's meeting pages into PostgreSQL, exactly."
)]
pub struct Cli {
    /// PostgreSQL URL; default: the local server's socket, database `civicload`.
    #[arg(long, env = "DATABASE_URL", global = true, hide_env_values = true)]
    pub database_url: Option<String>,

    /// Source URL template with {subdomain} and {table}.
    #[arg(long, env = "CIVICLOAD_SOURCE_URL", global = true, default_value = DEFAULT_SOURCE_TEMPLATE)]
    pub source_url: String,

    /// civic.band's service secret, sent as X-Service-Secret (never logged).
    #[arg(
        long,
        env = "CIVICBAND_SERVICE_SECRET",
        global = true,
        hide_env_values = true
    )]
    pub service_secret: Option<String>,

    /// Where to spool fetched batches as Parquet (file://, s3://, memory://).
    #[arg(long, env = "CIVICLOAD_SPOOL", global = true)]
    pub spool: Option<String>,

    /// Log lines on stderr as text (colour only on a terminal, and never with NO_COLOR)
    /// or as one JSON object per line.
    #[arg(long, value_enum, env = "CIVICLOAD_LOG_FORMAT", global = true, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Whose tables every command reads and writes: civicload's own schema, or
    /// civic-observer's Django tables (civicload's bookkeeping then lives in schema `civicload`).
    #[arg(long, env = "CIVICLOAD_TARGET", global = true, value_enum, default_value_t = TargetArg::Civicload)]
    pub target: TargetArg,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create the database if needed and apply migrations.
    Migrate,
    /// Manage the municipality list.
    #[command(subcommand)]
    Municipalities(MunicipalitiesCommand),
    /// Load municipalities' pages from the source.
    Backfill(BackfillArgs),
    /// Show every job's status, counters and verification.
    Status(StatusArgs),
    /// Re-verify jobs against the source; `--deep` compares id sets, `--repair` fixes them.
    Verify(VerifyArgs),
    /// Content digest of the pages held (order-independent).
    Digest,
    /// Bring jobs to exact equality with the source, fetching only what changed.
    Refresh(RefreshArgs),
    /// Run civic.band's webhook, scheduled refreshes, /healthz and /metrics.
    Serve(ServeArgs),
    /// Load spooled Parquet files into the database (no source API calls); resumable.
    Replay(ReplayArgs),
    /// Load exactly a manifest's files into an empty database, then print the digest.
    Reload(ReloadArgs),
    /// Build the search vectors that are missing (after a bulk load; resumable).
    Vectorize(crate::vectorize::VectorizeArgs),
    /// VACUUM (ANALYZE), build missing search indexes, refresh meeting_page_stats.
    Maintain(crate::maintain::MaintainArgs),
    /// Database health report (vacuum, dead tuples, indexes, sizes, cache) with verdicts.
    Health(HealthArgs),
    /// Time the application's search (civicload_search): p50/p95/max, rows, plan chosen.
    SearchBench(SearchBenchArgs),
}

#[derive(Debug, Args, Clone)]
pub struct ReplayArgs {
    /// The spool archive to replay (file://, s3://); default: --spool / CIVICLOAD_SPOOL.
    #[arg(long)]
    pub from: Option<String>,
    /// Only these municipalities (comma-separated); default: every job in the archive.
    #[arg(long, value_delimiter = ',')]
    pub subdomain: Vec<String>,
    #[command(flatten)]
    pub load: ReplayLoadArgs,
}

#[derive(Debug, Args, Clone)]
pub struct ReloadArgs {
    /// URL of a run or job manifest (e.g. s3://bucket/prefix/_runs/<run>.json).
    #[arg(long)]
    pub manifest: String,
    /// Empty a database that is not empty without asking.
    #[arg(long)]
    pub yes: bool,
    #[command(flatten)]
    pub load: ReplayLoadArgs,
}

/// How replay and reload load files.
#[derive(Debug, Args, Clone)]
pub struct ReplayLoadArgs {
    /// Jobs loaded at once.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub concurrency: u16,
    /// Files read and decoded ahead of the load, per job.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub read_ahead: u16,
    /// Lease length, seconds.
    #[arg(long, default_value_t = 60, hide = true)]
    pub lease_seconds: u64,
}

#[derive(Debug, Subcommand)]
pub enum MunicipalitiesCommand {
    /// Read a `sites` table (Datasette table JSON URL, or a CSV/JSON file) into `municipalities`.
    Sync {
        #[arg(long)]
        from: String,
    },
}

/// `--target`: see DESIGN.md, "Targets".
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum TargetArg {
    /// civicload's own schema (created and migrated by civicload).
    Civicload,
    /// civic-observer's tables, which civicload never creates or alters.
    CivicObserver,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum DocTypeArg {
    Agenda,
    Minutes,
}

impl From<DocTypeArg> for DocumentType {
    fn from(d: DocTypeArg) -> Self {
        match d {
            DocTypeArg::Agenda => DocumentType::Agenda,
            DocTypeArg::Minutes => DocumentType::Minutes,
        }
    }
}

#[derive(Debug, Args, Clone)]
pub struct BackfillArgs {
    /// Municipalities: `all` (those synced into `municipalities`) or a comma-separated list.
    #[arg(long, value_delimiter = ',', required = true)]
    pub subdomain: Vec<String>,
    /// Only this document type (default: both).
    #[arg(long, value_enum)]
    pub document_type: Option<DocTypeArg>,
    /// Rows per source request and per committed batch (at most 1000, Datasette's maximum).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u16).range(1..=1000))]
    pub batch_size: u16,
    /// Jobs run at once, biggest first (two more workers clear the small ones meanwhile).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub concurrency: u16,
    /// Only continue unfinished jobs from their checkpoints; leave completed jobs alone.
    #[arg(long)]
    pub resume: bool,
    /// Recount and re-verify the jobs without fetching pages.
    #[arg(long)]
    pub verify_only: bool,
    /// Per-request timeout, seconds.
    #[arg(long, default_value_t = 120)]
    pub http_timeout: u64,
    /// Retries of a failed request before the job fails.
    #[arg(long, default_value_t = 8)]
    pub max_retries: u32,
    /// Seconds a job may go without progress (no page fetched, no bytes sent to the
    /// database, no batch committed) before its batch is aborted and retried from the
    /// checkpoint; after 3 such stalls the job fails and the run goes on.
    #[arg(long, default_value_t = 180, value_parser = clap::value_parser!(u64).range(1..))]
    pub stall_timeout: u64,
    /// Lease length, seconds: a worker that stops renewing it loses its jobs to others.
    #[arg(long, default_value_t = 60, hide = true)]
    pub lease_seconds: u64,
    /// Bulk mode even though meeting_pages is not (nearly) empty: the load skips the
    /// per-row search-vector trigger, and vectors are built after the load.
    #[arg(long, conflicts_with = "no_bulk")]
    pub bulk: bool,
    /// Never bulk mode, even into an empty table: every page gets its vector from the row
    /// trigger as it is written.
    #[arg(long)]
    pub no_bulk: bool,
    /// Let PostgreSQL compute every search vector instead of civicload (which reproduces
    /// PostgreSQL's result exactly and falls back to it for any page it cannot).
    #[arg(long)]
    pub server_vectors: bool,
}

#[derive(Debug, Args, Clone)]
pub struct VerifyArgs {
    /// Municipalities: `all` or a comma-separated list.
    #[arg(long, value_delimiter = ',', required = true)]
    pub subdomain: Vec<String>,
    /// Only this document type (default: both).
    #[arg(long, value_enum)]
    pub document_type: Option<DocTypeArg>,
    /// Compare the source's id set with PostgreSQL: missing and stale pages.
    #[arg(long)]
    pub deep: bool,
    /// Fetch only the missing pages and remove stale ones (implies --deep).
    #[arg(long)]
    pub repair: bool,
    /// Let --repair remove more than the safe share of a job's pages.
    #[arg(long)]
    pub force: bool,
    /// The largest share of a job's pages --repair removes without --force, percent.
    #[arg(long, default_value_t = 5.0)]
    pub max_delete_percent: f64,
    /// Per-request timeout, seconds.
    #[arg(long, default_value_t = 120)]
    pub http_timeout: u64,
    /// Retries of a failed request.
    #[arg(long, default_value_t = 8)]
    pub max_retries: u32,
}

#[derive(Debug, Args, Clone)]
pub struct RefreshArgs {
    /// Municipalities: `all` or a comma-separated list.
    #[arg(long, value_delimiter = ',', required = true)]
    pub subdomain: Vec<String>,
    /// Only this document type (default: both).
    #[arg(long, value_enum)]
    pub document_type: Option<DocTypeArg>,
    /// Sync the municipality list first (--sites), then refresh only municipalities whose
    /// `pages` or `last_updated` changed since their last verification (or never verified).
    #[arg(long)]
    pub changed_only: bool,
    /// The sites list to sync for --changed-only (Datasette table URL, CSV or JSON file).
    #[arg(long, env = "CIVICLOAD_SITES")]
    pub sites: Option<String>,
    /// The largest share of a job's pages removed without --force, percent.
    #[arg(long, default_value_t = 5.0)]
    pub max_delete_percent: f64,
    /// Remove pages gone upstream even beyond --max-delete-percent.
    #[arg(long)]
    pub force: bool,
    /// Jobs refreshed at once.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub concurrency: u16,
    /// Per-request timeout, seconds.
    #[arg(long, default_value_t = 120)]
    pub http_timeout: u64,
    /// Retries of a failed request.
    #[arg(long, default_value_t = 8)]
    pub max_retries: u32,
    /// Lease length, seconds.
    #[arg(long, default_value_t = 30, hide = true)]
    pub lease_seconds: u64,
}

#[derive(Debug, Args, Clone)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: std::net::SocketAddr,
    /// Run `refresh --subdomain all --changed-only` this often (e.g. 30s, 15m, 6h, 1d).
    #[arg(long, value_parser = parse_duration)]
    pub refresh_every: Option<Duration>,
    /// Refreshes run at once.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub concurrency: u16,
    /// The sites list the scheduled refresh syncs first (see `refresh --sites`).
    #[arg(long, env = "CIVICLOAD_SITES")]
    pub sites: Option<String>,
    /// The largest share of a job's pages a refresh removes, percent.
    #[arg(long, default_value_t = 5.0)]
    pub max_delete_percent: f64,
    /// Per-request timeout, seconds.
    #[arg(long, default_value_t = 120)]
    pub http_timeout: u64,
    /// Retries of a failed request.
    #[arg(long, default_value_t = 8)]
    pub max_retries: u32,
    /// Lease length, seconds.
    #[arg(long, default_value_t = 30, hide = true)]
    pub lease_seconds: u64,
}

/// `90`, `90s`, `15m`, `6h`, `1d`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: u64 = n
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (e.g. 30s, 15m, 6h, 1d)"))?;
    let secs = match unit {
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (s, m, h or d)")),
    };
    if secs == 0 {
        return Err("the period must be at least 1 s".into());
    }
    Ok(Duration::from_secs(secs))
}

#[derive(Debug, Args, Clone)]
pub struct StatusArgs {
    /// Pages and documents per municipality and type, from the `meeting_page_stats` view.
    #[arg(long)]
    pub totals: bool,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
    /// Only failed jobs.
    #[arg(long)]
    pub failed: bool,
    /// Only jobs that are not completed and verified.
    #[arg(long)]
    pub incomplete: bool,
}

impl BackfillArgs {
    /// `--verify-only`, `--no-bulk` and `--bulk` as the load-mode decision reads them.
    pub fn bulk_request(&self) -> crate::maintain::BulkRequest {
        use crate::maintain::BulkRequest;
        if self.verify_only {
            BulkRequest::VerifyOnly
        } else if self.no_bulk {
            BulkRequest::Never
        } else if self.bulk {
            BulkRequest::Always
        } else {
            BulkRequest::Auto
        }
    }
}

impl Cli {
    /// The source settings; secrets stay wrapped.
    pub fn source_config(
        &self,
        http_timeout: u64,
        max_retries: u32,
        page_size: u16,
    ) -> SourceConfig {
        SourceConfig {
            template: self.source_url.clone(),
            service_secret: self
                .service_secret
                .clone()
                .filter(|s| !s.is_empty())
                .map(Secret::new),
            timeout: Duration::from_secs(http_timeout.max(1)),
            max_retries,
            page_size: usize::from(page_size),
            ..SourceConfig::default()
        }
    }
}

/// Checks the source template before any work starts (a usage error, exit 2).
pub fn check_template(template: &str) -> Result<(), String> {
    if !template.contains("{subdomain}") || !template.contains("{table}") {
        return Err(format!(
            "--source-url {template:?} must contain both {{subdomain}} and {{table}}, e.g. {DEFAULT_SOURCE_TEMPLATE}"
        ));
    }
    let probe = template
        .replace("{subdomain}", "example.ca")
        .replace("{table}", "minutes");
    match url::Url::parse(&probe) {
        Ok(u) if matches!(u.scheme(), "http" | "https") => Ok(()),
        Ok(u) => Err(format!(
            "--source-url must be http or https, not {}",
            u.scheme()
        )),
        Err(e) => Err(format!(
            "--source-url {template:?} is not a URL template: {e}"
        )),
    }
}

/// `civicload health` flags.
#[derive(Debug, Args, Clone)]
pub struct HealthArgs {
    /// Machine-readable output: an array of checks.
    #[arg(long)]
    pub json: bool,
}

/// `--order`.
#[derive(Clone, Copy, Debug, Default, ValueEnum)]
pub enum OrderArg {
    /// Meeting date, newest first.
    #[default]
    Date,
    /// ts_rank, highest first.
    Rank,
}

/// `civicload search-bench` flags.
#[derive(Debug, Args, Clone)]
pub struct SearchBenchArgs {
    /// The search, in web-search syntax (`budget "city council" -parking or bicycle`).
    #[arg(long)]
    pub query: String,
    #[arg(long, value_enum, default_value_t = OrderArg::Date)]
    pub order: OrderArg,
    /// Only this municipality (subdomain).
    #[arg(long)]
    pub municipality: Option<String>,
    /// Only municipalities of this state (e.g. CA).
    #[arg(long)]
    pub state: Option<String>,
    /// Meetings on or after this date (YYYY-MM-DD).
    #[arg(long)]
    pub from: Option<chrono::NaiveDate>,
    /// Meetings on or before this date (YYYY-MM-DD).
    #[arg(long)]
    pub to: Option<chrono::NaiveDate>,
    #[arg(long, value_enum)]
    pub document_type: Option<DocTypeArg>,
    /// Timed runs (the report gives p50, p95 and max).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub runs: u32,
    /// Results per page.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(i32).range(1..=10_000))]
    pub page_size: i32,
    /// Matches are counted up to this many (the application shows "10,000+").
    #[arg(long, default_value_t = 10_000)]
    pub count_cap: i64,
    /// Print the top N results (text output).
    #[arg(long, default_value_t = 5)]
    pub show: usize,
    /// One JSON object.
    #[arg(long)]
    pub json: bool,
}
