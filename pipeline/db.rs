//! A command's database: the URL from the command line (one that does not parse is a
//! usage error, exit 2), the database created on first use and migrated, and whose tables
//! it holds (`--target`).

use sqlx::PgPool;
use stages::store;
use stages::target::Target;
use tracing::info;

use crate::cli::{Cli, TargetArg};
use crate::exit::UsageError;

/// Opens a pool of at most `max_connections` on `--database-url` (or the local server).
pub(crate) async fn connect(cli: &Cli, max_connections: u32) -> anyhow::Result<PgPool> {
    Ok(connect_target(cli, max_connections).await?.0)
}

/// Connects to the database of `--target` and says whose tables it holds: for
/// civic-observer, after checking them (a mismatch is a usage error naming every column).
pub(crate) async fn connect_target(
    cli: &Cli,
    max_connections: u32,
) -> anyhow::Result<(PgPool, Target)> {
    let options = store::connect_options(cli.database_url.as_deref())
        .map_err(|e| UsageError(e.to_string()))?;
    match cli.target {
        TargetArg::Civicload => Ok((
            store::connect(options, max_connections).await?,
            Target::Civicload,
        )),
        TargetArg::CivicObserver => {
            let (pool, schema) = store::connect_observer(options, max_connections).await?;
            info!(generation = %schema.generation, "Writing civic-observer's tables.");
            Ok((pool, Target::CivicObserver(schema)))
        }
    }
}
