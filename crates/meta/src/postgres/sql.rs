//! Statement helpers shared by every file of the PostgreSQL backend:
//! transactions, cached prepared statements, conflict retries, column
//! conversions and the database's clock.

use std::future::Future;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use deadpool_postgres::{GenericClient, Object, Transaction};
use tokio_postgres::types::ToSql;
use tokio_postgres::{IsolationLevel, Row};
use tracing::debug;

use super::error::{CorruptValue, Step};
use crate::{MetaError, Result};

/// Retries of a transaction the server rolled back for a serialization
/// failure or a deadlock.
pub(super) const MAX_CONFLICT_RETRIES: u32 = 8;

/// Run `f` (one transaction, or one statement) until it does not fail
/// with a conflict, at most [`MAX_CONFLICT_RETRIES`] more times.
pub(super) async fn retry<T, F, Fut>(op: &'static str, mut f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Step<T>>,
{
    let mut attempt = 0u32;
    loop {
        match f().await {
            Ok(v) => return Ok(v),
            Err(fail) if fail.is_conflict() && attempt < MAX_CONFLICT_RETRIES => {
                attempt += 1;
                debug!(op, attempt, "postgres transaction conflict, retrying");
                tokio::time::sleep(backoff(attempt)).await;
            }
            Err(fail) => return Err(fail.into_meta(op)),
        }
    }
}

/// Exponential backoff with jitter: about 5 ms, 10 ms, 20 ms ... capped at
/// 500 ms.
pub(super) fn backoff(attempt: u32) -> Duration {
    let base = 5u64.saturating_mul(1 << attempt.min(7)).min(500);
    let jitter = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::from(d.subsec_nanos()) % (base + 1))
        .unwrap_or(0);
    Duration::from_millis(base / 2 + jitter / 2)
}

/// A write transaction. `READ COMMITTED` on Postgres: every statement after a
/// row lock sees what the lock holder committed. Databases that only offer
/// `SERIALIZABLE` upgrade it, which is also correct.
pub(super) async fn begin_write(client: &mut Object) -> Step<Transaction<'_>> {
    Ok(client
        .build_transaction()
        .isolation_level(IsolationLevel::ReadCommitted)
        .start()
        .await?)
}

/// A read-only transaction over one snapshot.
pub(super) async fn begin_read(client: &mut Object) -> Step<Transaction<'_>> {
    Ok(client
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await?)
}

/// Run a cached prepared statement; all rows.
pub(super) async fn query<C: GenericClient>(
    c: &C,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Step<Vec<Row>> {
    let stmt = c.prepare_cached(sql).await?;
    Ok(c.query(&stmt, params).await?)
}

/// Run a cached prepared statement; at most one row.
pub(super) async fn query_opt<C: GenericClient>(
    c: &C,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Step<Option<Row>> {
    let stmt = c.prepare_cached(sql).await?;
    Ok(c.query_opt(&stmt, params).await?)
}

/// Run a cached prepared statement; exactly one row.
pub(super) async fn query_one<C: GenericClient>(
    c: &C,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Step<Row> {
    let stmt = c.prepare_cached(sql).await?;
    Ok(c.query_one(&stmt, params).await?)
}

/// Run a cached prepared statement; rows affected.
pub(super) async fn execute<C: GenericClient>(
    c: &C,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Step<u64> {
    let stmt = c.prepare_cached(sql).await?;
    Ok(c.execute(&stmt, params).await?)
}

/// The database's clock in ms since the Unix epoch (not the transaction's
/// start time: `clock_timestamp()` moves during a transaction).
pub(super) const SQL_NOW_MS: &str = "SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint";

pub(super) fn now_ms() -> i64 {
    crate::clock::now_ms()
}

/// A `u64` the store wrote as a non-negative `BIGINT`.
pub(super) fn u64_col(row: &Row, idx: usize, column: &'static str) -> Step<u64> {
    let v: i64 = row.try_get(idx)?;
    Ok(u64::try_from(v).map_err(|_| CorruptValue::Negative(column))?)
}

/// A `u64` to store as `BIGINT` (callers validated the range).
pub(super) fn i64_arg(v: u64, what: &str) -> Result<i64> {
    i64::try_from(v).map_err(|_| MetaError::InvalidArgument(format!("{what} too large value={v}")))
}
