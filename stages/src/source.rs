//! The civic.band client: one municipality's Datasette table JSON API, read by keyset
//! pagination on the unique `id` with retries, backoff and validation of every page.
//!
//! Why keyset on `id`: civic.band sorts both tables by `date` descending with no
//! tie-breaker, and following its `next` tokens under that sort skips and repeats rows
//! inside a date (SOURCE.md, "pagination trap"). We always send `_sort=id` and our own
//! `id__gt=<last id>` filter, so the cursor is a plain source id that we own and checkpoint.

use std::time::Duration;

use bytes::Bytes;
use rand::Rng;
use reqwest::header::{HeaderMap, HeaderValue, RETRY_AFTER};
use reqwest::{StatusCode, Url};
use serde::Deserialize;
use serde_json::value::RawValue;
use tracing::{debug, warn};

use crate::secret::Secret;
use crate::usage::{table_key, ErrorKind};

/// Where and how to read the source.
#[derive(Clone, Debug)]
pub struct SourceConfig {
    /// URL template with `{subdomain}` and `{table}`.
    pub template: String,
    pub service_secret: Option<Secret>,
    /// Per-request timeout (connect + body).
    pub timeout: Duration,
    /// Retries after the first attempt, for transient failures.
    pub max_retries: u32,
    /// Rows per request; Datasette's maximum is 1000.
    pub page_size: usize,
    /// First backoff delay; doubles each retry (with full jitter) up to `max_backoff`.
    pub base_backoff: Duration,
    pub max_backoff: Duration,
}

/// civic.band's table JSON: the source unless `--source-url` names another.
pub const DEFAULT_TEMPLATE: &str = "https://{subdomain}.civic.band/meetings/{table}.json";

impl Default for SourceConfig {
    fn default() -> Self {
        SourceConfig {
            template: DEFAULT_TEMPLATE.into(),
            service_secret: None,
            timeout: Duration::from_secs(120),
            max_retries: 8,
            page_size: 1000,
            base_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(60),
        }
    }
}

/// A failure to read the source. `is_transient` decides whether it is retried.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("{url} answered HTTP {status}: {message}")]
    Status {
        url: String,
        status: u16,
        message: String,
        retry_after: Option<Duration>,
    },
    #[error("{url} redirected to another host ({location}); the municipality probably does not exist on the source: check the subdomain and the --source-url template")]
    Redirected { url: String, location: String },
    #[error("request to {url} failed: {message}")]
    Transport { url: String, message: String },
    #[error("{url} answered something that is not a valid page: {message}")]
    InvalidPage { url: String, message: String },
    #[error("the table at {url} lacks required columns {missing:?} (it has {present:?})")]
    MissingColumns {
        url: String,
        missing: Vec<String>,
        present: Vec<String>,
    },
    #[error("{source} (gave up after {attempts} attempts)")]
    RetriesExhausted {
        attempts: u32,
        #[source]
        source: Box<SourceError>,
    },
    #[error(
        "the source template {template:?} is not a valid URL for {subdomain}/{table}: {message}"
    )]
    BadTemplate {
        template: String,
        subdomain: String,
        table: String,
        message: String,
    },
    #[error("cancelled")]
    Cancelled,
    #[error("the source stalled: the request for batch {seq} brought nothing for {seconds} s, {stalls} times (the watchdog's limit, --stall-timeout)")]
    Stalled { seq: i64, seconds: u64, stalls: u32 },
}

impl SourceError {
    /// Transient failures are worth another attempt; permanent ones fail the job at once.
    pub fn is_transient(&self) -> bool {
        match self {
            SourceError::Status { status, .. } => {
                // 402 is civic.band's rate limit (not Datasette's error shape).
                matches!(*status, 402 | 408 | 425 | 429) || *status >= 500
            }
            SourceError::Transport { .. } | SourceError::InvalidPage { .. } => true,
            _ => false,
        }
    }

