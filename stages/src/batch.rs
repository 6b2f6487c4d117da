//! The unit that moves through the pipeline: a batch of pages as an Arrow `RecordBatch`
//! plus its provenance (job, sequence number, source cursor after it, rejects).

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use arrow_array::RecordBatch;
use arrow_schema::{DataType, Field, Schema, SchemaRef};

/// Which civic.band table a job reads. Decoded from `document_type` columns by sqlx; bind
/// [`DocumentType::as_str`], not the enum (see `store::jobs::JobStatus`).
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, sqlx::Type, serde::Serialize,
)]
#[sqlx(type_name = "text", rename_all = "lowercase")]
#[serde(rename_all = "lowercase")]
pub enum DocumentType {
    Agenda,
    Minutes,
}

impl DocumentType {
    pub const ALL: [DocumentType; 2] = [DocumentType::Agenda, DocumentType::Minutes];

    /// The value stored in `document_type` columns.
    pub fn as_str(self) -> &'static str {
        match self {
            DocumentType::Agenda => "agenda",
            DocumentType::Minutes => "minutes",
        }
    }

    /// The source table in civic.band's `meetings` database.
    pub fn table(self) -> &'static str {
        match self {
            DocumentType::Agenda => "agendas",
            DocumentType::Minutes => "minutes",
        }
    }

    /// The `kind` civic.band hashes into a page id.
    pub fn kind(self) -> &'static str {
        self.as_str()
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "agenda" | "agendas" => Some(DocumentType::Agenda),
            "minutes" => Some(DocumentType::Minutes),
            _ => None,
        }
    }
}

impl std::fmt::Display for DocumentType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One job: a (municipality, document type) pair and its row in `backfill_jobs`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct JobKey {
    pub job_id: i64,
    pub municipality_id: i64,
    pub subdomain: String,
    pub document_type: DocumentType,
}

impl std::fmt::Display for JobKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.subdomain, self.document_type.table())
    }
}

/// Why a source row was not stored as a page.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RejectReason {
    MissingId,
    BadDate,
    BadPage,
    MissingMeeting,
    BadJson,
    DuplicatePage,
    MalformedRow,
}

impl RejectReason {
    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::MissingId => "missing_id",
            RejectReason::BadDate => "bad_date",
            RejectReason::BadPage => "bad_page",
            RejectReason::MissingMeeting => "missing_meeting",
            RejectReason::BadJson => "bad_json",
            RejectReason::DuplicatePage => "duplicate_page",
            RejectReason::MalformedRow => "malformed_row",
        }
    }

    /// The reason for a stored `as_str()` value (spool files keep reasons as text).
    pub fn parse(s: &str) -> Option<Self> {
        [
            RejectReason::MissingId,
            RejectReason::BadDate,
            RejectReason::BadPage,
            RejectReason::MissingMeeting,
            RejectReason::BadJson,
            RejectReason::DuplicatePage,
            RejectReason::MalformedRow,
        ]
        .into_iter()
        .find(|r| r.as_str() == s)
    }
}

/// A source row that cannot be stored faithfully, kept with its raw JSON.
#[derive(Clone, Debug, PartialEq)]
pub struct Reject {
    pub source_id: Option<String>,
    pub raw: String,
    pub reason: RejectReason,
    /// A sentence for people: what exactly was wrong.
    pub detail: String,
}

/// A batch of pages on its way to the database.
#[derive(Clone, Debug)]
pub struct PageBatch {
    pub job: Arc<JobKey>,
    /// 1-based, consecutive within a pass of the job; the checkpoint records the last one.
    pub seq: i64,
    /// The source cursor after this batch (the last source id it covers).
    pub cursor_after: Option<String>,
    /// True when the source said there is nothing after this batch.
    pub last: bool,
    /// Source rows this batch covers (pages + rejects).
    pub fetched: usize,
    pub rows: RecordBatch,
    pub rejects: Vec<Reject>,
    /// Time spent fetching it, for the per-stage breakdown.
    pub fetch_time: Duration,
    /// Search vectors civicload computed for `rows` (None: PostgreSQL computes them).
    pub vectors: Option<Arc<crate::vectors::VectorFields>>,
}

/// Column order of every page batch, shared by transform, the COPY encoder and the spool.
pub mod col {
    pub const SOURCE_ID: usize = 0;
    pub const MEETING: usize = 1;
    pub const DATE: usize = 2;
    pub const PAGE: usize = 3;
    pub const TEXT: usize = 4;
    pub const PAGE_IMAGE: usize = 5;
    pub const ENTITIES: usize = 6;
    pub const VOTES: usize = 7;
}

/// The Arrow schema of a page batch. `entities` and `votes` hold JSON text.
pub fn page_schema() -> SchemaRef {
    static SCHEMA: OnceLock<SchemaRef> = OnceLock::new();
    SCHEMA
        .get_or_init(|| {
            Arc::new(Schema::new(vec![
                Field::new("source_id", DataType::Utf8, false),
                Field::new("meeting", DataType::Utf8, false),
                Field::new("meeting_date", DataType::Date32, false),
                Field::new("page_number", DataType::Int32, false),
                Field::new("text", DataType::Utf8, false),
                Field::new("page_image", DataType::Utf8, true),
                Field::new("entities", DataType::Utf8, true),
                Field::new("votes", DataType::Utf8, true),
            ]))
        })
        .clone()
}
