//! The exit statuses of the command-line contract (DESIGN.md) and the errors that carry
//! theirs: 0 when every requested job ended verified, 1 when any failed or was left
//! unverified (or the work itself failed: a database, the network), 2 for usage or
//! configuration errors. An error gets its status where it arises, not from its wording.

/// Every requested job ended verified.
pub const EXIT_OK: u8 = 0;
/// A job failed or was left unverified, or the work failed.
pub const EXIT_INCOMPLETE: u8 = 1;
/// The command line or the configuration is wrong: nothing was attempted.
pub const EXIT_USAGE: u8 = 2;

/// A failure the user fixes on the command line or in the configuration (exit 2).
#[derive(Debug)]
pub struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// The exit status of an error that ended a command: [`EXIT_USAGE`] when it or one of its
/// causes is a usage error (a [`UsageError`], a database URL that does not parse,
/// civic-observer tables that lack a column civicload writes), [`EXIT_INCOMPLETE`] for
/// everything else, a database failure included.
pub fn status_of(e: &anyhow::Error) -> u8 {
    use stages::store::{observer::SchemaError, StoreError};
    let usage = e.chain().any(|c| {
        c.is::<UsageError>()
            || c.downcast_ref::<StoreError>().is_some_and(|s| {
                matches!(
                    s,
                    StoreError::BadUrl(_) | StoreError::Schema(SchemaError::Mismatch(_))
                )
            })
    });
    if usage {
        EXIT_USAGE
    } else {
        EXIT_INCOMPLETE
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[test]
    fn a_usage_error_exits_2_even_under_context() {
        let e = anyhow::Error::new(UsageError("--source-url lacks {table}".into()))
            .context("planning the backfill");
        assert_eq!(status_of(&e), EXIT_USAGE);
        let bad_url = stages::store::connect_options(Some("not a url"))
            .map_err(anyhow::Error::new)
            .unwrap_err();
        assert_eq!(status_of(&bad_url), EXIT_USAGE);
    }

    #[test]
    fn a_database_failure_while_planning_exits_1() {
        let e: anyhow::Result<()> = Err(sqlx::Error::PoolTimedOut).context("planning the jobs");
        assert_eq!(status_of(&e.unwrap_err()), EXIT_INCOMPLETE);
    }
}
