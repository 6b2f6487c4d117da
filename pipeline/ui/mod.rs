//! What civicload shows a person: progress bars, tables, the end-of-run report, error
//! chains and the log setup. Commands compute; this module decides how it looks, on a
//! terminal (bars, colour) and elsewhere (plain lines for CI logs, cron mail and files).

pub mod error;
pub mod log;
pub mod out;
pub mod progress;
pub mod report;
pub mod term;
