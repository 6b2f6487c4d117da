//! How every statement reaches PostgreSQL, so that civicload works the same directly and
//! through a pooler in transaction mode (PgBouncer `pool_mode = transaction`), where each
//! transaction may run on another server connection and a statement outside a
//! transaction is a transaction of its own.
//!
//! sqlx 0.8 gets two things wrong there by default:
//! - It prepares a *named* statement (`sqlx_s_N`) per SQL text and connection, and reuses
//!   it from a cache. Behind the pooler the name is missing on the next server connection
//!   ("prepared statement sqlx_s_1 does not exist"), or is already there from another
//!   client ("... already exists"). With its cache switched off
//!   (`statement_cache_capacity(0)`) sqlx 0.8 still names every statement and never closes
//!   it: a leak, and the same clash.
//! - A statement takes two round trips, each ending in Sync: Parse + Describe, then Bind +
//!   Execute. Outside a transaction the pooler may hand the second to another server
//!   connection, where the unnamed statement is missing or, worse, is another client's.
//!
//! Hence two rules, on one code path for a plain server and a pooler:
//! - Statements are unnamed: build them with [`query`], [`query_as`] and [`query_scalar`]
//!   (`persistent(false)`); `clippy.toml` flags sqlx's own constructors.
//! - Every statement runs inside a transaction: the caller's, or one of its own through
//!   [`autocommit`].
//!
//! Statements that cannot run in a transaction (VACUUM, CREATE INDEX CONCURRENTLY, REFRESH
//! MATERIALIZED VIEW CONCURRENTLY, CREATE DATABASE) take no parameters: they go over the
//! simple protocol with `sqlx::raw_sql`, one message and one round trip, which a pooler
//! keeps on one server connection.
//!
//! The cost is that the server parses and plans every statement every time, and an
//! autocommit statement pays for BEGIN and COMMIT: measured in README.md ("PgBouncer"),
//! within the noise of a backfill.

use std::fmt::Debug;

use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::TryStreamExt;
use sqlx::error::BoxDynError;
use sqlx::postgres::{PgArguments, PgQueryResult, PgRow, PgStatement, PgTypeInfo};
use sqlx::query::{Query, QueryAs, QueryScalar};
use sqlx::RawSql;
use sqlx::{
    Acquire, AssertSqlSafe, Describe, Either, Execute, Executor, FromRow, Postgres, SqlStr,
};

/// An unnamed statement: see the module docs.
#[allow(clippy::disallowed_methods)]
pub fn query(sql: &str) -> Query<'_, Postgres, PgArguments> {
    sqlx::query(AssertSqlSafe(sql.to_owned())).persistent(false)
}

/// An unnamed statement whose rows map to `O`.
#[allow(clippy::disallowed_methods)]
pub fn query_as<'q, O>(sql: &'q str) -> QueryAs<'q, Postgres, O, PgArguments>
where
    O: for<'r> FromRow<'r, PgRow>,
{
    sqlx::query_as(AssertSqlSafe(sql.to_owned())).persistent(false)
}

/// An unnamed statement returning one column.
#[allow(clippy::disallowed_methods)]
pub fn query_scalar<'q, O>(sql: &'q str) -> QueryScalar<'q, Postgres, O, PgArguments>
where
    (O,): for<'r> FromRow<'r, PgRow>,
{
    sqlx::query_scalar(AssertSqlSafe(sql.to_owned())).persistent(false)
}

/// A statement over the simple protocol, without parameters (see the module docs): the
/// text is civicload's own (migrations, identifiers it quoted), never user input.
pub fn raw(sql: &str) -> RawSql {
    sqlx::raw_sql(AssertSqlSafe(sql.to_owned()))
}

/// Runs each statement given to it in a transaction of its own, on a connection of the
/// pool (`autocommit(pool)`) or on a connection held (`autocommit(&mut *conn)`).
pub fn autocommit<'c, A>(on: A) -> Autocommit<A>
where
    A: Acquire<'c, Database = Postgres>,
{
    Autocommit(on)
}

/// See [`autocommit`].
#[derive(Debug)]
pub struct Autocommit<A>(A);

impl<'c, A> Executor<'c> for Autocommit<A>
where
    A: Acquire<'c, Database = Postgres> + Send + Debug + 'c,
{
    type Database = Postgres;

    fn fetch_many<'e, 'q: 'e, E>(
        self,
        query: E,
    ) -> BoxStream<'e, Result<Either<PgQueryResult, PgRow>, sqlx::Error>>
    where
        'c: 'e,
        E: 'q + Execute<'q, Postgres>,
    {
        // Collected before the COMMIT: civicload's autocommit statements return few rows.
        Box::pin(
            futures::stream::once(async move {
                let mut tx = self.0.begin().await?;
                let items: Vec<_> = (&mut *tx).fetch_many(Unnamed(query)).try_collect().await?;
                tx.commit().await?;
                Ok::<_, sqlx::Error>(futures::stream::iter(items.into_iter().map(Ok)))
            })
            .try_flatten(),
        )
    }

    fn fetch_optional<'e, 'q: 'e, E>(
        self,
        query: E,
    ) -> BoxFuture<'e, Result<Option<PgRow>, sqlx::Error>>
    where
        'c: 'e,
        E: 'q + Execute<'q, Postgres>,
    {
        Box::pin(async move {
            let mut tx = self.0.begin().await?;
            let row = (&mut *tx).fetch_optional(Unnamed(query)).await?;
            tx.commit().await?;
            Ok(row)
        })
    }

    fn prepare_with<'e>(
        self,
        sql: SqlStr,
        parameters: &'e [PgTypeInfo],
    ) -> BoxFuture<'e, Result<PgStatement, sqlx::Error>>
    where
        'c: 'e,
    {
        Box::pin(async move {
            let mut tx = self.0.begin().await?;
            let statement = (&mut *tx).prepare_with(sql, parameters).await?;
            tx.commit().await?;
            Ok(statement)
        })
    }

    fn describe<'e>(self, sql: SqlStr) -> BoxFuture<'e, Result<Describe<Postgres>, sqlx::Error>>
    where
        'c: 'e,
    {
        Box::pin(async move {
            let mut tx = self.0.begin().await?;
            let described = (&mut *tx).describe(sql).await?;
            tx.commit().await?;
            Ok(described)
        })
    }
}

/// A statement sent unnamed, whatever its builder said.
struct Unnamed<E>(E);

impl<'q, E: Execute<'q, Postgres>> Execute<'q, Postgres> for Unnamed<E> {
    fn sql(self) -> SqlStr {
        self.0.sql()
    }

    fn statement(&self) -> Option<&PgStatement> {
        self.0.statement()
    }

    fn take_arguments(&mut self) -> Result<Option<PgArguments>, BoxDynError> {
        self.0.take_arguments()
    }

    fn persistent(&self) -> bool {
        false
    }
}

/// Connection-level failures and server shutdowns that a retry may get past.
pub fn is_transient_sql(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Tls(_) => true,
        sqlx::Error::Protocol(_) => true,
        sqlx::Error::Database(db) => {
            let code = db.code().unwrap_or_default();
            // 08: connection exception; 57P01-03: admin shutdown / crash / cannot connect now;
            // 40001/40P01: serialization failure / deadlock; 53300: too many connections.
            code.starts_with("08")
                || matches!(
                    code.as_ref(),
                    "57P01" | "57P02" | "57P03" | "40001" | "40P01" | "53300"
                )
        }
        _ => false,
    }
}
