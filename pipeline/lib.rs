//! civicload's orchestration: the command line, job planning and leases, wiring the stages,
//! and (in `ui`) progress, reports and logs. SQL and HTTP details live in the `stages` crate.

pub mod app;
pub mod archive;
pub mod backfill;
pub mod cli;
pub mod db;
pub mod exit;
pub mod health;
pub mod maintain;
pub mod plan;
pub mod refresh;
pub mod search_bench;
pub mod serve;
pub mod shutdown;
pub mod ui;
pub mod vectorize;
pub mod verify;
