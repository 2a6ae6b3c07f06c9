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
//!   last entry until the janitor forgets it; see `sqlite_maintenance`.
//! - Schema: versioned migrations (`MIGRATIONS`) applied in order at open,
//!   tracked in the `schema_version` table.
//! - Lookups by offset and by timestamp walk indexes, never the whole table:
//!   `index_entries_by_last (topic_id, partition_index, last_offset)` for
//!   offsets, and `index_entries_by_time (topic_id, partition_index,
//!   running_max_timestamp)` for timestamps. `running_max_timestamp` is the
//!   max timestamp of the partition up to and including the entry, which is
//!   monotone in offset order, so the first entry whose own max timestamp
//!   reaches `t` is found with a range seek.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, TryLockError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use rusqlite::{
    params, Connection, OpenFlags, OptionalExtension, Transaction, TransactionBehavior,
};
use tracing::{debug, warn};
use uuid::Uuid;

use crate::clock::Clock;
use crate::plan::{EntryPlanner, NewEntry};
use crate::sqlite_maintenance::mark_dead_if_unused;
use crate::{
    BatchOutcome, BatchRejection, CommittedOffset, GroupClaim, GroupStore, IndexEntry, LogStore,
    MetaError, PartitionOffsets, ProducerBatch, Result, SegmentCommit, TopicMeta, TopicStore,
};

/// How long a connection waits on a lock held by another connection (or
/// process) before the call fails with a retryable error.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// Read-only connections opened next to the writer for file databases.
const READERS: usize = 4;

/// How many recent batches per (partition, producer) are remembered for
/// duplicate detection (Kafka remembers 5).
pub(crate) const PRODUCER_BATCH_MEMORY: i64 = 5;

/// Schema migrations, applied in order. Entry `i` brings the schema from
/// version `i` to version `i + 1`. Never edit an entry once released; append.
pub(crate) const MIGRATIONS: &[&str] = &[
    // v1: initial schema.
    r#"
CREATE TABLE topics (
    id          BLOB    NOT NULL PRIMARY KEY,
    name        TEXT    NOT NULL UNIQUE,
    partitions  INTEGER NOT NULL
);

CREATE TABLE topic_configs (
    topic_id    BLOB NOT NULL REFERENCES topics(id) ON DELETE CASCADE,
    key         TEXT NOT NULL,
    value       TEXT NOT NULL,
    PRIMARY KEY (topic_id, key)
) WITHOUT ROWID;

CREATE TABLE partitions (
    topic_id          BLOB    NOT NULL REFERENCES topics(id) ON DELETE CASCADE,
    partition_index   INTEGER NOT NULL,
    log_start_offset  INTEGER NOT NULL,
    next_offset       INTEGER NOT NULL,
    -- max timestamp over every batch ever committed to the partition
    max_timestamp     INTEGER NOT NULL,
    PRIMARY KEY (topic_id, partition_index)
) WITHOUT ROWID;

CREATE TABLE segments (
    key              TEXT    NOT NULL PRIMARY KEY,
    size             INTEGER NOT NULL,
    committed_at_ms  INTEGER NOT NULL
) WITHOUT ROWID;

CREATE TABLE index_entries (
    topic_id               BLOB    NOT NULL,
    partition_index        INTEGER NOT NULL,
    base_offset            INTEGER NOT NULL,
    last_offset            INTEGER NOT NULL,
    segment_key            TEXT    NOT NULL REFERENCES segments(key),
    byte_start             INTEGER NOT NULL,
    byte_len               INTEGER NOT NULL,
    max_timestamp          INTEGER NOT NULL,
    -- max timestamp of the partition up to and including this entry
    running_max_timestamp  INTEGER NOT NULL,
    PRIMARY KEY (topic_id, partition_index, base_offset),
    FOREIGN KEY (topic_id, partition_index)
        REFERENCES partitions(topic_id, partition_index) ON DELETE CASCADE
) WITHOUT ROWID;

CREATE INDEX index_entries_by_last
    ON index_entries (topic_id, partition_index, last_offset);
CREATE INDEX index_entries_by_time
    ON index_entries (topic_id, partition_index, running_max_timestamp, base_offset);
CREATE INDEX index_entries_by_segment
    ON index_entries (segment_key);

CREATE TABLE producer_ids (
    singleton  INTEGER NOT NULL PRIMARY KEY CHECK (singleton = 0),
    next_id    INTEGER NOT NULL
);
INSERT INTO producer_ids (singleton, next_id) VALUES (0, 0);

CREATE TABLE producer_state (
    topic_id         BLOB    NOT NULL,
    partition_index  INTEGER NOT NULL,
    producer_id      INTEGER NOT NULL,
    epoch            INTEGER NOT NULL,
    PRIMARY KEY (topic_id, partition_index, producer_id),
    FOREIGN KEY (topic_id, partition_index)
        REFERENCES partitions(topic_id, partition_index) ON DELETE CASCADE
) WITHOUT ROWID;

-- the last few accepted batches per producer, for duplicate detection
CREATE TABLE producer_batches (
    topic_id         BLOB    NOT NULL,
    partition_index  INTEGER NOT NULL,
    producer_id      INTEGER NOT NULL,
    base_offset      INTEGER NOT NULL,
    base_sequence    INTEGER NOT NULL,
    last_sequence    INTEGER NOT NULL,
    PRIMARY KEY (topic_id, partition_index, producer_id, base_offset),
    FOREIGN KEY (topic_id, partition_index, producer_id)
        REFERENCES producer_state(topic_id, partition_index, producer_id) ON DELETE CASCADE
) WITHOUT ROWID;

CREATE TABLE group_offsets (
    group_id             TEXT    NOT NULL,
    topic                TEXT    NOT NULL,
    partition_index      INTEGER NOT NULL,
    committed_offset     INTEGER NOT NULL,
    leader_epoch         INTEGER NOT NULL,
    metadata             TEXT,
    commit_timestamp_ms  INTEGER NOT NULL,
    PRIMARY KEY (group_id, topic, partition_index)
) WITHOUT ROWID;
"#,
    // v2: dead segments (no index entry points into them any more; the
    // janitor deletes their objects after a grace period). NULL = alive.
    // Segments committed before v2 without any index entry (every batch was
    // rejected) are dead since their commit.
    r#"
ALTER TABLE segments ADD COLUMN dead_since_ms INTEGER NULL;

CREATE INDEX segments_by_dead
    ON segments (dead_since_ms) WHERE dead_since_ms IS NOT NULL;

UPDATE segments SET dead_since_ms = committed_at_ms
    WHERE NOT EXISTS (SELECT 1 FROM index_entries WHERE segment_key = segments.key);
"#,
    // v3: broker registry (see `sqlite_registry`). A broker is live while
    // its last heartbeat is within the TTL the caller passes.
    r#"
CREATE TABLE brokers (
    node_id       INTEGER NOT NULL PRIMARY KEY,
    host          TEXT    NOT NULL,
    port          INTEGER NOT NULL,
    rack          TEXT    NULL,
    last_seen_ms  INTEGER NOT NULL
);
"#,
    // v4: group coordinator claims. `epoch` only grows (rows are never
    // deleted, not even with the group's offsets), so an old claim can never
    // become valid again.
    r#"
CREATE TABLE group_coordinators (
    group_id  TEXT    NOT NULL PRIMARY KEY,
    node_id   INTEGER NOT NULL,
    epoch     INTEGER NOT NULL
) WITHOUT ROWID;
"#,
    // v5: leases (one broker at a time runs background maintenance).
    r#"
CREATE TABLE leases (
    name        TEXT    NOT NULL PRIMARY KEY,
    holder      TEXT    NOT NULL,
    expires_ms  INTEGER NOT NULL
) WITHOUT ROWID;
"#,
    // v6: when each producer last wrote to each partition, so idle producer
    // state expires (`producer.id.expiration.ms`). Existing producers count
    // from the upgrade.
    r#"
ALTER TABLE producer_state ADD COLUMN last_write_ms INTEGER NOT NULL DEFAULT 0;
UPDATE producer_state SET last_write_ms = CAST(unixepoch('subsec') * 1000 AS INTEGER);
CREATE INDEX producer_state_by_last_write ON producer_state (last_write_ms);
"#,
    // v7: group expiry (`offsets.retention.minutes`). A coordinator marks its
    // groups with members active; a group idle and uncommitted for the
    // retention loses its offsets and claim row. New claim rows start above
    // every epoch an expired row had (`group_epoch_floor`), so a claim from
    // before the expiry can never become valid again.
    r#"
ALTER TABLE group_coordinators ADD COLUMN last_active_ms INTEGER NOT NULL DEFAULT 0;
UPDATE group_coordinators SET last_active_ms = CAST(unixepoch('subsec') * 1000 AS INTEGER);
CREATE TABLE group_epoch_floor (
    singleton  INTEGER NOT NULL PRIMARY KEY CHECK (singleton = 0),
    floor      INTEGER NOT NULL
);
INSERT INTO group_epoch_floor (singleton, floor) VALUES (0, 0);
"#,
    // v8: the membership a group's coordinator saved (generation, protocol,
    // members, assignment; encoded by the coordinator), so a new coordinator
    // carries on a stable group instead of making it rebalance.
    r#"
ALTER TABLE group_coordinators ADD COLUMN state BLOB NULL;
"#,
];

