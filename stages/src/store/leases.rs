//! The `maintenance_leases` table: named, expiring leases that let one process at a time
//! run a piece of maintenance (the post-load phase of a backfill, a `maintain` run, a
//! search index build), across processes and machines.
//!
//! They replace session advisory locks, which a transaction-pooling PgBouncer cannot hold:
//! the lock and its release may run on different server connections, and a lock left on
//! a pooled server connection outlives its process. A lease is a row: claimed with one
//! statement, renewed by a heartbeat while the work goes on, deleted at the end. A holder
//! that dies stops renewing, and its lease expires after [`LEASE_TTL`]; a holder on this
//! machine whose process is gone loses it at once.

use std::time::Duration;

use sqlx::PgPool;
use tokio::task::JoinHandle;
use tracing::warn;

use super::sql::{self, autocommit};

/// How long a lease lasts without a heartbeat.
pub const LEASE_TTL: Duration = Duration::from_secs(60);
/// How often a holder renews its lease.
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(10);
/// How often a waiter tries again.
const POLL_EVERY: Duration = Duration::from_millis(500);

/// A held lease, renewed in the background until [`Lease::release`] (or expiring
/// [`LEASE_TTL`] after it is dropped unreleased).
#[derive(Debug)]
pub struct Lease {
    pool: PgPool,
    name: String,
    owner: String,
    heartbeat: JoinHandle<()>,
}

impl Lease {
    /// Takes the lease `name` for `owner` if nobody holds it (or its holder is gone);
    /// None when another live holder has it.
    pub async fn try_acquire(
        pool: &PgPool,
        name: &str,
        owner: &str,
    ) -> Result<Option<Lease>, sqlx::Error> {
        if !claim(pool, name, owner).await? {
            return Ok(None);
        }
        let (pool, name, owner) = (pool.clone(), name.to_string(), owner.to_string());
        let heartbeat = tokio::spawn({
            let (pool, name, owner) = (pool.clone(), name.clone(), owner.clone());
            async move {
                loop {
                    tokio::time::sleep(HEARTBEAT_EVERY).await;
                    match renew(&pool, &name, &owner).await {
                        Ok(true) => {}
                        Ok(false) => {
                            warn!(lease = %name, "The maintenance lease expired before it was renewed; another process may take it over.");
                        }
                        Err(e) => {
                            warn!(lease = %name, error = %e, "Could not renew the maintenance lease; retrying.");
                        }
                    }
                }
            }
        });
        Ok(Some(Lease {
            pool,
            name,
            owner,
            heartbeat,
        }))
    }

    /// Waits until the lease `name` is free, then takes it. Waits between short
    /// statements, never inside one: a session waiting in a statement holds a snapshot,
    /// which a CREATE INDEX CONCURRENTLY of the holder would in turn wait for.
    pub async fn acquire(pool: &PgPool, name: &str, owner: &str) -> Result<Lease, sqlx::Error> {
        loop {
            if let Some(lease) = Lease::try_acquire(pool, name, owner).await? {
                return Ok(lease);
            }
            tokio::time::sleep(POLL_EVERY).await;
        }
    }

    /// Ends the lease.
    pub async fn release(self) -> Result<(), sqlx::Error> {
        self.heartbeat.abort();
        sql::query("DELETE FROM maintenance_leases WHERE name = $1 AND owner = $2")
            .bind(&self.name)
            .bind(&self.owner)
            .execute(autocommit(&self.pool))
            .await?;
        Ok(())
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.heartbeat.abort();
    }
}

/// Claims the lease when it is free, expired, or held by a process of this machine that
/// no longer exists (a `kill -9`). True when `owner` holds it now.
async fn claim(pool: &PgPool, name: &str, owner: &str) -> Result<bool, sqlx::Error> {
    if claim_from(pool, name, owner, None).await? {
        return Ok(true);
    }
    match dead_local_holder(pool, name).await? {
        Some(dead) => claim_from(pool, name, owner, Some(&dead)).await,
        None => Ok(false),
    }
}

/// Claims the lease if it is free or expired, or held by `dead`.
async fn claim_from(
    pool: &PgPool,
    name: &str,
    owner: &str,
    dead: Option<&str>,
) -> Result<bool, sqlx::Error> {
    let claimed: Option<String> = sql::query_scalar(
        "INSERT INTO maintenance_leases AS l (name, owner, expires_at)
         VALUES ($1, $2, now() + make_interval(secs => $3))
         ON CONFLICT (name) DO UPDATE SET owner = EXCLUDED.owner, acquired_at = now(),
             heartbeat_at = now(), expires_at = EXCLUDED.expires_at
         WHERE l.expires_at < now() OR l.owner = $4
         RETURNING owner",
    )
    .bind(name)
    .bind(owner)
    .bind(LEASE_TTL.as_secs_f64())
    .bind(dead)
    .fetch_optional(autocommit(pool))
    .await?;
    Ok(claimed.is_some())
}

/// The holder of the lease when it is a process of this machine that is gone.
async fn dead_local_holder(pool: &PgPool, name: &str) -> Result<Option<String>, sqlx::Error> {
    let holder: Option<String> =
        sql::query_scalar("SELECT owner FROM maintenance_leases WHERE name = $1")
            .bind(name)
            .fetch_optional(autocommit(pool))
            .await?;
    Ok(holder.filter(|h| is_dead_local_process(h)))
}

/// A new owner id for this process's leases (of jobs and of maintenance): host, process
/// id and a random part, `host/pid/random`, which [`is_dead_local_process`] reads back.
pub fn owner_id() -> String {
    let host = hostname().unwrap_or_else(|| "unknown-host".into());
    format!(
        "{host}/{}/{}",
        std::process::id(),
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    )
}

fn hostname() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
}

/// Whether an owner id ([`owner_id`]) names a process of this machine that no longer
/// exists.
pub fn is_dead_local_process(owner: &str) -> bool {
    let host = hostname().unwrap_or_default();
    let mut parts = owner.split('/');
    match (
        parts.next(),
        parts.next().and_then(|p| p.parse::<u32>().ok()),
    ) {
        (Some(h), Some(pid)) if !host.is_empty() && h == host => {
            !std::path::Path::new(&format!("/proc/{pid}")).exists()
        }
        _ => false,
    }
}

/// Extends the lease; false when `owner` no longer holds it.
async fn renew(pool: &PgPool, name: &str, owner: &str) -> Result<bool, sqlx::Error> {
    let done = sql::query(
        "UPDATE maintenance_leases SET heartbeat_at = now(), expires_at = now() + make_interval(secs => $3)
         WHERE name = $1 AND owner = $2",
    )
    .bind(name)
    .bind(owner)
    .bind(LEASE_TTL.as_secs_f64())
    .execute(autocommit(pool))
    .await?;
    Ok(done.rows_affected() == 1)
}
