//! One file per subcommand whose work is not an engine of its own: each parses what it
//! needs from the command line, calls the library, and renders the result.

pub mod backfill;
pub mod municipalities;
pub mod status;
pub mod verify;