    /// The kind of failure, for the error counters.
    pub fn kind(&self) -> ErrorKind {
        match self {
            SourceError::Status { status, .. } if matches!(*status, 402 | 429) => {
                ErrorKind::RateLimited
            }
            SourceError::Status { status, .. } if *status >= 500 => ErrorKind::Server,
            SourceError::Status { .. } => ErrorKind::Client,
            SourceError::Redirected { .. } => ErrorKind::Redirected,
            SourceError::InvalidPage { .. } | SourceError::MissingColumns { .. } => {
                ErrorKind::InvalidPage
            }
            SourceError::RetriesExhausted { source, .. } => source.kind(),
            _ => ErrorKind::Transport,
        }
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            SourceError::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

/// The columns civicload reads, in the order it asks for them.
pub const WANTED_COLUMNS: [&str; 8] = [
    "id",
    "meeting",
    "date",
    "page",
    "text",
    "page_image",
    "entities_json",
    "votes_json",
];
/// Columns without which a page cannot be stored.
pub const REQUIRED_COLUMNS: [&str; 5] = ["id", "meeting", "date", "page", "text"];

/// One validated page of the table API.
#[derive(Debug)]
pub struct SourcePage {
    /// Each row's JSON, object-shaped (Datasette 1.0) or array-shaped (0.65 without
    /// `_shape=objects`, then `columns` says what each position holds).
    pub rows: Vec<Box<RawValue>>,
    pub columns: Option<Vec<String>>,
    /// The last id of this page: the cursor to continue from.
    pub last_id: Option<String>,
    /// False when the source says there is nothing after this page.
    pub has_more: bool,
}

#[derive(Deserialize)]
struct Envelope {
    ok: Option<bool>,
    error: Option<String>,
    rows: Option<Vec<Box<RawValue>>>,
    columns: Option<Vec<String>>,
    next: Option<serde_json::Value>,
    count: Option<serde_json::Value>,
    filtered_table_rows_count: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct IdOnly {
    id: serde_json::Value,
}

/// A table's columns and, when one answer gives it exactly, its row count.
#[derive(Clone, Debug)]
pub struct TableInfo {
    /// Every column the table has.
    pub present: Vec<String>,
    /// The columns civicload reads, in `WANTED_COLUMNS` order.
    pub wanted: Vec<String>,
    pub count: Option<SourceCount>,
}

/// How many rows the source says a table holds, and how sure that is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceCount {
    pub rows: u64,
    /// Which route gave it, recorded in `backfill_jobs.expected_source`.
    pub route: &'static str,
}

/// Datasette 1.0 counts at most this many rows with `_extra=count`.
const DATASETTE_COUNT_CAP: u64 = 10_001;

/// The exact row count an answer gives, if any: 0.65's `filtered_table_rows_count`, or
/// 1.0's `count` below its cap.
fn exact_count(env: &Envelope) -> Option<SourceCount> {
    if let Some(n) = env
        .filtered_table_rows_count
        .as_ref()
        .and_then(|v| v.as_u64())
    {
        return Some(SourceCount {
            rows: n,
            route: "datasette_filtered_count",
        });
    }
    env.count
        .as_ref()
        .and_then(|v| v.as_u64())
        .filter(|n| *n < DATASETTE_COUNT_CAP)
        .map(|rows| SourceCount {
            rows,
            route: "datasette_count",
        })
}

/// An HTTP client for civic.band's per-municipality Datasette.
#[derive(Clone, Debug)]
pub struct SourceClient {
    http: reqwest::Client,
    config: SourceConfig,
    /// What this client and its clones spent (requests, bytes, errors by kind).
    usage: std::sync::Arc<crate::usage::SourceUsage>,
}

impl SourceClient {
    pub fn new(config: SourceConfig) -> Result<Self, SourceError> {
        let mut headers = HeaderMap::new();
        if let Some(secret) = &config.service_secret {
            let mut value =
                HeaderValue::from_str(secret.expose()).map_err(|_| SourceError::Transport {
                    url: "<service secret>".into(),
                    message: "the service secret contains characters not allowed in a header"
                        .into(),
                })?;
            value.set_sensitive(true);
            headers.insert("X-Service-Secret", value);
        }
        // Redirects within one host are followed; a redirect to another host means the
        // municipality is unknown (civic.band answers 302 to its home page): stop there.
        let policy = reqwest::redirect::Policy::custom(|attempt| {
            let same_host = attempt
                .previous()
                .first()
                .map(|first| first.host_str() == attempt.url().host_str())
                .unwrap_or(false);
            if !same_host || attempt.previous().len() > 5 {
                attempt.stop()
            } else {
                attempt.follow()
            }
        });
        let http = reqwest::Client::builder()
            .default_headers(headers)
            .redirect(policy)
            .timeout(config.timeout)
            .connect_timeout(config.timeout.min(Duration::from_secs(30)))
            .user_agent(concat!("civicload/", env!("CARGO_PKG_VERSION")))
            .pool_max_idle_per_host(8)
            .build()
            .map_err(|e| SourceError::Transport {
                url: "<client>".into(),
                message: e.to_string(),
            })?;
        Ok(SourceClient {
            http,
            config,
            usage: Default::default(),
        })
    }

    pub fn config(&self) -> &SourceConfig {
        &self.config
    }

    /// Requests, bytes and errors spent by this client and its clones.
    pub fn usage(&self) -> &std::sync::Arc<crate::usage::SourceUsage> {
        &self.usage
    }

    /// The table's JSON URL for a municipality.
    pub fn table_url(&self, subdomain: &str, table: &str) -> Result<Url, SourceError> {
        let raw = self
            .config
            .template
            .replace("{subdomain}", subdomain)
            .replace("{table}", table);
        Url::parse(&raw).map_err(|e| SourceError::BadTemplate {
            template: self.config.template.clone(),
            subdomain: subdomain.into(),
            table: table.into(),
            message: e.to_string(),
        })
    }

    /// The columns the table has, among those civicload reads. Fails permanently when a
    /// required column is absent.
    pub async fn columns(&self, subdomain: &str, table: &str) -> Result<Vec<String>, SourceError> {
        Ok(self.columns_and_count(subdomain, table).await?.0)
    }

    /// `columns`, and the table's row count when the same answer gives it exactly (a
    /// table under Datasette's count cap): one request instead of two for most tables.
    pub async fn columns_and_count(
        &self,
        subdomain: &str,
        table: &str,
    ) -> Result<(Vec<String>, Option<SourceCount>), SourceError> {
        let info = self.table_info(subdomain, table).await?;
        Ok((info.wanted, info.count))
    }

    /// Every column the table has, those civicload reads, and the row count when the
    /// answer gives it exactly; one request. Fails permanently when a required column is
    /// absent.
    pub async fn table_info(&self, subdomain: &str, table: &str) -> Result<TableInfo, SourceError> {
        let mut url = self.table_url(subdomain, table)?;
        url.query_pairs_mut()
            .append_pair("_size", "1")
            .append_pair("_extra", "columns")
            .append_pair("_extra", "count")
            .append_pair("_sort", "id");
        let shown = url.to_string();
        let key = table_key(subdomain, table);
        let (present, count) = self
            .get_parsed(url, &key, |body, shown| {
                let env = parse_envelope(body, shown)?;
                let count = exact_count(&env);
                let columns = env.columns.ok_or_else(|| SourceError::InvalidPage {
                    url: shown.into(),
                    message: "no `columns` in the answer".into(),
                })?;
                Ok((columns, count))
            })
            .await?;
        let missing: Vec<String> = REQUIRED_COLUMNS
            .iter()
            .filter(|c| !present.iter().any(|p| p == *c))
            .map(|c| c.to_string())
            .collect();
        if !missing.is_empty() {
            return Err(SourceError::MissingColumns {
                url: shown,
                missing,
                present,
            });
        }
        let wanted = WANTED_COLUMNS
            .iter()
            .filter(|c| present.iter().any(|p| p == *c))
            .map(|c| c.to_string())
            .collect();
        Ok(TableInfo {
            present,
            wanted,
            count,
        })
    }

    /// The page of rows after `after` (a source id), in id order.
    pub async fn page(
        &self,
        subdomain: &str,
        table: &str,
        columns: &[String],
        after: Option<&str>,
    ) -> Result<SourcePage, SourceError> {
        let mut url = self.table_url(subdomain, table)?;
        {
            let mut q = url.query_pairs_mut();
            q.append_pair("_size", &self.config.page_size.to_string());
            q.append_pair("_sort", "id");
            q.append_pair("_shape", "objects");
            for c in columns.iter().filter(|c| c.as_str() != "id") {
                q.append_pair("_col", c);
            }
            if let Some(after) = after {
                q.append_pair("id__gt", after);
            }
        }
        // A page that fails validation is retried like a transport error: it is never
        // taken as the end of the data.
        self.get_parsed(url, &table_key(subdomain, table), |body, shown| {
            parse_page(body, shown, after)
        })
        .await
    }

    /// An exact count when one is cheap (Datasette's count below its cap, or the SQL
    /// endpoint); None when only an id scan could tell. `count_field` first asks the
    /// table's own count.
    pub async fn cheap_count(
        &self,
        subdomain: &str,
        table: &str,
        count_field: bool,
    ) -> Option<SourceCount> {
        if count_field {
            let mut url = self.table_url(subdomain, table).ok()?;
            url.query_pairs_mut()
                .append_pair("_size", "0")
                .append_pair("_extra", "count");
            if let Some(count) = self
                .get_parsed(url, &table_key(subdomain, table), parse_envelope)
                .await
                .ok()
                .and_then(|env| exact_count(&env))
            {
                return Some(count);
            }
        }
        self.sql_count(subdomain, table).await.map(|n| SourceCount {
            rows: n,
            route: "datasette_sql",
        })
    }

    /// The exact number of rows in a table, from the best route the source allows
    /// (SOURCE.md, "Counting"). Never returns Datasette 1.0's capped count as exact.
    pub async fn exact_count(
        &self,
        subdomain: &str,
        table: &str,
    ) -> Result<SourceCount, SourceError> {
        self.table_url(subdomain, table)?;
        if let Some(count) = self.cheap_count(subdomain, table, true).await {
            return Ok(count);
        }
        let n = self.id_scan_count(subdomain, table).await?;
        Ok(SourceCount {
            rows: n,
            route: "id_scan",
        })
    }

    /// `select count(*)` through the database's SQL endpoint, where the source allows it.
    async fn sql_count(&self, subdomain: &str, table: &str) -> Option<u64> {
        let table_url = self.table_url(subdomain, table).ok()?;
        let path = table_url.path();
        let suffix = format!("/{table}.json");
        let db_path = path.strip_suffix(&suffix)?;
        let mut url = table_url.clone();
        url.set_path(&format!("{db_path}.json"));
        url.set_query(None);
        url.query_pairs_mut()
            .append_pair("sql", &format!("select count(*) as n from [{table}]"))
            .append_pair("_shape", "array");
        #[derive(Deserialize)]
        struct N {
            n: u64,
        }
        let rows: Vec<N> = self
            .get_parsed(url, &table_key(subdomain, table), |body, shown| {
                serde_json::from_slice(body).map_err(|e| SourceError::InvalidPage {
                    url: shown.into(),
                    message: format!("not a count ({e})"),
                })
            })
            .await
            .ok()?;
        rows.first().map(|r| r.n)
    }

    /// Counts rows by paging through their ids only: slow but always available.
    async fn id_scan_count(&self, subdomain: &str, table: &str) -> Result<u64, SourceError> {
        Ok(self.ids_by_keyset(subdomain, table).await?.rows)
    }

    /// Every id of a table, sorted (for deep reconciliation): by the cheapest exact
    /// route (`source_ids`), never reading text.
    pub async fn all_ids(&self, subdomain: &str, table: &str) -> Result<Vec<String>, SourceError> {
        Ok(self.id_set(subdomain, table).await?.ids)
    }

    /// The rows with these ids (at most 100 per request: the ids travel in the URL).
    pub async fn rows_by_ids(
        &self,
        subdomain: &str,
        table: &str,
        columns: &[String],
        ids: &[String],
    ) -> Result<SourcePage, SourceError> {
        assert!(
            ids.len() <= 100,
            "rows_by_ids takes at most 100 ids per call"
        );
        let mut url = self.table_url(subdomain, table)?;
        {
            let mut q = url.query_pairs_mut();
            q.append_pair("_size", "1000")
                .append_pair("_sort", "id")
                .append_pair("_shape", "objects");
            for c in columns.iter().filter(|c| c.as_str() != "id") {
                q.append_pair("_col", c);
            }
            q.append_pair("id__in", &ids.join(","));
        }
        self.get_parsed(url, &table_key(subdomain, table), |body, shown| {
            parse_page(body, shown, None)
        })
        .await
    }

    /// Every row of a Datasette `sites` table (its table JSON URL), following `next`.
    pub async fn sites(
        &self,
        table_url: &str,
    ) -> Result<Vec<crate::store::municipalities::Site>, SourceError> {
        let base = Url::parse(table_url).map_err(|e| SourceError::BadTemplate {
            template: table_url.into(),
            subdomain: "-".into(),
            table: "sites".into(),
            message: e.to_string(),
        })?;
        let mut sites = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let mut url = base.clone();
            {
                let mut q = url.query_pairs_mut();
                q.append_pair("_size", "1000")
                    .append_pair("_sort", "subdomain")
                    .append_pair("_shape", "objects");
                if let Some(a) = &after {
                    q.append_pair("subdomain__gt", a);
                }
            }
            let shown = url.to_string();
            let env = self.get_parsed(url, "sites", parse_envelope).await?;
            let rows = env.rows.ok_or_else(|| SourceError::InvalidPage {
                url: shown.clone(),
                message: "no `rows` in the answer".into(),
            })?;
            for raw in &rows {
                let site: crate::store::municipalities::RawSite =
                    serde_json::from_str(raw.get()).map_err(|e| SourceError::InvalidPage {
                        url: shown.clone(),
                        message: format!("a sites row is not usable: {e}"),
                    })?;
                let site = site.into_site().map_err(|m| SourceError::InvalidPage {
                    url: shown.clone(),
                    message: m,
                })?;
                after = Some(site.subdomain.clone());
                sites.push(site);
            }
            let more = !matches!(env.next, None | Some(serde_json::Value::Null));
            if !more || rows.is_empty() {
                return Ok(sites);
            }
        }
    }

    /// GET and parse, retrying both: a body that does not parse (truncated, not JSON,
    /// not the expected shape) is a transient failure like a dropped connection.
    pub(crate) async fn get_parsed<T>(
        &self,
        url: Url,
        key: &str,
        parse: impl Fn(&[u8], &str) -> Result<T, SourceError>,
    ) -> Result<T, SourceError> {
        let mut attempt = 0u32;
        loop {
            let result = match self.get_once(url.clone(), key).await {
                Ok((body, shown)) => parse(&body, &shown),
                Err(e) => Err(e),
            };
            match result {
                Ok(value) => return Ok(value),
                Err(e) => {
                    self.usage.error(e.kind());
                    attempt += 1;
                    self.backoff_or_fail(e, attempt).await?;
                }
            }
        }
    }

    /// Sleeps before the next attempt, or returns the error when it is permanent or the
    /// retries are used up.
    pub(crate) async fn backoff_or_fail(
        &self,
        error: SourceError,
        attempt: u32,
    ) -> Result<(), SourceError> {
        if !error.is_transient() {
            return Err(error);
        }
        if attempt > self.config.max_retries {
            return Err(SourceError::RetriesExhausted {
                attempts: attempt,
                source: Box::new(error),
            });
        }
        let delay = backoff_delay(
            attempt,
            self.config.base_backoff,
            self.config.max_backoff,
            error.retry_after(),
        );
        warn!(attempt, delay_ms = delay.as_millis() as u64, error = %error, "Source request failed; retrying.");
        tokio::time::sleep(delay).await;
        Ok(())
    }

    /// One GET; the body is read whole (a page is at most ~1000 rows).
    async fn get_once(&self, url: Url, key: &str) -> Result<(Bytes, String), SourceError> {
        let shown = url.to_string();
        debug!(url = %shown, "GET");
        let response =
            self.http
                .get(url.clone())
                .send()
                .await
                .map_err(|e| SourceError::Transport {
                    url: shown.clone(),
                    message: error_chain(&e),
                })?;
        let status = response.status();
        if status.is_redirection() {
            let location = response
                .headers()
                .get(reqwest::header::LOCATION)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("<no location>")
                .to_string();
            return Err(SourceError::Redirected {
                url: shown,
                location,
            });
        }
        let retry_after = parse_retry_after(response.headers());
        let body = response.bytes().await.map_err(|e| SourceError::Transport {
            url: shown.clone(),
            message: format!("reading the body: {}", error_chain(&e)),
        })?;
        self.usage.record(key, body.len() as u64);
        if status != StatusCode::OK {
            return Err(SourceError::Status {
                url: shown,
                status: status.as_u16(),
                message: error_message(&body),
                retry_after,
            });
        }
        Ok((body, shown))
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(inner) = cur {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        cur = inner.source();
    }
    s
}

/// The error text of a Datasette (or rate-limit) error body, shortened.
fn error_message(body: &[u8]) -> String {
    #[derive(Deserialize)]
    struct E {
        error: Option<String>,
        title: Option<String>,
    }
    if let Ok(e) = serde_json::from_slice::<E>(body) {
        if let Some(msg) = e.error.or(e.title) {
            return msg;
        }
    }
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.len() > 200 {
        {
            let mut end = 200;
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            format!("{}...", &text[..end])
        }
    } else if text.is_empty() {
        "(empty body)".into()
    } else {
        text.to_string()
    }
}

fn parse_retry_after(headers: &HeaderMap) -> Option<Duration> {
    let v = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = v.parse::<f64>() {
        if secs.is_finite() && secs >= 0.0 {
            return Some(Duration::from_secs_f64(secs.min(3600.0)));
        }
    }
    let when = chrono::DateTime::parse_from_rfc2822(v).ok()?;
    let delta = when.with_timezone(&chrono::Utc) - chrono::Utc::now();
    Some(
        delta
            .to_std()
            .unwrap_or(Duration::ZERO)
            .min(Duration::from_secs(3600)),
    )
}

/// Exponential backoff with full jitter, capped; a server's Retry-After is a floor.
pub fn backoff_delay(
    attempt: u32,
    base: Duration,
    cap: Duration,
    retry_after: Option<Duration>,
) -> Duration {
    let exp = base.saturating_mul(1u32 << attempt.saturating_sub(1).min(20));
    let ceiling = exp.min(cap);
    let jittered = ceiling.mul_f64(rand::rng().random_range(0.5..=1.0));
    match retry_after {
        Some(ra) => ra.max(jittered),
        None => jittered,
    }
}

fn parse_envelope(body: &[u8], url: &str) -> Result<Envelope, SourceError> {
    let env: Envelope = serde_json::from_slice(body).map_err(|e| SourceError::InvalidPage {
        url: url.into(),
        message: format!("invalid JSON ({e})"),
    })?;
    if env.ok == Some(false) {
        return Err(SourceError::InvalidPage {
            url: url.into(),
            message: format!(
                "`ok` is false: {}",
                env.error.as_deref().unwrap_or("no error given")
            ),
        });
    }
    Ok(env)
}

/// The `id` of a row, in either row shape.
pub fn row_id(raw: &RawValue, columns: Option<&[String]>) -> Option<String> {
    let text = raw.get();
    let value = if text.starts_with('[') {
        let pos = columns?.iter().position(|c| c == "id")?;
        let arr: Vec<serde_json::Value> = serde_json::from_str(text).ok()?;
        arr.into_iter().nth(pos)?
    } else {
        serde_json::from_str::<IdOnly>(text).ok()?.id
    };
    match value {
        serde_json::Value::String(s) => Some(s),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Validates one answer of the table API and extracts the cursor.
fn parse_page(body: &[u8], url: &str, after: Option<&str>) -> Result<SourcePage, SourceError> {
    let env = parse_envelope(body, url)?;
    let invalid = |message: String| SourceError::InvalidPage {
        url: url.into(),
        message,
    };
    let rows = env
        .rows
        .ok_or_else(|| invalid("no `rows` in the answer".into()))?;
    let has_more = match &env.next {
        None | Some(serde_json::Value::Null) => false,
        Some(_) => true,
    };
    let columns = env.columns;
    let (first_id, last_id) = match (rows.first(), rows.last()) {
        (Some(first), Some(last)) => (
            row_id(first, columns.as_deref()),
            row_id(last, columns.as_deref()),
        ),
        _ => (None, None),
    };
    if has_more && rows.is_empty() {
        return Err(invalid("`next` is set but there are no rows".into()));
    }
    if !rows.is_empty() {
        let (Some(first), Some(last)) = (&first_id, &last_id) else {
            return Err(invalid(
                "the first or last row has no usable `id`, so the cursor cannot advance".into(),
            ));
        };
        if let Some(after) = after {
            if first.as_str() <= after {
                return Err(invalid(format!(
                    "the cursor did not advance (asked for ids after {after:?}, got {first:?})"
                )));
            }
        }
        if last < first {
            return Err(invalid(format!(
                "rows are not in id order ({first:?} .. {last:?})"
            )));
        }
    }
    Ok(SourcePage {
        rows,
        columns,
        last_id,
        has_more,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_valid_page_gives_its_cursor() {
        let body = br#"{"ok": true, "next": "b,b", "rows": [{"id": "a1"}, {"id": "b2"}], "truncated": false}"#;
        let page = parse_page(body, "u", Some("a0")).unwrap();
        assert_eq!(page.rows.len(), 2);
        assert_eq!(page.last_id.as_deref(), Some("b2"));
        assert!(page.has_more);
    }

    #[test]
    fn the_last_page_has_no_next() {
        let body = br#"{"ok": true, "next": null, "rows": [{"id": "a1"}]}"#;
        assert!(!parse_page(body, "u", None).unwrap().has_more);
    }

    #[test]
    fn legacy_array_rows_use_columns() {
        let body = br#"{"columns": ["id", "page"], "rows": [["a1", 1], ["a2", 2]], "next": null}"#;
        let page = parse_page(body, "u", None).unwrap();
        assert_eq!(page.last_id.as_deref(), Some("a2"));
    }

    #[test]
    fn broken_pages_are_never_the_end_of_data() {
        for (body, what) in [
            (
                &br#"{"ok": true, "rows": [{"id": "a1"}"#[..],
                "invalid JSON",
            ),
            (
                br#"{"ok": false, "error": "boom", "status": 500}"#,
                "`ok` is false",
            ),
            (br#"{"ok": true, "next": null}"#, "no `rows`"),
            (br#"{"ok": true, "next": "x", "rows": []}"#, "no rows"),
            (
                br#"{"ok": true, "next": "x", "rows": [{"id": "a0"}]}"#,
                "did not advance",
            ),
        ] {
            let err = parse_page(body, "u", Some("a0")).unwrap_err();
            assert!(err.is_transient(), "{what}: {err}");
            assert!(err.to_string().contains(what), "{what}: {err}");
        }
    }

    #[test]
    fn statuses_are_classified() {
        let status = |s| SourceError::Status {
            url: "u".into(),
            status: s,
            message: "m".into(),
            retry_after: None,
        };
        for s in [402, 429, 500, 502, 503, 504] {
            assert!(status(s).is_transient(), "{s}");
        }
        for s in [400, 401, 403, 404] {
            assert!(!status(s).is_transient(), "{s}");
        }
    }

    #[test]
    fn backoff_grows_caps_and_honours_retry_after() {
        let base = Duration::from_millis(100);
        let cap = Duration::from_secs(2);
        for attempt in 1..12 {
            let d = backoff_delay(attempt, base, cap, None);
            let ceiling = (base * 2u32.pow(attempt - 1)).min(cap);
            assert!(d <= ceiling && d >= ceiling / 2, "attempt {attempt}: {d:?}");
        }
        let d = backoff_delay(1, base, cap, Some(Duration::from_secs(7)));
        assert_eq!(d, Duration::from_secs(7));
    }

    #[test]
    fn urls_come_from_the_template() {
        let client = SourceClient::new(SourceConfig {
            template: "http://127.0.0.1:9/{subdomain}/meetings/{table}.json".into(),
            ..SourceConfig::default()
        })
        .unwrap();
        let url = client.table_url("oakland.ca", "minutes").unwrap();
        assert_eq!(
            url.as_str(),
            "http://127.0.0.1:9/oakland.ca/meetings/minutes.json"
        );
    }
}
