//! The spool archive on object storage: where its files and manifests live, how an archive
//! URL (`file://`, `s3://`, `memory://`) becomes a store, and the manifest format that
//! `replay` and `reload` read.
//!
//! Layout under the archive root:
//! ```text
//! {subdomain}/{document_type}/{pass:06}-{seq:08}.parquet   one file per committed batch
//! {subdomain}/{document_type}/manifest.json                the job manifest
//! _runs/{run id}.json                                      one manifest per backfill run
//! ```
//! A manifest names files by their path relative to the archive root and says where the
//! root is relative to itself (`root`), so a copied archive stays readable.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{ObjectStore, PutPayload};
use serde::{Deserialize, Serialize};

use crate::batch::DocumentType;

/// Version of the Parquet layout written by the spool (columns + key-value metadata).
/// Bump it when a change would make an older reader misread a file.
pub const SCHEMA_VERSION: u32 = 1;
/// Version of the manifest JSON.
pub const MANIFEST_VERSION: u32 = 1;
/// The version of civicload that wrote a file or manifest.
pub const CIVICLOAD_VERSION: &str = env!("CARGO_PKG_VERSION");
/// Folder of run manifests under the root (not a subdomain: subdomains contain a dot).
pub const RUNS_DIR: &str = "_runs";
/// Name of a job manifest inside its job folder.
pub const JOB_MANIFEST: &str = "manifest.json";

/// An archive failure, naming the object and what to do.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("the spool URL {url:?} is not usable: {reason}. Use file:///absolute/folder, s3://bucket/prefix (endpoint, region and keys from AWS_* variables) or memory://")]
    BadUrl { url: String, reason: String },
    #[error("{url} does not exist (check the URL; for s3://, the bucket, the prefix and AWS_ENDPOINT_URL)")]
    Missing { url: String },
    #[error("{op} {url} failed: {source}. Check that the object store is reachable and the credentials (AWS_* variables) allow it")]
    Store {
        op: &'static str,
        url: String,
        #[source]
        source: object_store::Error,
    },
    #[error("{url} is not a civicload manifest: {reason}")]
    BadManifest { url: String, reason: String },
}

impl ArchiveError {
    fn store(op: &'static str, url: String, source: object_store::Error) -> Self {
        match source {
            object_store::Error::NotFound { .. } => ArchiveError::Missing { url },
            source => ArchiveError::Store { op, url, source },
        }
    }
}

/// A spool archive: an object store and the root prefix inside it.
#[derive(Clone, Debug)]
pub struct Archive {
    store: Arc<dyn ObjectStore>,
    root: Path,
    /// The archive URL as given, without a trailing slash (for messages).
    url: String,
    /// The folder of a file:// archive: object_store's local store does not fsync, so the
    /// spool does it itself before a batch may be checkpointed.
    local_dir: Option<std::path::PathBuf>,
}

impl Archive {
    /// Opens an archive from its URL. `s3://` reads the endpoint, region and keys from the
    /// environment like the AWS tools (AWS_ENDPOINT_URL, AWS_REGION, AWS_ACCESS_KEY_ID,
    /// AWS_SECRET_ACCESS_KEY, ...); plain http is allowed for a loopback endpoint or with
    /// AWS_ALLOW_HTTP=true. `memory://` lives as long as the process (tests, dry runs).
    pub fn open(url: &str) -> Result<Self, ArchiveError> {
        Self::open_with(url, true)
    }

    /// Opens an archive to read it: a file:// folder that does not exist is `Missing`
    /// (rather than created empty).
    pub fn open_existing(url: &str) -> Result<Self, ArchiveError> {
        Self::open_with(url, false)
    }

