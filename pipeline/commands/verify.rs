//! `civicload verify`: re-verifies jobs against the source (`--deep` compares id sets,
//! `--repair` fixes them, see `crate::verify`) and prints a line per job.

use stages::source::SourceClient;
use stages::store::jobs::{self};
use stages::store::leases::owner_id;

use crate::cli::{check_template, Cli, VerifyArgs};
use crate::db::connect_target;
use crate::exit::{UsageError, EXIT_INCOMPLETE, EXIT_OK};

pub async fn verify(cli: &Cli, args: &VerifyArgs) -> anyhow::Result<u8> {
    check_template(&cli.source_url).map_err(UsageError)?;
    let client = SourceClient::new(cli.source_config(args.http_timeout, args.max_retries, 1000))?;
    let (pool, target) = connect_target(cli, 4).await?;
    let ids =
        crate::plan::plan_jobs(&pool, &args.subdomain, args.document_type.map(Into::into)).await?;
    let opts = crate::verify::VerifyOptions {
        deep: args.deep,
        repair: args.repair,
        force: args.force,
        max_delete_share: args.max_delete_percent / 100.0,
    };
    let owner = owner_id();
    let mut all_verified = true;
    for row in jobs::list(&pool, Some(&ids)).await? {
        match crate::verify::verify_job(&pool, &client, &target, &row, &owner, &opts).await {
            Ok(v) => {
                all_verified &= v.verified;
                for line in &v.lines {
                    crate::outln!("{}: {line}", v.job);
                }
            }
            Err(e) => {
                all_verified = false;
                crate::outln!(
                    "{}/{}: FAILED: {}",
                    row.subdomain,
                    row.document_type,
                    crate::ui::error::one_line(&e)
                );
            }
        }
    }
    if args.repair || args.deep {
        jobs::refresh_stats(&pool).await?;
    }
    Ok(if all_verified {
        EXIT_OK
    } else {
        EXIT_INCOMPLETE
    })
}
