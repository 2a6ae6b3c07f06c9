//! PostgreSQL backend (metadata shared by many brokers).
//!
//! [`PostgresStore`] implements [`crate::MetadataStore`] over a pool of
//! `tokio-postgres` connections (`deadpool-postgres`), with the same
//! semantics as [`crate::SqliteStore`] (both pass [`crate::conformance`]).
//!
//! Contract and mechanics:
//! - URL: `postgres://user:pass@host:port/db` (or `postgresql://`), with the
//!   `tokio-postgres` query options (`connect_timeout`, ...), libpq's
//!   `sslmode` and `sslrootcert` (see [`tls`]), plus `schema=NAME`:
//!   keep every table in schema `NAME` (created if missing) by setting
//!   `search_path` at connection start-up on every pooled connection.
//! - Schema: versioned migrations (`MIGRATIONS`) applied at connect, tracked
//!   in the one-row `schema_version` table. Several brokers may connect at
//!   once: the migrator holds the `schema_version` row lock (`SELECT ... FOR
//!   UPDATE`) for the whole migration, and creating the table itself is
//!   retried when two brokers race on it.
//! - Concurrency across brokers: every write is one short `READ COMMITTED`
//!   transaction that locks the rows it decides on before reading them.
//!   [`crate::LogStore::commit_segment`] locks every partition row it
//!   touches with one `SELECT ... ORDER BY topic_id, partition_index FOR
//!   UPDATE` (a deterministic order, so brokers cannot deadlock on each
//!   other) and runs the idempotent-producer checks after that, inside the
//!   same transaction; offsets are therefore dense and unique whichever broker
//!   commits. Maintenance locks the partition row first too, and segment rows
//!   (sorted by key) before deciding whether a segment just lost its last
//!   index entry. On a database that runs these transactions `SERIALIZABLE`
//!   (CockroachDB) the locks are still correct; serialization failures and
//!   deadlocks (SQLSTATE `40001`, `40P01`) are retried a few times with
//!   backoff, since the server rolled those transactions back.
//! - Portability: plain SQL that Postgres-compatible databases accept: no
//!   advisory locks, no stored procedures. `LISTEN`/`NOTIFY` wakes other
//!   brokers' parked fetches ([`listen`]) where the server has it (a
//!   probe at connect); elsewhere brokers poll. Text columns are
//!   `COLLATE "C"` so `ORDER BY` on names and keys is byte order, as in
//!   SQLite and Rust.
//! - Bounds: every session runs with `statement_timeout` (10 s),
//!   `lock_timeout` (5 s) and `idle_in_transaction_session_timeout` (10 s),
//!   each overridable as a URL query option in milliseconds
//!   (`?lock_timeout=2000`, 0 = none), and TCP keepalive after 30 s idle, so
//!   a frozen or partitioned broker cannot hold row locks for long.
//! - Failures: connection and server errors are [`MetaError::Backend`]
//!   (retryable). A connection the server closed (restart, failover) is
//!   dropped by the pool on its next checkout, so the store recovers by
//!   itself once the server is back. A call whose connection dies during its
//!   `COMMIT` may or may not have committed; callers resolve commits with
//!   [`crate::LogStore::segment_committed`] as for any backend.
//! - Cancellation: dropping a call's future rolls its transaction back unless
//!   `COMMIT` was already sent.
//! - Reads run in `REPEATABLE READ READ ONLY` transactions (one snapshot) when
//!   they need more than one statement, otherwise as single statements.
//!
//! Layout: [`conn`] connects and runs calls, [`url`] parses the URL, [`tls`]
//! builds the TLS connector, [`schema`] holds the migrations, [`sql`] and
//! [`rows`] the statement helpers and row conversions the trait files share,
//! [`listen`] the commit feed, and one file per trait ([`topics`], [`log`],
//! [`groups`], [`maintenance`], [`registry`]). The Kafka decisions come from
//! [`crate::rules`]; this backend only translates them to SQL.

mod conn;
mod error;
mod groups;
mod listen;
mod log;
mod maintenance;
mod registry;
mod rows;
mod schema;
mod security;
mod sql;
#[cfg(test)]
mod tests;
mod tls;
mod topics;
mod txn;
mod url;

pub use conn::PostgresStore;
pub(crate) use url::check_url;
pub use url::SESSION_TIMEOUTS;