    fn open_with(url: &str, create: bool) -> Result<Self, ArchiveError> {
        let bad = |reason: String| ArchiveError::BadUrl {
            url: url.to_string(),
            reason,
        };
        let parsed = url::Url::parse(url).map_err(|e| bad(e.to_string()))?;
        let trimmed = url.trim_end_matches('/').to_string();
        match parsed.scheme() {
            "file" => {
                let dir = parsed
                    .to_file_path()
                    .map_err(|_| bad("a file URL needs an absolute path".into()))?;
                if create {
                    std::fs::create_dir_all(&dir)
                        .map_err(|e| bad(format!("cannot create {}: {e}", dir.display())))?;
                } else if !dir.is_dir() {
                    return Err(ArchiveError::Missing {
                        url: url.to_string(),
                    });
                }
                let fs = LocalFileSystem::new_with_prefix(&dir).map_err(|e| bad(e.to_string()))?;
                Ok(Archive {
                    store: Arc::new(fs),
                    root: Path::default(),
                    url: trimmed,
                    local_dir: Some(dir),
                })
            }
            "s3" | "s3a" => {
                let bucket = parsed
                    .host_str()
                    .filter(|b| !b.is_empty())
                    .ok_or_else(|| bad("an s3 URL needs a bucket: s3://bucket/prefix".into()))?;
                let mut builder = AmazonS3Builder::from_env().with_bucket_name(bucket);
                if let Some(endpoint) = aws_endpoint() {
                    builder = builder.with_endpoint(&endpoint);
                    if is_loopback_http(&endpoint) {
                        builder = builder.with_allow_http(true);
                    }
                }
                if std::env::var("AWS_REGION").is_err()
                    && std::env::var("AWS_DEFAULT_REGION").is_err()
                {
                    builder = builder.with_region("us-east-1");
                }
                let s3 = builder.build().map_err(|e| bad(e.to_string()))?;
                Ok(Archive {
                    store: Arc::new(s3),
                    root: Path::from(parsed.path().trim_matches('/')),
                    url: trimmed,
                    local_dir: None,
                })
            }
            "memory" => Ok(Archive {
                store: Arc::new(InMemory::new()),
                root: Path::from(parsed.path().trim_matches('/')),
                url: trimmed,
                local_dir: None,
            }),
            other => Err(bad(format!("the scheme {other}:// is not supported"))),
        }
    }

    /// The same store with another root (a manifest's archive root).
    fn rooted_at(&self, root: Path, url: String) -> Archive {
        Archive {
            store: self.store.clone(),
            root,
            url,
            local_dir: None,
        }
    }

    /// The archive URL (for messages and manifests).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The full URL of a path relative to the root.
    pub fn url_of(&self, rel: &str) -> String {
        format!("{}/{rel}", self.url)
    }

    fn full(&self, rel: &str) -> Path {
        let mut p = self.root.clone();
        for part in rel.split('/').filter(|s| !s.is_empty()) {
            p = p.child(part);
        }
        p
    }

    /// Relative path of a batch file.
    pub fn file_rel(subdomain: &str, doc: DocumentType, pass: i32, seq: i64) -> String {
        format!("{subdomain}/{}/{pass:06}-{seq:08}.parquet", doc.as_str())
    }

    /// Relative path of a job manifest.
    pub fn job_manifest_rel(subdomain: &str, doc: DocumentType) -> String {
        format!("{subdomain}/{}/{JOB_MANIFEST}", doc.as_str())
    }

    /// Writes `bytes` so that no reader ever sees part of it under `rel`: first under a
    /// temporary name, then committed to the final name (a rename on a local folder, a
    /// server-side copy + delete on S3). Returns when the final object is durable.
    pub async fn put_committed(&self, rel: &str, bytes: Bytes) -> Result<(), ArchiveError> {
        let tmp_rel = format!("{rel}.tmp-{}", uuid::Uuid::new_v4().simple());
        let tmp = self.full(&tmp_rel);
        let dest = self.full(rel);
        self.store
            .put(&tmp, PutPayload::from_bytes(bytes))
            .await
            .map_err(|e| ArchiveError::store("writing", self.url_of(&tmp_rel), e))?;
        if let Err(e) = self.store.rename(&tmp, &dest).await {
            let _ = self.store.delete(&tmp).await;
            return Err(ArchiveError::store("committing", self.url_of(rel), e));
        }
        if let Some(dir) = &self.local_dir {
            let file = rel.split('/').fold(dir.clone(), |p, part| p.join(part));
            let synced = tokio::task::spawn_blocking(move || {
                std::fs::File::open(&file)?.sync_all()?;
                // The rename itself is durable once its folder is synced.
                match file.parent() {
                    Some(folder) => std::fs::File::open(folder)?.sync_all(),
                    None => Ok(()),
                }
            })
            .await
            .expect("fsync does not panic");
            if let Err(e) = synced {
                return Err(ArchiveError::Store {
                    op: "syncing",
                    url: self.url_of(rel),
                    source: object_store::Error::Generic {
                        store: "LocalFileSystem",
                        source: Box::new(e),
                    },
                });
            }
        }
        Ok(())
    }

