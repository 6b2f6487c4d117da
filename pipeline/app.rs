//! Runs one command and maps its result to the exit status of the contract: 0 when every
//! requested job ended verified, 1 when any failed or was left unverified, 2 for usage or
//! configuration errors.

use tracing::{error, info};

use crate::cli::{Cli, Command, MunicipalitiesCommand, TargetArg};
use crate::db::{connect, connect_target};
pub use crate::exit::{UsageError, EXIT_INCOMPLETE, EXIT_OK, EXIT_USAGE};
use stages::target::Target;

pub async fn run(cli: Cli) -> u8 {
    match dispatch(cli).await {
        Ok(code) => code,
        Err(e) => {
            error!("{}", crate::ui::error::one_line(&e));
            crate::exit::status_of(&e)
        }
    }
}

async fn dispatch(cli: Cli) -> anyhow::Result<u8> {
    match &cli.command {
        Command::Migrate => {
            connect(&cli, 1).await?;
            info!("The database is migrated.");
            Ok(EXIT_OK)
        }
        Command::Municipalities(MunicipalitiesCommand::Sync { from }) => {
            crate::commands::municipalities::sync(&cli, from).await
        }
        Command::Backfill(args) => crate::commands::backfill::backfill(&cli, args.clone()).await,
        Command::Status(args) => crate::commands::status::status(&cli, args).await,
        Command::Verify(args) => crate::commands::verify::verify(&cli, args).await,
        Command::Refresh(args) => crate::refresh::command(&cli, args).await,
        Command::Serve(args) => crate::serve::command(&cli, args).await,
        Command::Replay(args) => crate::archive::replay(&cli, args).await,
        Command::Reload(args) => crate::archive::reload(&cli, args).await,
        Command::Digest => {
            let (pool, target) = connect_target(&cli, 1).await?;
            let d = match target {
                Target::Civicload => stages::store::digest(&pool).await?,
                Target::CivicObserver(_) => stages::store::observer::digest(&pool).await?,
            };
            crate::outln!("{} pages, digest {}", d.pages, d.digest);
            Ok(EXIT_OK)
        }
        // Search readiness (issue 6): pipeline/vectorize.rs, maintain.rs, health.rs,
        // search_bench.rs.
        Command::Vectorize(_)
        | Command::Maintain(_)
        | Command::Health(_)
        | Command::SearchBench(_)
            if cli.target == TargetArg::CivicObserver =>
        {
            let (pool, target) = connect_target(&cli, 2).await?;
            let schema = target
                .observer()
                .expect("connected to civic-observer's tables");
            crate::health::observer_command(&pool, schema.generation, &cli.command).await
        }
        Command::Vectorize(args) => {
            let pool = connect(&cli, 2).await?;
            let finished = crate::maintain::run_vectorize(&pool, args).await?;
            Ok(if finished { EXIT_OK } else { EXIT_INCOMPLETE })
        }
        Command::Maintain(args) => {
            let pool = connect(&cli, 2).await?;
            crate::maintain::run_maintain(&pool, args).await?;
            Ok(EXIT_OK)
        }
        Command::Health(args) => {
            let pool = connect(&cli, 2).await?;
            crate::health::run(&pool, args).await?;
            Ok(EXIT_OK)
        }
        Command::SearchBench(args) => {
            let pool = connect(&cli, 2).await?;
            let report = crate::search_bench::run(&pool, args).await?;
            if args.json {
                crate::outln!("{}", serde_json::to_string(&report)?);
            } else {
                crate::outln!("{}", crate::search_bench::render(&report, args.show));
            }
            Ok(EXIT_OK)
        }
    }
}