/// Index entries from an offset: a range seek on `index_entries_by_last`.
/// Entries of one partition never overlap, so `last_offset` order is offset
/// order.
pub(crate) const SQL_ENTRIES_FROM: &str =
    "SELECT topic_id, partition_index, base_offset, last_offset, \
     segment_key, byte_start, byte_len, max_timestamp \
     FROM index_entries INDEXED BY index_entries_by_last \
     WHERE topic_id = ?1 AND partition_index = ?2 AND last_offset >= ?3 \
     ORDER BY last_offset LIMIT ?4";

/// First entry (offset order) at or after the log start whose max timestamp
/// reaches `?3`: a range seek on `index_entries_by_time`. The running max is
/// monotone in offset order, so the rows with `running_max_timestamp >= t`
/// are a suffix of the partition; the first of them usually matches.
const SQL_ENTRY_FOR_TIMESTAMP: &str = "SELECT topic_id, partition_index, base_offset, \
     last_offset, segment_key, byte_start, byte_len, max_timestamp \
     FROM index_entries INDEXED BY index_entries_by_time \
     WHERE topic_id = ?1 AND partition_index = ?2 AND running_max_timestamp >= ?3 \
       AND max_timestamp >= ?3 AND last_offset >= ?4 \
     ORDER BY running_max_timestamp, base_offset LIMIT 1";

/// Metadata store over SQLite. Cheap to clone (shares the connections).
#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
    /// The store's clock: refuses commits past their deadline
    /// ([`crate::CommitDeadline`]) and dates abandoned segments.
    clock: Arc<dyn Clock>,
    /// Run calls on the calling thread instead of the blocking pool
    /// ([`SqliteStore::with_inline_calls`]).
    inline: bool,
}

struct Inner {
    /// The only connection that writes.
    writer: Mutex<Connection>,
    /// Read-only connections (empty for in-memory databases, whose readers
    /// use the writer).
    readers: Vec<Mutex<Connection>>,
    next_reader: AtomicUsize,
    /// Where the database lives, for logs (`:memory:` for in-memory).
    location: String,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("location", &self.inner.location)
            .field("readers", &self.inner.readers.len())
            .finish()
    }
}

/// Failure inside a blocking call: either a store-level error or an SQLite
/// error that becomes [`MetaError::Backend`] with the call's `op`.
pub(crate) enum Fail {
    Meta(MetaError),
    Sql(rusqlite::Error),
}

impl From<rusqlite::Error> for Fail {
    fn from(e: rusqlite::Error) -> Self {
        Fail::Sql(e)
    }
}

impl From<MetaError> for Fail {
    fn from(e: MetaError) -> Self {
        Fail::Meta(e)
    }
}

pub(crate) type Step<T> = std::result::Result<T, Fail>;

impl Fail {
    fn into_meta(self, op: &'static str) -> MetaError {
        match self {
            Fail::Meta(e) => e,
            Fail::Sql(source) => MetaError::Backend {
                op,
                source: Box::new(source),
            },
        }
    }
}

impl SqliteStore {
    /// Open (creating if needed) the database file at `path`, creating its
    /// parent directory, and bring the schema up to date.
    pub async fn open(path: &Path) -> Result<Self> {
        let path = path.to_path_buf();
        blocking("open", move || open_file(&path)).await
    }

    /// A private in-memory database (tests, throwaway brokers).
    pub async fn open_in_memory() -> Result<Self> {
        blocking("open", || {
            let mut conn = Connection::open_in_memory()?;
            configure(&conn)?;
            migrate(&mut conn)?;
            Ok(SqliteStore::from_parts(conn, Vec::new(), ":memory:".into()))
        })
        .await
    }

    /// Open from a URL: `sqlite::memory:` for an in-memory database,
    /// `sqlite://relative/path.db` or `sqlite:///absolute/path.db` for a
    /// file. A query string (`?mode=rwc`) is accepted and ignored.
    pub async fn open_url(url: &str) -> Result<Self> {
        match parse_url(url)? {
            None => Self::open_in_memory().await,
            Some(path) => Self::open(&path).await,
        }
    }

    /// The writer connection, locked (tests inspect the schema with it).
    #[cfg(test)]
    pub(crate) fn writer_for_tests(&self) -> MutexGuard<'_, Connection> {
        lock(&self.inner.writer)
    }

    fn from_parts(writer: Connection, readers: Vec<Connection>, location: String) -> Self {
        SqliteStore {
            inner: Arc::new(Inner {
                writer: Mutex::new(writer),
                readers: readers.into_iter().map(Mutex::new).collect(),
                next_reader: AtomicUsize::new(0),
                location,
            }),
            clock: crate::clock::system(),
            inline: false,
        }
    }

    /// The store's clock.
    pub(crate) fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// Use `clock` as the store's clock (simulations; the default is the
    /// machine's).
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Run every call on the calling thread, inside the future's first
    /// poll, instead of on the blocking pool. Only for deterministic
    /// simulations of in-memory databases: the async thread blocks for the
    /// duration of each call, but nothing else runs meanwhile, so a paused
    /// tokio clock cannot advance during a call and the interleaving of
    /// tasks is the same on every run.
    pub fn with_inline_calls(mut self) -> Self {
        self.inline = true;
        self
    }

    /// Run `f` on the blocking pool, or inline (see
    /// [`SqliteStore::with_inline_calls`]).
    async fn call<T, F>(&self, op: &'static str, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce() -> Step<T> + Send + 'static,
    {
        if self.inline {
            return f().map_err(|fail| fail.into_meta(op));
        }
        blocking(op, f).await
    }

    /// Run `f` in a `BEGIN IMMEDIATE` transaction on the writer; commit if it
    /// returns `Ok`, roll back otherwise.
    pub(crate) async fn write<T, F>(&self, op: &'static str, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Transaction<'_>) -> Step<T> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        self.call(op, move || {
            let mut conn = lock(&inner.writer);
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let out = f(&tx)?;
            tx.commit()?;
            Ok(out)
        })
        .await
    }

    /// Run `f` in a read transaction (one consistent snapshot) on a reader
    /// connection, or on the writer for in-memory databases.
    pub(crate) async fn read<T, F>(&self, op: &'static str, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Transaction<'_>) -> Step<T> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        self.call(op, move || {
            let mut conn = if inner.readers.is_empty() {
                lock(&inner.writer)
            } else {
                pick_reader(&inner)
            };
            let tx = conn.transaction_with_behavior(TransactionBehavior::Deferred)?;
            let out = f(&tx)?;
            tx.commit()?;
            Ok(out)
        })
        .await
    }
}

