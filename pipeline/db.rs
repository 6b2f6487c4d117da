//! A command's database: the URL from the command line (one that does not parse is a
//! usage error, exit 2), the database created on first use and migrated.

use sqlx::PgPool;
use stages::store;

use crate::cli::Cli;
use crate::exit::UsageError;

/// Opens a pool of at most `max_connections` on `--database-url` (or the local server).
pub(crate) async fn connect(cli: &Cli, max_connections: u32) -> anyhow::Result<PgPool> {
    let options = store::connect_options(cli.database_url.as_deref())
        .map_err(|e| UsageError(e.to_string()))?;
    Ok(store::connect(options, max_connections).await?)
}
