//! civicload's orchestration: the command line, job planning and leases, wiring the stages,
//! progress and reports. SQL and HTTP details live in the `stages` crate.

pub mod app;
pub mod archive;
pub mod backfill;
pub mod cli;
pub mod health;
pub mod maintain;
pub mod progress;
pub mod report;
pub mod search_bench;
pub mod shutdown;
pub mod vectorize;
pub mod verify;