/// Run `f` on the blocking pool and turn its failure into a [`MetaError`].
async fn blocking<T, F>(op: &'static str, f: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> Step<T> + Send + 'static,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(fail)) => Err(fail.into_meta(op)),
        Err(join) => Err(MetaError::Backend {
            op,
            source: Box::new(join),
        }),
    }
}

/// Lock a connection even if an earlier call panicked while holding it, and
/// roll back any transaction that call left open.
fn lock(m: &Mutex<Connection>) -> MutexGuard<'_, Connection> {
    let guard = m.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    recover(&guard);
    guard
}

fn recover(conn: &Connection) {
    if !conn.is_autocommit() {
        warn!("sqlite connection left inside a transaction, rolling back");
        if let Err(e) = conn.execute_batch("ROLLBACK") {
            warn!(error = %e, "sqlite rollback of abandoned transaction failed");
        }
    }
}

/// A free reader if there is one, else wait on the next one in turn.
fn pick_reader(inner: &Inner) -> MutexGuard<'_, Connection> {
    let n = inner.readers.len();
    let start = inner.next_reader.fetch_add(1, Ordering::Relaxed);
    for i in 0..n {
        let m = &inner.readers[(start + i) % n];
        let guard = match m.try_lock() {
            Ok(g) => g,
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
            Err(TryLockError::WouldBlock) => continue,
        };
        recover(&guard);
        return guard;
    }
    lock(&inner.readers[start % n])
}

fn open_file(path: &Path) -> Step<SqliteStore> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| MetaError::Backend {
            op: "open",
            source: Box::new(e),
        })?;
    }
    let mut writer = Connection::open(path)?;
    configure(&writer)?;
    let mode: String = writer.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(MetaError::InvalidArgument(format!(
            "sqlite database cannot use WAL mode journal_mode={mode} path={}",
            path.display()
        ))
        .into());
    }
    migrate(&mut writer)?;
    let mut readers = Vec::with_capacity(READERS);
    for _ in 0..READERS {
        let reader = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY
                | OpenFlags::SQLITE_OPEN_NO_MUTEX
                | OpenFlags::SQLITE_OPEN_URI,
        )?;
        configure(&reader)?;
        reader.pragma_update(None, "query_only", true)?;
        readers.push(reader);
    }
    debug!(path = %path.display(), "sqlite metadata store opened");
    Ok(SqliteStore::from_parts(
        writer,
        readers,
        path.display().to_string(),
    ))
}

/// Per-connection settings.
fn configure(conn: &Connection) -> rusqlite::Result<()> {
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", true)?;
    Ok(())
}

/// Apply the migrations this database has not seen yet, in one transaction.
fn migrate(conn: &mut Connection) -> Step<()> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    tx.execute_batch("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")?;
    let current: i64 = tx.query_row(
        "SELECT COALESCE(MAX(version), 0) FROM schema_version",
        [],
        |r| r.get(0),
    )?;
    let known = i64::try_from(MIGRATIONS.len()).expect("migration count fits in i64");
    if current > known {
        return Err(MetaError::InvalidArgument(format!(
            "sqlite schema is newer than this build version={current} supported={known}"
        ))
        .into());
    }
    for (version, sql) in (1..)
        .zip(MIGRATIONS.iter())
        .skip(usize::try_from(current).unwrap_or(0))
    {
        tx.execute_batch(sql)?;
        tx.execute("DELETE FROM schema_version", [])?;
        tx.execute(
            "INSERT INTO schema_version (version) VALUES (?1)",
            [version],
        )?;
        debug!(version, "sqlite schema migrated");
    }
    tx.commit()?;
    Ok(())
}