    /// Writes a small object in one request (a single PUT is atomic on every store).
    pub async fn put(&self, rel: &str, bytes: Bytes) -> Result<(), ArchiveError> {
        self.store
            .put(&self.full(rel), PutPayload::from_bytes(bytes))
            .await
            .map_err(|e| ArchiveError::store("writing", self.url_of(rel), e))?;
        Ok(())
    }

    /// Reads a whole object.
    pub async fn get(&self, rel: &str) -> Result<Bytes, ArchiveError> {
        let url = self.url_of(rel);
        let got = self
            .store
            .get(&self.full(rel))
            .await
            .map_err(|e| ArchiveError::store("reading", url.clone(), e))?;
        got.bytes()
            .await
            .map_err(|e| ArchiveError::store("reading", url, e))
    }

    /// Deletes an object (tests, and cleaning up a failed commit).
    pub async fn delete(&self, rel: &str) -> Result<(), ArchiveError> {
        self.store
            .delete(&self.full(rel))
            .await
            .map_err(|e| ArchiveError::store("deleting", self.url_of(rel), e))
    }

    /// Reads a job's manifest; None when the job has none yet.
    pub async fn read_job_manifest(
        &self,
        subdomain: &str,
        doc: DocumentType,
    ) -> Result<Option<Manifest>, ArchiveError> {
        let rel = Self::job_manifest_rel(subdomain, doc);
        match self.get(&rel).await {
            Ok(bytes) => Manifest::parse(&bytes, &self.url_of(&rel)).map(Some),
            Err(ArchiveError::Missing { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Writes (replaces) a job's manifest.
    pub async fn write_job_manifest(&self, manifest: &Manifest) -> Result<(), ArchiveError> {
        let job = manifest
            .jobs
            .first()
            .ok_or_else(|| ArchiveError::BadManifest {
                url: self.url.clone(),
                reason: "a job manifest needs exactly one job".into(),
            })?;
        let rel = Self::job_manifest_rel(&job.subdomain, job.doc_type()?);
        self.put(&rel, manifest.to_bytes()).await
    }

    /// The job manifests of the archive: those of `subdomains` (both document types), or
    /// every job when None. Jobs without a manifest are skipped.
    pub async fn job_manifests(
        &self,
        subdomains: Option<&[String]>,
    ) -> Result<Vec<JobFiles>, ArchiveError> {
        let subs: Vec<String> = match subdomains {
            Some(s) => s.to_vec(),
            None => {
                // One level of listing: the subdomain folders (never every file).
                let listed = self
                    .store
                    .list_with_delimiter(Some(&self.root))
                    .await
                    .map_err(|e| ArchiveError::store("listing", self.url.clone(), e))?;
                let mut subs: Vec<String> = listed
                    .common_prefixes
                    .iter()
                    .filter_map(|p| p.filename().map(str::to_string))
                    .filter(|name| name != RUNS_DIR)
                    .collect();
                subs.sort();
                subs
            }
        };
        let mut jobs = Vec::new();
        for sub in &subs {
            for doc in DocumentType::ALL {
                if let Some(m) = self.read_job_manifest(sub, doc).await? {
                    jobs.extend(m.jobs);
                }
            }
        }
        Ok(jobs)
    }

    /// Writes a run manifest under `_runs/` and returns its URL.
    pub async fn write_run_manifest(
        &self,
        run_id: &str,
        manifest: &Manifest,
    ) -> Result<String, ArchiveError> {
        let rel = format!("{RUNS_DIR}/{run_id}.json");
        self.put(&rel, manifest.to_bytes()).await?;
        Ok(self.url_of(&rel))
    }

    /// Opens the manifest at `url` (a run or job manifest) and the archive it belongs to.
    pub async fn open_manifest(url: &str) -> Result<(Archive, Manifest), ArchiveError> {
        let (dir, name) = url.rsplit_once('/').ok_or_else(|| ArchiveError::BadUrl {
            url: url.to_string(),
            reason: "expected the URL of a manifest .json file".into(),
        })?;
        let folder = Archive::open_existing(dir)?;
        let bytes = folder.get(name).await?;
        let manifest = Manifest::parse(&bytes, url)?;
        // Walk up `root` ("..", "../..") from the manifest's folder to the archive root.
        let mut root_parts: Vec<String> = folder
            .root
            .parts()
            .map(|p| p.as_ref().to_string())
            .collect();
        let mut root_url = dir.to_string();
        for step in manifest
            .root
            .split('/')
            .filter(|s| !s.is_empty() && *s != ".")
        {
            if step != ".." {
                return Err(ArchiveError::BadManifest {
                    url: url.to_string(),
                    reason: format!("`root` must be made of `..` steps, not {:?}", manifest.root),
                });
            }
            root_url = match root_url.rsplit_once('/') {
                Some((up, _)) if !up.ends_with('/') => up.to_string(),
                _ => root_url,
            };
            // A file:// archive is rooted at its folder (the store's own prefix).
            if root_parts.pop().is_none() && !folder.url.starts_with("file:") {
                return Err(ArchiveError::BadManifest {
                    url: url.to_string(),
                    reason: "`root` points above the bucket".into(),
                });
            }
        }
        let archive = if folder.url.starts_with("file:") {
            Archive::open_existing(&root_url)?
        } else {
            folder.rooted_at(Path::from_iter(root_parts), root_url)
        };
        Ok((archive, manifest))
    }
}

fn aws_endpoint() -> Option<String> {
    ["AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_ENDPOINT"]
        .iter()
        .find_map(|k| std::env::var(k).ok().filter(|v| !v.is_empty()))
}

/// Plain http is only accepted without asking for a server on this machine (a test or a
/// local MinIO); anything else must say AWS_ALLOW_HTTP=true.
fn is_loopback_http(endpoint: &str) -> bool {
    let Ok(u) = url::Url::parse(endpoint) else {
        return false;
    };
    u.scheme() == "http"
        && match u.host() {
            Some(url::Host::Domain(d)) => d == "localhost",
            Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
            Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
            None => false,
        }
}

/// One spooled batch file, as a manifest lists it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Path relative to the archive root.
    pub path: String,
    /// The job's pass (a fresh pass re-reads the whole table) and the batch's sequence
    /// number within it (1-based, consecutive).
    pub pass: i32,
    pub seq: i64,
    /// Page rows in the file.
    pub pages: u64,
    /// Rejected source rows carried in the file's metadata.
    pub rejects: u64,
    /// Source rows the batch covers: pages + rejects.
    pub rows: u64,
    /// File size and SHA-256 of its bytes (hex).
    pub bytes: u64,
    pub sha256: String,
    /// Smallest and largest source id in the file (pages and rejects), the key range.
    pub first_source_id: Option<String>,
    pub last_source_id: Option<String>,
    /// The source cursor after the batch.
    pub cursor_after: Option<String>,
    /// The source said this batch ended the table.
    pub last: bool,
    pub schema_version: u32,
    pub civicload_version: String,
    pub written_at: DateTime<Utc>,
}

/// A job's files in a manifest, in load order (pass, then seq).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobFiles {
    pub subdomain: String,
    pub document_type: String,
    pub files: Vec<FileEntry>,
}

impl JobFiles {
    pub fn doc_type(&self) -> Result<DocumentType, ArchiveError> {
        DocumentType::parse(&self.document_type).ok_or_else(|| ArchiveError::BadManifest {
            url: format!("{}/{}", self.subdomain, self.document_type),
            reason: format!("unknown document_type {:?}", self.document_type),
        })
    }

    /// Records a committed file. A file of the same pass with the same or a later seq is
    /// left over from an attempt that crashed before its checkpoint: the resumed pass
    /// refetched from the checkpoint and this file replaces it.
    pub fn record(&mut self, entry: FileEntry) {
        self.files
            .retain(|f| f.pass != entry.pass || f.seq < entry.seq);
        self.files.push(entry);
        self.files.sort_by_key(|f| (f.pass, f.seq));
    }

    /// The source rows the archive says the job has: those of the newest pass that read
    /// the table to its end (or of the newest pass when none did yet).
    pub fn expected_rows(&self) -> u64 {
        let newest_complete = self.files.iter().filter(|f| f.last).map(|f| f.pass).max();
        let pass = newest_complete.or_else(|| self.files.iter().map(|f| f.pass).max());
        self.files
            .iter()
            .filter(|f| Some(f.pass) == pass)
            .map(|f| f.rows)
            .sum()
    }
}

/// A run's or a job's manifest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// `job` or `run`.
    pub kind: String,
    pub manifest_version: u32,
    pub schema_version: u32,
    pub civicload_version: String,
    /// The archive root relative to the manifest's folder (`..` steps).
    pub root: String,
    pub updated_at: DateTime<Utc>,
    /// Run manifests: who wrote the run and when.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub run: BTreeMap<String, String>,
    pub jobs: Vec<JobFiles>,
}

impl Manifest {
    /// An empty job manifest.
    pub fn for_job(subdomain: &str, doc: DocumentType) -> Self {
        Manifest {
            kind: "job".into(),
            manifest_version: MANIFEST_VERSION,
            schema_version: SCHEMA_VERSION,
            civicload_version: CIVICLOAD_VERSION.into(),
            root: "../..".into(),
            updated_at: Utc::now(),
            run: BTreeMap::new(),
            jobs: vec![JobFiles {
                subdomain: subdomain.to_string(),
                document_type: doc.as_str().into(),
                files: Vec::new(),
            }],
        }
    }

