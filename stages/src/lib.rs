//! civicload's stages: the source client and the pieces of the per-job pipeline
//! (fetch -> transform -> spool -> load -> reconcile, and archive replay), plus the batch
//! type that moves between them and the SQL for the tables they share. Nothing here knows about the command line.

pub mod archive;
pub mod batch;
pub mod copy;
pub mod fetch;
pub mod job_run;
pub mod load;
pub mod reconcile;
pub mod refresh;
pub mod replay;
pub mod secret;
pub mod source;
pub mod source_ids;
pub mod spool;
pub mod store;
pub mod target;
pub mod transform;
pub mod tsvector;
pub mod usage;
pub mod vectors;
pub mod watchdog;

pub use batch::{DocumentType, JobKey, PageBatch, Reject};
pub use secret::Secret;