/// `None` for an in-memory database, else the file path.
pub(crate) fn parse_url(url: &str) -> Result<Option<PathBuf>> {
    let invalid = || MetaError::InvalidArgument(format!("sqlite url url={url}"));
    let rest = url.strip_prefix("sqlite:").ok_or_else(invalid)?;
    let rest = rest.split_once('?').map_or(rest, |(path, _query)| path);
    let path = rest.strip_prefix("//").unwrap_or(rest);
    if path == ":memory:" {
        return Ok(None);
    }
    if path.is_empty() {
        return Err(invalid());
    }
    Ok(Some(PathBuf::from(path)))
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn topic_id_from_row(row: &rusqlite::Row<'_>, idx: usize) -> rusqlite::Result<Uuid> {
    Ok(Uuid::from_bytes(row.get::<_, [u8; 16]>(idx)?))
}

pub(crate) fn entry_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<IndexEntry> {
    Ok(IndexEntry {
        topic_id: topic_id_from_row(row, 0)?,
        partition: row.get(1)?,
        base_offset: row.get(2)?,
        last_offset: row.get(3)?,
        segment_key: row.get(4)?,
        byte_start: row.get(5)?,
        byte_len: row.get(6)?,
        max_timestamp: row.get(7)?,
    })
}

/// Load a topic and its configs by a `WHERE` on the `topics` table.
fn load_topic(
    conn: &Connection,
    where_clause: &str,
    arg: &dyn rusqlite::ToSql,
) -> rusqlite::Result<Option<TopicMeta>> {
    let sql = format!("SELECT id, name, partitions FROM topics WHERE {where_clause}");
    let found = conn
        .prepare_cached(&sql)?
        .query_row([arg], |r| {
            Ok((
                topic_id_from_row(r, 0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i32>(2)?,
            ))
        })
        .optional()?;
    let Some((id, name, partitions)) = found else {
        return Ok(None);
    };
    let configs = load_configs(conn, id)?;
    Ok(Some(TopicMeta {
        id,
        name,
        partitions,
        configs,
    }))
}

fn load_configs(conn: &Connection, id: Uuid) -> rusqlite::Result<BTreeMap<String, String>> {
    let mut stmt =
        conn.prepare_cached("SELECT key, value FROM topic_configs WHERE topic_id = ?1")?;
    let rows = stmt.query_map([id.as_bytes()], |r| Ok((r.get(0)?, r.get(1)?)))?;
    rows.collect()
}

fn topic_by_name(conn: &Connection, name: &str) -> rusqlite::Result<Option<TopicMeta>> {
    load_topic(conn, "name = ?1", &name)
}

fn topic_by_id(conn: &Connection, id: Uuid) -> rusqlite::Result<Option<TopicMeta>> {
    load_topic(conn, "id = ?1", id.as_bytes())
}

/// Log boundaries and running max timestamp of a partition.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PartitionRow {
    pub(crate) log_start_offset: i64,
    pub(crate) next_offset: i64,
    pub(crate) max_timestamp: i64,
}

fn load_partition(
    conn: &Connection,
    topic_id: Uuid,
    partition: i32,
) -> rusqlite::Result<Option<PartitionRow>> {
    conn.prepare_cached(
        "SELECT log_start_offset, next_offset, max_timestamp FROM partitions \
         WHERE topic_id = ?1 AND partition_index = ?2",
    )?
    .query_row(params![topic_id.as_bytes(), partition], |r| {
        Ok(PartitionRow {
            log_start_offset: r.get(0)?,
            next_offset: r.get(1)?,
            max_timestamp: r.get(2)?,
        })
    })
    .optional()
}

/// The partition, or [`MetaError::UnknownTopic`] / [`MetaError::UnknownPartition`].
pub(crate) fn require_partition(
    conn: &Connection,
    topic_id: Uuid,
    partition: i32,
) -> Step<PartitionRow> {
    if let Some(row) = load_partition(conn, topic_id, partition)? {
        return Ok(row);
    }
    let err = match topic_by_id(conn, topic_id)? {
        Some(topic) => MetaError::UnknownPartition {
            topic: topic.name,
            partition,
        },
        None => MetaError::UnknownTopic(topic_id.to_string()),
    };
    Err(err.into())
}

fn require_topic(conn: &Connection, name: &str) -> Step<TopicMeta> {
    topic_by_name(conn, name)?.ok_or_else(|| MetaError::UnknownTopic(name.to_owned()).into())
}

fn insert_partitions(conn: &Connection, id: Uuid, from: i32, to: i32) -> rusqlite::Result<()> {
    let mut stmt = conn.prepare_cached(
        "INSERT INTO partitions (topic_id, partition_index, log_start_offset, next_offset, \
         max_timestamp) VALUES (?1, ?2, 0, 0, ?3)",
    )?;
    for p in from..to {
        stmt.execute(params![id.as_bytes(), p, i64::MIN])?;
    }
    Ok(())
}

/// Kafka's sequence successor: wraps from `i32::MAX` to 0.
pub(crate) fn next_sequence(seq: i32) -> i32 {
    if seq == i32::MAX {
        0
    } else {
        seq + 1
    }
}

/// What the idempotent-producer check decided for a batch.
enum ProducerVerdict {
    /// Accept; `reset` = forget the remembered state (first batch or new epoch).
    Accept {
        reset: bool,
    },
    Duplicate {
        base_offset: i64,
    },
    Reject(BatchRejection),
}

fn check_producer(
    tx: &Transaction<'_>,
    topic_id: Uuid,
    partition: i32,
    p: &ProducerBatch,
) -> rusqlite::Result<ProducerVerdict> {
    let stored: Option<i16> = tx
        .prepare_cached(
            "SELECT epoch FROM producer_state \
             WHERE topic_id = ?1 AND partition_index = ?2 AND producer_id = ?3",
        )?
        .query_row(
            params![topic_id.as_bytes(), partition, p.producer_id],
            |r| r.get(0),
        )
        .optional()?;
    let Some(epoch) = stored else {
        return Ok(ProducerVerdict::Accept { reset: true });
    };
    if p.producer_epoch < epoch {
        return Ok(ProducerVerdict::Reject(
            BatchRejection::InvalidProducerEpoch,
        ));
    }
    if p.producer_epoch > epoch {
        return Ok(if p.base_sequence == 0 {
            ProducerVerdict::Accept { reset: true }
        } else {
            ProducerVerdict::Reject(BatchRejection::OutOfOrderSequence)
        });
    }
    let mut stmt = tx.prepare_cached(
        "SELECT base_sequence, last_sequence, base_offset FROM producer_batches \
         WHERE topic_id = ?1 AND partition_index = ?2 AND producer_id = ?3 \
         ORDER BY base_offset DESC LIMIT ?4",
    )?;
    let recent = stmt
        .query_map(
            params![
                topic_id.as_bytes(),
                partition,
                p.producer_id,
                PRODUCER_BATCH_MEMORY
            ],
            |r| {
                Ok((
                    r.get::<_, i32>(0)?,
                    r.get::<_, i32>(1)?,
                    r.get::<_, i64>(2)?,
                ))
            },
        )?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    if let Some(&(_, _, base_offset)) = recent
        .iter()
        .find(|(base, last, _)| *base == p.base_sequence && *last == p.last_sequence)
    {
        return Ok(ProducerVerdict::Duplicate { base_offset });
    }
    match recent.first() {
        Some(&(_, last, _)) if p.base_sequence != next_sequence(last) => {
            Ok(ProducerVerdict::Reject(BatchRejection::OutOfOrderSequence))
        }
        _ => Ok(ProducerVerdict::Accept { reset: false }),
    }
}

fn record_producer_batch(
    tx: &Transaction<'_>,
    topic_id: Uuid,
    partition: i32,
    p: &ProducerBatch,
    base_offset: i64,
    reset: bool,
) -> rusqlite::Result<()> {
    let id = topic_id.as_bytes();
    // Every accepted batch refreshes the producer's last write (expiry).
    tx.prepare_cached(
        "INSERT INTO producer_state (topic_id, partition_index, producer_id, epoch, last_write_ms) \
         VALUES (?1, ?2, ?3, ?4, ?5) \
         ON CONFLICT (topic_id, partition_index, producer_id) \
         DO UPDATE SET epoch = excluded.epoch, last_write_ms = excluded.last_write_ms",
    )?
    .execute(params![id, partition, p.producer_id, p.producer_epoch, now_ms()])?;
    if reset {
        tx.prepare_cached(
            "DELETE FROM producer_batches \
             WHERE topic_id = ?1 AND partition_index = ?2 AND producer_id = ?3",
        )?
        .execute(params![id, partition, p.producer_id])?;
    }
    tx.prepare_cached(
        "INSERT INTO producer_batches (topic_id, partition_index, producer_id, base_offset, \
         base_sequence, last_sequence) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute(params![
        id,
        partition,
        p.producer_id,
        base_offset,
        p.base_sequence,
        p.last_sequence
    ])?;
    tx.prepare_cached(
        "DELETE FROM producer_batches \
         WHERE topic_id = ?1 AND partition_index = ?2 AND producer_id = ?3 AND base_offset < ( \
             SELECT base_offset FROM producer_batches \
             WHERE topic_id = ?1 AND partition_index = ?2 AND producer_id = ?3 \
             ORDER BY base_offset DESC LIMIT 1 OFFSET ?4)",
    )?
    .execute(params![
        id,
        partition,
        p.producer_id,
        PRODUCER_BATCH_MEMORY - 1
    ])?;
    Ok(())
}

/// Reject batches the schema cannot hold before touching the database.
pub(crate) fn validate_commit(commit: &SegmentCommit) -> Result<()> {
    let invalid = |what: &str| {
        MetaError::InvalidArgument(format!("segment commit {what} key={}", commit.key))
    };
    if i64::try_from(commit.size).is_err() {
        return Err(invalid("size too large"));
    }
    for b in &commit.batches {
        if b.offset_count < 1 {
            return Err(invalid("batch offset_count below 1"));
        }
        let end = b.byte_start.checked_add(b.byte_len);
        if end.and_then(|e| i64::try_from(e).ok()).is_none() {
            return Err(invalid("batch byte range too large"));
        }
    }
    Ok(())
}