    /// A run manifest pinning the given jobs' files.
    pub fn for_run(run: BTreeMap<String, String>, mut jobs: Vec<JobFiles>) -> Self {
        jobs.sort_by(|a, b| {
            (&a.subdomain, &a.document_type).cmp(&(&b.subdomain, &b.document_type))
        });
        Manifest {
            kind: "run".into(),
            manifest_version: MANIFEST_VERSION,
            schema_version: SCHEMA_VERSION,
            civicload_version: CIVICLOAD_VERSION.into(),
            root: "..".into(),
            updated_at: Utc::now(),
            run,
            jobs,
        }
    }

    pub fn parse(bytes: &[u8], url: &str) -> Result<Self, ArchiveError> {
        let m: Manifest = serde_json::from_slice(bytes).map_err(|e| ArchiveError::BadManifest {
            url: url.to_string(),
            reason: e.to_string(),
        })?;
        if m.manifest_version > MANIFEST_VERSION {
            return Err(ArchiveError::BadManifest {
                url: url.to_string(),
                reason: format!(
                    "manifest version {} is newer than this civicload understands ({MANIFEST_VERSION}); upgrade civicload",
                    m.manifest_version
                ),
            });
        }
        for job in &m.jobs {
            job.doc_type()?;
        }
        Ok(m)
    }

