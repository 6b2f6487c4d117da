//! `civicload municipalities sync`: the sites list (a URL of civic.band's sites table
//! or a file) into `municipalities`, and into civic-observer's `municipalities_muni`.

use anyhow::Context;
use stages::source::SourceClient;
use stages::store::municipalities;
use tracing::warn;

use crate::cli::Cli;
use crate::db::connect_target;
use crate::exit::{UsageError, EXIT_INCOMPLETE, EXIT_OK};

pub async fn sync(cli: &Cli, from: &str) -> anyhow::Result<u8> {
    let sites = if from.starts_with("http://") || from.starts_with("https://") {
        let client = SourceClient::new(stages::source::SourceConfig {
            service_secret: cli.service_secret.clone().map(stages::Secret::new),
            ..Default::default()
        })?;
        client
            .sites(from)
            .await
            .with_context(|| format!("reading the sites table at {from}"))?
    } else {
        let text = std::fs::read_to_string(from).with_context(|| format!("reading {from}"))?;
        stages::store::municipalities::parse_sites(&text, from)
            .map_err(|e| UsageError(format!("{from}: {e}")))?
    };
    if sites.is_empty() {
        return Err(UsageError(format!("{from} lists no municipalities")).into());
    }
    let (pool, target) = connect_target(cli, 1).await?;
    let (inserted, updated) = municipalities::upsert_sites(&pool, &sites).await?;
    if let Some(o) = target.observer() {
        use stages::store::observer::municipalities as observer;
        let unfit = observer::unfit_sites(&sites);
        for (sub, why) in &unfit {
            warn!("{sub}: not written to civic-observer's municipalities_muni: {why}. Fix the sites list (nothing is truncated).");
        }
        let fit: Vec<_> = sites
            .iter()
            .filter(|s| !unfit.iter().any(|u| u.0 == s.subdomain))
            .cloned()
            .collect();
        let (added, changed) = observer::upsert_sites(&pool, o.generation, &fit).await?;
        crate::outln!("civic-observer's municipalities_muni: {added} new, {changed} changed.");
        if !unfit.is_empty() {
            return Ok(EXIT_INCOMPLETE);
        }
    }
    let pages: i64 = sites.iter().filter_map(|s| s.pages).sum();
    crate::outln!("Synced {} municipalities from {from}: {inserted} new, {updated} updated; {pages} pages expected in all.", sites.len());
    Ok(EXIT_OK)
}
