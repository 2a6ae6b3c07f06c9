//! SQLite backend (embedded default, one broker).
//!
//! [`SqliteStore`] implements [`crate::MetadataStore`] over one SQLite
//! database file (or an in-memory database for tests).
//!
//! Contract and mechanics:
//! - Durability: the file is opened in WAL mode with `synchronous=FULL`, so a
//!   call that returned `Ok` has its transaction on disk and survives
//!   `kill -9` and power loss.
//! - Concurrency: one writer connection behind a [`Mutex`] (every write is a
//!   `BEGIN IMMEDIATE` transaction, so SQLite itself serializes commits) plus,
//!   for files, a few read-only connections that read WAL snapshots while a
//!   commit is being fsynced. Every call runs on the blocking pool
//!   ([`tokio::task::spawn_blocking`]); no lock is held across an `.await`.
//! - Failure isolation: a panic inside a call poisons the mutex, but the next
//!   call takes the connection anyway and rolls back whatever transaction was
//!   left open, so one failing call never breaks the ones after it. Errors
//!   roll the transaction back (nothing half-applied is ever committed).
//! - Cancellation: dropping a call's future does not stop its transaction;
//!   it commits or rolls back on its own, and the caller learns which with
//!   [`crate::LogStore::segment_committed`].
//! - Segments: a `segments` row is alive while an index entry points into
//!   it and dead (`dead_since_ms` set) from the transaction that removed its
//!   last entry until the janitor forgets it; see [`maintenance`].
//! - Schema: versioned migrations (`MIGRATIONS`) applied in order at open,
//!   tracked in the `schema_version` table.
//! - Lookups by offset and by timestamp walk indexes, never the whole table:
//!   `index_entries_by_last (topic_id, partition_index, last_offset)` for
//!   offsets, and `index_entries_by_time (topic_id, partition_index,
//!   running_max_timestamp)` for timestamps. `running_max_timestamp` is the
//!   max timestamp of the partition up to and including the entry, which is
//!   monotone in offset order, so the first entry whose own max timestamp
//!   reaches `t` is found with a range seek.
//!
//! Layout: [`conn`] opens the database and runs calls, [`schema`] holds the
//! migrations, [`rows`] the row conversions the trait files share, and one
//! file per trait ([`topics`], [`log`], [`groups`], [`maintenance`],
//! [`registry`]). The Kafka decisions come from [`crate::rules`]; this
//! backend only translates them to SQL.

mod conn;
mod error;
mod groups;
mod log;
mod maintenance;
mod registry;
mod rows;
pub(crate) mod schema;
mod security;
#[cfg(test)]
mod tests;
mod topics;
mod txn;

pub(crate) use conn::parse_url;
pub use conn::SqliteStore;