    pub fn to_bytes(&self) -> Bytes {
        Bytes::from(serde_json::to_vec_pretty(self).expect("a manifest always serializes"))
    }

    /// Files across all jobs.
    pub fn file_count(&self) -> usize {
        self.jobs.iter().map(|j| j.files.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(pass: i32, seq: i64, rows: u64, last: bool) -> FileEntry {
        FileEntry {
            path: Archive::file_rel("a.ca", DocumentType::Minutes, pass, seq),
            pass,
            seq,
            pages: rows,
            rejects: 0,
            rows,
            bytes: 1,
            sha256: String::new(),
            first_source_id: None,
            last_source_id: None,
            cursor_after: None,
            last,
            schema_version: SCHEMA_VERSION,
            civicload_version: CIVICLOAD_VERSION.into(),
            written_at: Utc::now(),
        }
    }

    #[test]
    fn a_rewritten_batch_replaces_the_leftovers_of_a_crashed_attempt() {
        let mut job = Manifest::for_job("a.ca", DocumentType::Minutes)
            .jobs
            .remove(0);
        for seq in 1..=4 {
            job.record(entry(0, seq, 10, false));
        }
        // Crash after seq 4 was spooled but only seq 2 committed: the resume redoes 3.
        job.record(entry(0, 3, 7, true));
        let seqs: Vec<i64> = job.files.iter().map(|f| f.seq).collect();
        assert_eq!(seqs, vec![1, 2, 3]);
        assert_eq!(job.expected_rows(), 27);
        // A later pass that is still running does not change what the table held.
        job.record(entry(1, 1, 10, false));
        assert_eq!(job.expected_rows(), 27);
        job.record(entry(1, 2, 5, true));
        assert_eq!(job.expected_rows(), 15);
    }

    #[test]
    fn file_names_sort_in_load_order() {
        assert_eq!(
            Archive::file_rel("oakland.ca", DocumentType::Agenda, 2, 17),
            "oakland.ca/agenda/000002-00000017.parquet"
        );
    }

    #[test]
    fn loopback_endpoints_may_use_plain_http() {
        assert!(is_loopback_http("http://127.0.0.1:9000"));
        assert!(is_loopback_http("http://localhost:9000"));
        assert!(!is_loopback_http("http://10.0.0.5:9000"));
        assert!(!is_loopback_http("https://127.0.0.1:9000"));
    }
}