fn commit_segment_tx(tx: &Transaction<'_>, commit: &SegmentCommit) -> Step<Vec<BatchOutcome>> {
    let committed_at = now_ms();
    let inserted = tx
        .prepare_cached(
            "INSERT INTO segments (key, size, committed_at_ms) VALUES (?1, ?2, ?3) \
             ON CONFLICT (key) DO NOTHING",
        )?
        .execute(params![commit.key, commit.size, committed_at])?;
    if inserted == 0 {
        return Err(MetaError::SegmentExists(commit.key.clone()).into());
    }

    // Partition rows touched by this commit (None = unknown), written back at
    // the end.
    let mut parts: HashMap<(Uuid, i32), Option<PartitionRow>> = HashMap::new();
    let mut planner = EntryPlanner::default();
    let mut outcomes = Vec::with_capacity(commit.batches.len());

    for b in &commit.batches {
        let key = (b.topic_id, b.partition);
        let part = match parts.get(&key) {
            Some(p) => *p,
            None => {
                let p = load_partition(tx, b.topic_id, b.partition)?;
                parts.insert(key, p);
                p
            }
        };
        let Some(mut part) = part else {
            outcomes.push(BatchOutcome::Rejected(
                BatchRejection::UnknownTopicOrPartition,
            ));
            continue;
        };
        let mut reset = false;
        if let Some(p) = &b.producer {
            match check_producer(tx, b.topic_id, b.partition, p)? {
                ProducerVerdict::Accept { reset: r } => reset = r,
                ProducerVerdict::Duplicate { base_offset } => {
                    outcomes.push(BatchOutcome::Duplicate { base_offset });
                    continue;
                }
                ProducerVerdict::Reject(why) => {
                    outcomes.push(BatchOutcome::Rejected(why));
                    continue;
                }
            }
        }

        let base_offset = part.next_offset;
        part.next_offset = base_offset.checked_add(b.offset_count).ok_or_else(|| {
            MetaError::InvalidArgument(format!(
                "partition offset overflow topic_id={} partition={}",
                b.topic_id, b.partition
            ))
        })?;
        part.max_timestamp = part.max_timestamp.max(b.max_timestamp);
        parts.insert(key, Some(part));
        if let Some(p) = &b.producer {
            record_producer_batch(tx, b.topic_id, b.partition, p, base_offset, reset)?;
        }

        planner.add(
            &commit.key,
            b,
            base_offset,
            part.next_offset - 1,
            part.max_timestamp,
        );
        outcomes.push(BatchOutcome::Appended { base_offset });
    }
    let entries = planner.into_entries();

    let mut update = tx.prepare_cached(
        "UPDATE partitions SET next_offset = ?3, max_timestamp = ?4 \
         WHERE topic_id = ?1 AND partition_index = ?2",
    )?;
    for ((topic_id, partition), part) in &parts {
        if let Some(part) = part {
            update.execute(params![
                topic_id.as_bytes(),
                partition,
                part.next_offset,
                part.max_timestamp
            ])?;
        }
    }
    let mut insert = tx.prepare_cached(
        "INSERT INTO index_entries (topic_id, partition_index, base_offset, last_offset, \
         segment_key, byte_start, byte_len, max_timestamp, running_max_timestamp) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )?;
    for NewEntry {
        entry: e,
        running_max_timestamp,
    } in &entries
    {
        insert.execute(params![
            e.topic_id.as_bytes(),
            e.partition,
            e.base_offset,
            e.last_offset,
            e.segment_key,
            e.byte_start,
            e.byte_len,
            e.max_timestamp,
            running_max_timestamp
        ])?;
    }
    if entries.is_empty() {
        // Nothing of it is readable (every batch rejected or a duplicate):
        // dead from the start, so the janitor removes the object.
        mark_dead_if_unused(tx, [commit.key.as_str()], committed_at)?;
    }
    Ok(outcomes)
}

fn delete_topic_tx(tx: &Transaction<'_>, name: &str) -> Step<Vec<String>> {
    let topic = require_topic(tx, name)?;
    let id = topic.id.as_bytes();
    let keys = tx
        .prepare_cached("SELECT segment_key FROM index_entries WHERE topic_id = ?1")?
        .query_map([id], |r| r.get::<_, String>(0))?
        .collect::<rusqlite::Result<BTreeSet<_>>>()?;
    for sql in [
        "DELETE FROM producer_batches WHERE topic_id = ?1",
        "DELETE FROM producer_state WHERE topic_id = ?1",
        "DELETE FROM index_entries WHERE topic_id = ?1",
        "DELETE FROM partitions WHERE topic_id = ?1",
        "DELETE FROM topic_configs WHERE topic_id = ?1",
        "DELETE FROM topics WHERE id = ?1",
    ] {
        tx.prepare_cached(sql)?.execute([id])?;
    }
    // As Kafka does, committed offsets of the deleted partitions go too, in
    // the same transaction, so a re-created topic never inherits them.
    tx.prepare_cached("DELETE FROM group_offsets WHERE topic = ?1")?
        .execute([&topic.name])?;
    // The segment rows stay (dead) until the janitor has deleted the objects
    // and forgets them: readers may still be mid-GET.
    Ok(mark_dead_if_unused(
        tx,
        keys.iter().map(String::as_str),
        now_ms(),
    )?)
}

#[async_trait]
impl TopicStore for SqliteStore {
    async fn create_topic(
        &self,
        name: &str,
        partitions: i32,
        configs: BTreeMap<String, String>,
    ) -> Result<TopicMeta> {
        if partitions < 1 {
            return Err(MetaError::InvalidPartitions {
                requested: partitions,
                current: 0,
            });
        }
        let name = name.to_owned();
        self.write("create_topic", move |tx| {
            let id = Uuid::new_v4();
            let inserted = tx
                .prepare_cached(
                    "INSERT INTO topics (id, name, partitions) VALUES (?1, ?2, ?3) \
                     ON CONFLICT (name) DO NOTHING",
                )?
                .execute(params![id.as_bytes(), name, partitions])?;
            if inserted == 0 {
                return Err(MetaError::TopicExists(name).into());
            }
            insert_partitions(tx, id, 0, partitions)?;
            let mut stmt = tx.prepare_cached(
                "INSERT INTO topic_configs (topic_id, key, value) VALUES (?1, ?2, ?3)",
            )?;
            for (k, v) in &configs {
                stmt.execute(params![id.as_bytes(), k, v])?;
            }
            Ok(TopicMeta {
                id,
                name,
                partitions,
                configs,
            })
        })
        .await
    }

    async fn delete_topic(&self, name: &str) -> Result<Vec<String>> {
        let name = name.to_owned();
        self.write("delete_topic", move |tx| delete_topic_tx(tx, &name))
            .await
    }

    async fn get_topic(&self, name: &str) -> Result<Option<TopicMeta>> {
        let name = name.to_owned();
        self.read("get_topic", move |tx| Ok(topic_by_name(tx, &name)?))
            .await
    }

    async fn get_topic_by_id(&self, id: Uuid) -> Result<Option<TopicMeta>> {
        self.read("get_topic_by_id", move |tx| Ok(topic_by_id(tx, id)?))
            .await
    }

    async fn list_topics(&self) -> Result<Vec<TopicMeta>> {
        self.read("list_topics", |tx| {
            let mut configs: HashMap<Uuid, BTreeMap<String, String>> = HashMap::new();
            let mut stmt = tx.prepare_cached("SELECT topic_id, key, value FROM topic_configs")?;
            let rows = stmt.query_map([], |r| {
                Ok((topic_id_from_row(r, 0)?, r.get::<_, String>(1)?, r.get(2)?))
            })?;
            for row in rows {
                let (id, k, v) = row?;
                configs.entry(id).or_default().insert(k, v);
            }
            let mut stmt =
                tx.prepare_cached("SELECT id, name, partitions FROM topics ORDER BY name")?;
            let topics = stmt
                .query_map([], |r| {
                    let id = topic_id_from_row(r, 0)?;
                    Ok(TopicMeta {
                        id,
                        name: r.get(1)?,
                        partitions: r.get(2)?,
                        configs: configs.remove(&id).unwrap_or_default(),
                    })
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(topics)
        })
        .await
    }

    async fn create_partitions(&self, name: &str, total: i32) -> Result<TopicMeta> {
        let name = name.to_owned();
        self.write("create_partitions", move |tx| {
            let mut topic = require_topic(tx, &name)?;
            if total <= topic.partitions {
                return Err(MetaError::InvalidPartitions {
                    requested: total,
                    current: topic.partitions,
                }
                .into());
            }
            insert_partitions(tx, topic.id, topic.partitions, total)?;
            tx.prepare_cached("UPDATE topics SET partitions = ?2 WHERE id = ?1")?
                .execute(params![topic.id.as_bytes(), total])?;
            topic.partitions = total;
            Ok(topic)
        })
        .await
    }

    async fn alter_topic_configs(
        &self,
        name: &str,
        changes: BTreeMap<String, Option<String>>,
    ) -> Result<TopicMeta> {
        let name = name.to_owned();
        self.write("alter_topic_configs", move |tx| {
            let mut topic = require_topic(tx, &name)?;
            let id = topic.id.as_bytes();
            for (k, v) in &changes {
                match v {
                    Some(v) => {
                        tx.prepare_cached(
                            "INSERT INTO topic_configs (topic_id, key, value) VALUES (?1, ?2, ?3) \
                             ON CONFLICT (topic_id, key) DO UPDATE SET value = excluded.value",
                        )?
                        .execute(params![id, k, v])?;
                    }
                    None => {
                        tx.prepare_cached(
                            "DELETE FROM topic_configs WHERE topic_id = ?1 AND key = ?2",
                        )?
                        .execute(params![id, k])?;
                    }
                }
            }
            topic.configs = load_configs(tx, topic.id)?;
            Ok(topic)
        })
        .await
    }
}

#[async_trait]
impl LogStore for SqliteStore {
    async fn commit_segment(&self, commit: &SegmentCommit) -> Result<Vec<BatchOutcome>> {
        validate_commit(commit)?;
        let commit = commit.clone();
        let clock = self.clock.clone();
        self.write("commit_segment", move |tx| {
            let outcomes = commit_segment_tx(tx, &commit)?;
            // Last, so that nothing in the transaction runs after the check.
            if let Some(deadline) = &commit.deadline {
                deadline.check(&commit.key, clock.now_ms())?;
            }
            Ok(outcomes)
        })
        .await
    }

    async fn abandon_segment(&self, key: &str, size: u64) -> Result<bool> {
        let key = key.to_owned();
        let size = i64::try_from(size)
            .map_err(|_| MetaError::InvalidArgument(format!("segment size too large key={key}")))?;
        let now = self.clock.now_ms();
        self.write("abandon_segment", move |tx| {
            let inserted = tx
                .prepare_cached(
                    "INSERT INTO segments (key, size, committed_at_ms, dead_since_ms) \
                     VALUES (?1, ?2, ?3, ?3) ON CONFLICT (key) DO NOTHING",
                )?
                .execute(params![key, size, now])?;
            Ok(inserted == 1)
        })
        .await
    }

    async fn segment_committed(&self, key: &str) -> Result<bool> {
        let key = key.to_owned();
        self.read("segment_committed", move |tx| {
            Ok(tx
                .prepare_cached("SELECT EXISTS (SELECT 1 FROM segments WHERE key = ?1)")?
                .query_row([&key], |r| r.get(0))?)
        })
        .await
    }

    async fn segment_entries(&self, key: &str) -> Result<Vec<IndexEntry>> {
        let key = key.to_owned();
        self.read("segment_entries", move |tx| {
            let entries = tx
                .prepare_cached(
                    "SELECT topic_id, partition_index, base_offset, last_offset, \
                     segment_key, byte_start, byte_len, max_timestamp \
                     FROM index_entries INDEXED BY index_entries_by_segment \
                     WHERE segment_key = ?1 \
                     ORDER BY topic_id, partition_index, base_offset",
                )?
                .query_map([&key], entry_from_row)?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(entries)
        })
        .await
    }

    async fn partition_offsets(&self, topic_id: Uuid, partition: i32) -> Result<PartitionOffsets> {
        self.read("partition_offsets", move |tx| {
            let p = require_partition(tx, topic_id, partition)?;
            Ok(PartitionOffsets {
                log_start_offset: p.log_start_offset,
                next_offset: p.next_offset,
            })
        })
        .await
    }

    async fn index_entries(
        &self,
        topic_id: Uuid,
        partition: i32,
        from_offset: i64,
        limit: usize,
    ) -> Result<Vec<IndexEntry>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.read("index_entries", move |tx| {
            let p = require_partition(tx, topic_id, partition)?;
            let from = from_offset.max(p.log_start_offset);
            let entries = tx
                .prepare_cached(SQL_ENTRIES_FROM)?
                .query_map(
                    params![topic_id.as_bytes(), partition, from, limit],
                    entry_from_row,
                )?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(entries)
        })
        .await
    }

    async fn entry_for_timestamp(
        &self,
        topic_id: Uuid,
        partition: i32,
        timestamp: i64,
    ) -> Result<Option<IndexEntry>> {
        self.read("entry_for_timestamp", move |tx| {
            let p = require_partition(tx, topic_id, partition)?;
            Ok(tx
                .prepare_cached(SQL_ENTRY_FOR_TIMESTAMP)?
                .query_row(
                    params![
                        topic_id.as_bytes(),
                        partition,
                        timestamp,
                        p.log_start_offset
                    ],
                    entry_from_row,
                )
                .optional()?)
        })
        .await
    }

    async fn advance_log_start(
        &self,
        topic_id: Uuid,
        partition: i32,
        offset: i64,
    ) -> Result<PartitionOffsets> {
        self.write("advance_log_start", move |tx| {
            let p = require_partition(tx, topic_id, partition)?;
            if offset < 0 || offset > p.next_offset {
                return Err(MetaError::OffsetOutOfRange {
                    offset,
                    log_start: p.log_start_offset,
                    next: p.next_offset,
                }
                .into());
            }
            let log_start_offset = p.log_start_offset.max(offset);
            if log_start_offset != p.log_start_offset {
                tx.prepare_cached(
                    "UPDATE partitions SET log_start_offset = ?3 \
                     WHERE topic_id = ?1 AND partition_index = ?2",
                )?
                .execute(params![
                    topic_id.as_bytes(),
                    partition,
                    log_start_offset
                ])?;
            }
            Ok(PartitionOffsets {
                log_start_offset,
                next_offset: p.next_offset,
            })
        })
        .await
    }

    async fn allocate_producer_id(&self) -> Result<(i64, i16)> {
        self.write("allocate_producer_id", |tx| {
            let id: i64 = tx
                .prepare_cached(
                    "UPDATE producer_ids SET next_id = next_id + 1 WHERE singleton = 0 \
                     RETURNING next_id - 1",
                )?
                .query_row([], |r| r.get(0))?;
            Ok((id, 0))
        })
        .await
    }

    async fn list_segments(&self) -> Result<Vec<String>> {
        self.read("list_segments", |tx| {
            Ok(tx
                .prepare_cached(
                    "SELECT key FROM segments WHERE dead_since_ms IS NULL ORDER BY key",
                )?
                .query_map([], |r| r.get(0))?
                .collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }
}

#[async_trait]
impl GroupStore for SqliteStore {
    async fn claim_group(&self, group: &str, node_id: i32) -> Result<GroupClaim> {
        let group = group.to_owned();
        self.write("claim_group", move |tx| {
            let epoch: i64 = tx.query_row(
                "INSERT INTO group_coordinators (group_id, node_id, epoch, last_active_ms) \
                 VALUES (?1, ?2, (SELECT floor FROM group_epoch_floor) + 1, ?3) \
                 ON CONFLICT (group_id) DO UPDATE SET node_id = excluded.node_id, \
                 epoch = group_coordinators.epoch + 1, last_active_ms = excluded.last_active_ms \
                 RETURNING epoch",
                params![group, node_id, now_ms()],
                |r| r.get(0),
            )?;
            Ok(GroupClaim { node_id, epoch })
        })
        .await
    }

    async fn save_group(&self, group: &str, claim: GroupClaim, state: &[u8]) -> Result<()> {
        let group = group.to_owned();
        let state = state.to_vec();
        self.write("save_group", move |tx| {
            let saved = tx.execute(
                "UPDATE group_coordinators SET state = ?4, \
                 last_active_ms = MAX(last_active_ms, ?5) \
                 WHERE group_id = ?1 AND node_id = ?2 AND epoch = ?3",
                params![group, claim.node_id, claim.epoch, state, now_ms()],
            )?;
            if saved != 1 {
                return Err(MetaError::Fenced {
                    group,
                    node_id: claim.node_id,
                    epoch: claim.epoch,
                }
                .into());
            }
            Ok(())
        })
        .await
    }

    async fn load_group(&self, group: &str) -> Result<Option<Vec<u8>>> {
        let group = group.to_owned();
        self.read("load_group", move |tx| {
            Ok(tx
                .prepare_cached("SELECT state FROM group_coordinators WHERE group_id = ?1")?
                .query_row([&group], |r| r.get::<_, Option<Vec<u8>>>(0))
                .optional()?
                .flatten())
        })
        .await
    }

    async fn touch_groups(&self, groups: &[String], now_ms: i64) -> Result<()> {
        if groups.is_empty() {
            return Ok(());
        }
        let groups = groups.to_vec();
        self.write("touch_groups", move |tx| {
            let mut stmt = tx.prepare_cached(
                "UPDATE group_coordinators SET last_active_ms = MAX(last_active_ms, ?2) \
                 WHERE group_id = ?1",
            )?;
            for g in &groups {
                stmt.execute(params![g, now_ms])?;
            }
            Ok(())
        })
        .await
    }

    async fn commit_offsets(
        &self,
        group: &str,
        claim: Option<GroupClaim>,
        offsets: &[CommittedOffset],
    ) -> Result<()> {
        let group = group.to_owned();
        let offsets = offsets.to_vec();
        self.write("commit_offsets", move |tx| {
            if let Some(claim) = claim {
                let current: Option<(i32, i64)> = tx
                    .query_row(
                        "SELECT node_id, epoch FROM group_coordinators WHERE group_id = ?1",
                        params![group],
                        |r| Ok((r.get(0)?, r.get(1)?)),
                    )
                    .optional()?;
                if current != Some((claim.node_id, claim.epoch)) {
                    return Err(MetaError::Fenced {
                        group,
                        node_id: claim.node_id,
                        epoch: claim.epoch,
                    }
                    .into());
                }
            }
            let mut stmt = tx.prepare_cached(
                "INSERT INTO group_offsets (group_id, topic, partition_index, committed_offset, \
                 leader_epoch, metadata, commit_timestamp_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) \
                 ON CONFLICT (group_id, topic, partition_index) DO UPDATE SET \
                 committed_offset = excluded.committed_offset, \
                 leader_epoch = excluded.leader_epoch, metadata = excluded.metadata, \
                 commit_timestamp_ms = excluded.commit_timestamp_ms",
            )?;
            for o in &offsets {
                stmt.execute(params![
                    group,
                    o.topic,
                    o.partition,
                    o.offset,
                    o.leader_epoch,
                    o.metadata,
                    o.commit_timestamp_ms
                ])?;
            }
            Ok(())
        })
        .await
    }

    async fn fetch_offsets(
        &self,
        group: &str,
        topics: Option<&[String]>,
    ) -> Result<Vec<CommittedOffset>> {
        let group = group.to_owned();
        let topics = topics.map(|t| {
            let mut t = t.to_vec();
            t.sort();
            t.dedup();
            t
        });
        self.read("fetch_offsets", move |tx| {
            let row = |r: &rusqlite::Row<'_>| {
                Ok(CommittedOffset {
                    topic: r.get(0)?,
                    partition: r.get(1)?,
                    offset: r.get(2)?,
                    leader_epoch: r.get(3)?,
                    metadata: r.get(4)?,
                    commit_timestamp_ms: r.get(5)?,
                })
            };
            const COLUMNS: &str = "SELECT topic, partition_index, committed_offset, \
                                   leader_epoch, metadata, commit_timestamp_ms FROM group_offsets";
            let mut out = Vec::new();
            match topics {
                None => {
                    let mut stmt = tx.prepare_cached(&format!(
                        "{COLUMNS} WHERE group_id = ?1 ORDER BY topic, partition_index"
                    ))?;
                    for o in stmt.query_map([&group], row)? {
                        out.push(o?);
                    }
                }
                Some(topics) => {
                    let mut stmt = tx.prepare_cached(&format!(
                        "{COLUMNS} WHERE group_id = ?1 AND topic = ?2 ORDER BY partition_index"
                    ))?;
                    for topic in &topics {
                        for o in stmt.query_map(params![group, topic], row)? {
                            out.push(o?);
                        }
                    }
                }
            }
            Ok(out)
        })
        .await
    }

    async fn list_groups(&self) -> Result<Vec<String>> {
        self.read("list_groups", |tx| {
            Ok(tx
                .prepare_cached("SELECT DISTINCT group_id FROM group_offsets ORDER BY group_id")?
                .query_map([], |r| r.get(0))?
                .collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn delete_group(&self, group: &str) -> Result<()> {
        let group = group.to_owned();
        self.write("delete_group", move |tx| {
            tx.prepare_cached("DELETE FROM group_offsets WHERE group_id = ?1")?
                .execute([&group])?;
            tx.prepare_cached("UPDATE group_coordinators SET state = NULL WHERE group_id = ?1")?
                .execute([&group])?;
            Ok(())
        })
        .await
    }

    async fn delete_offsets(&self, group: &str, partitions: &[(String, i32)]) -> Result<()> {
        let group = group.to_owned();
        let partitions = partitions.to_vec();
        self.write("delete_offsets", move |tx| {
            let mut stmt = tx.prepare_cached(
                "DELETE FROM group_offsets \
                 WHERE group_id = ?1 AND topic = ?2 AND partition_index = ?3",
            )?;
            for (topic, partition) in &partitions {
                stmt.execute(params![group, topic, partition])?;
            }
            Ok(())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conformance;
    use crate::MetadataStore;
    use crate::PendingBatch;

    #[tokio::test]
    async fn conformance_in_memory() {
        conformance::run_all(|| async {
            Arc::new(SqliteStore::open_in_memory().await.expect("open in memory"))
                as Arc<dyn MetadataStore>
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn conformance_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let n = Arc::new(AtomicUsize::new(0));
        let root = dir.path().to_path_buf();
        conformance::run_all(move || {
            let path = root.join(format!(
                "store-{}/meta.db",
                n.fetch_add(1, Ordering::Relaxed)
            ));
            async move {
                Arc::new(SqliteStore::open(&path).await.expect("open file"))
                    as Arc<dyn MetadataStore>
            }
        })
        .await;
    }

    fn batch(topic_id: Uuid, partition: i32, byte_start: u64, count: i64) -> PendingBatch {
        PendingBatch {
            topic_id,
            partition,
            byte_start,
            byte_len: 100,
            offset_count: count,
            max_timestamp: 1_000,
            producer: None,
        }
    }

    #[tokio::test]
    async fn reopen_keeps_everything() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("nested/dir/meta.db");
        let topic = {
            let store = SqliteStore::open(&path).await.expect("open");
            let topic = store
                .create_topic(
                    "t",
                    2,
                    BTreeMap::from([("retention.ms".to_owned(), "1000".to_owned())]),
                )
                .await
                .expect("create");
            let outcomes = store
                .commit_segment(&SegmentCommit {
                    key: "seg-1".into(),
                    size: 200,
                    batches: vec![batch(topic.id, 0, 0, 3), batch(topic.id, 1, 100, 4)],
                    deadline: None,
                })
                .await
                .expect("commit");
            assert_eq!(outcomes[1], BatchOutcome::Appended { base_offset: 0 });
            store
                .commit_offsets(
                    "g",
                    None,
                    &[CommittedOffset {
                        topic: "t".into(),
                        partition: 0,
                        offset: 2,
                        leader_epoch: -1,
                        metadata: Some("m".into()),
                        commit_timestamp_ms: 7,
                    }],
                )
                .await
                .expect("commit offsets");
            store
                .advance_log_start(topic.id, 1, 1)
                .await
                .expect("advance");
            let (pid, _) = store.allocate_producer_id().await.expect("pid");
            assert_eq!(pid, 0);
            topic
        };

        let store = SqliteStore::open_url(&format!("sqlite://{}", path.display()))
            .await
            .expect("reopen");
        assert_eq!(
            store.get_topic("t").await.expect("get"),
            Some(topic.clone())
        );
        assert_eq!(
            store.partition_offsets(topic.id, 0).await.expect("p0"),
            PartitionOffsets {
                log_start_offset: 0,
                next_offset: 3
            }
        );
        assert_eq!(
            store.partition_offsets(topic.id, 1).await.expect("p1"),
            PartitionOffsets {
                log_start_offset: 1,
                next_offset: 4
            }
        );
        let entries = store
            .index_entries(topic.id, 0, 0, 10)
            .await
            .expect("entries");
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].segment_key, "seg-1");
        assert!(store.segment_committed("seg-1").await.expect("committed"));
        let offsets = store.fetch_offsets("g", None).await.expect("fetch");
        assert_eq!(offsets.len(), 1);
        assert_eq!(offsets[0].metadata.as_deref(), Some("m"));
        let (pid, _) = store.allocate_producer_id().await.expect("pid");
        assert_eq!(pid, 1, "producer ids continue after reopen");
        let version: i64 = lock(&store.inner.writer)
            .query_row("SELECT version FROM schema_version", [], |r| r.get(0))
            .expect("version");
        assert_eq!(version, i64::try_from(MIGRATIONS.len()).expect("fits"));
    }

    #[tokio::test]
    async fn file_uses_wal_and_full_sync() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SqliteStore::open(&dir.path().join("m.db"))
            .await
            .expect("open");
        let conn = lock(&store.inner.writer);
        let mode: String = conn
            .pragma_query_value(None, "journal_mode", |r| r.get(0))
            .expect("journal_mode");
        assert_eq!(mode, "wal");
        let sync: i64 = conn
            .pragma_query_value(None, "synchronous", |r| r.get(0))
            .expect("synchronous");
        assert_eq!(sync, 2, "synchronous=FULL");
        let fk: i64 = conn
            .pragma_query_value(None, "foreign_keys", |r| r.get(0))
            .expect("foreign_keys");
        assert_eq!(fk, 1);
    }

    #[test]
    fn url_parsing() {
        assert_eq!(parse_url("sqlite::memory:").expect("memory"), None);
        assert_eq!(parse_url("sqlite://:memory:").expect("memory"), None);
        assert_eq!(
            parse_url("sqlite://data/meta.db").expect("relative"),
            Some(PathBuf::from("data/meta.db"))
        );
        assert_eq!(
            parse_url("sqlite:///var/lib/t/meta.db?mode=rwc").expect("absolute"),
            Some(PathBuf::from("/var/lib/t/meta.db"))
        );
        assert!(matches!(
            parse_url("postgres://x"),
            Err(MetaError::InvalidArgument(_))
        ));
        assert!(matches!(
            parse_url("sqlite://"),
            Err(MetaError::InvalidArgument(_))
        ));
    }

    #[tokio::test]
    async fn open_url_memory() {
        let store = SqliteStore::open_url("sqlite::memory:")
            .await
            .expect("open");
        assert!(store.list_topics().await.expect("list").is_empty());
    }

    /// Every lookup on the hot paths must seek an index, never scan or sort.
    #[tokio::test]
    async fn hot_queries_use_indexes() {
        let store = SqliteStore::open_in_memory().await.expect("open");
        let conn = lock(&store.inner.writer);
        for sql in [
            SQL_ENTRIES_FROM,
            SQL_ENTRY_FOR_TIMESTAMP,
            "SELECT log_start_offset, next_offset, max_timestamp FROM partitions \
             WHERE topic_id = ?1 AND partition_index = ?2",
            "SELECT base_sequence, last_sequence, base_offset FROM producer_batches \
             WHERE topic_id = ?1 AND partition_index = ?2 AND producer_id = ?3 \
             ORDER BY base_offset DESC LIMIT ?4",
            "SELECT EXISTS (SELECT 1 FROM index_entries WHERE segment_key = ?1)",
            "SELECT segment_key FROM index_entries WHERE topic_id = ?1",
            crate::sqlite_maintenance::SQL_DEAD_SEGMENTS,
            "SELECT key FROM segments WHERE key IN (?1, ?2)",
            "SELECT running_max_timestamp FROM index_entries \
             WHERE topic_id = ?1 AND partition_index = ?2 AND base_offset < ?3 \
             ORDER BY base_offset DESC LIMIT 1",
        ] {
            let mut stmt = conn
                .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
                .expect("explain");
            let nil = Uuid::nil();
            let args: [&dyn rusqlite::ToSql; 4] = [nil.as_bytes(), &0, &0, &10];
            let n = stmt.parameter_count();
            let details: Vec<String> = stmt
                .query_map(&args[..n], |r| r.get::<_, String>(3))
                .expect("query plan")
                .collect::<rusqlite::Result<_>>()
                .expect("rows");
            for d in &details {
                assert!(
                    (!d.starts_with("SCAN") || d == "SCAN CONSTANT ROW")
                        && !d.contains("TEMP B-TREE"),
                    "query plan {details:?} for {sql}"
                );
            }
        }
    }

    /// A panic inside a call poisons the mutex mid-transaction; later calls
    /// must still work and the half-done transaction must be gone.
    #[tokio::test]
    async fn panic_in_call_does_not_break_later_calls() {
        let store = SqliteStore::open_in_memory().await.expect("open");
        let inner = Arc::clone(&store.inner);
        let res = tokio::task::spawn_blocking(move || {
            let conn = inner.writer.lock().expect("first lock");
            conn.execute_batch("BEGIN IMMEDIATE").expect("begin");
            conn.execute(
                "INSERT INTO topics (id, name, partitions) VALUES (?1, 'ghost', 1)",
                [Uuid::new_v4().as_bytes()],
            )
            .expect("insert");
            panic!("handler bug");
        })
        .await;
        assert!(res.is_err());
        assert!(store.inner.writer.is_poisoned());

        assert_eq!(store.get_topic("ghost").await.expect("get"), None);
        store
            .create_topic("t", 1, BTreeMap::new())
            .await
            .expect("create after panic");
        assert_eq!(store.list_topics().await.expect("list").len(), 1);
    }

    /// A failing commit leaves nothing behind (the segment row is rolled back
    /// together with the rest).
    #[tokio::test]
    async fn invalid_commit_changes_nothing() {
        let store = SqliteStore::open_in_memory().await.expect("open");
        let topic = store
            .create_topic("t", 1, BTreeMap::new())
            .await
            .expect("create");
        let err = store
            .commit_segment(&SegmentCommit {
                key: "bad".into(),
                size: 100,
                batches: vec![batch(topic.id, 0, 0, 0)],
                deadline: None,
            })
            .await
            .expect_err("zero offset count");
        assert!(matches!(err, MetaError::InvalidArgument(_)));
        assert!(!err.is_retryable());
        assert!(!store.segment_committed("bad").await.expect("committed"));
    }
}
