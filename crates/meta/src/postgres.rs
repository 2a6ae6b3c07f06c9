//! PostgreSQL backend (metadata shared by many brokers).
//!
//! [`PostgresStore`] implements [`crate::MetadataStore`] over a pool of
//! `tokio-postgres` connections (`deadpool-postgres`), with the same
//! semantics as [`crate::SqliteStore`] (both pass [`crate::conformance`]).
//!
//! Contract and mechanics:
//! - URL: `postgres://user:pass@host:port/db` (or `postgresql://`), with the
//!   `tokio-postgres` query options (`connect_timeout`, ...), libpq's
//!   `sslmode` and `sslrootcert` (see `postgres_tls`), plus `schema=NAME`:
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
//!   brokers' parked fetches (`postgres_listen`) where the server has it (a
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

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use deadpool_postgres::{
    GenericClient, Manager, ManagerConfig, Object, Pool, PoolError, RecyclingMethod, Runtime,
    Transaction,
};
use thiserror::Error;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use tokio_postgres::{IsolationLevel, Row};
use tokio_postgres_rustls::MakeRustlsConnect;
use tracing::debug;
use uuid::Uuid;

use crate::plan::EntryPlanner;
use crate::postgres_listen::COMMIT_CHANNEL;
use crate::postgres_maintenance::mark_dead_if_unused;
use crate::postgres_tls::{self, TlsMode};
use crate::sqlite::{next_sequence, validate_commit, PRODUCER_BATCH_MEMORY};
use crate::{
    BatchOutcome, BatchRejection, CommittedOffset, GroupClaim, GroupStore, IndexEntry, LogStore,
    MetaError, PartitionOffsets, ProducerBatch, Result, SegmentCommit, TopicMeta, TopicStore,
};

/// Connections per store (per broker).
const POOL_SIZE: usize = 16;

/// Connect timeout when the URL does not set `connect_timeout`.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a call waits for a free pooled connection.
const POOL_WAIT_TIMEOUT: Duration = Duration::from_secs(30);

/// Retries of a transaction the server rolled back for a serialization
/// failure or a deadlock.
const MAX_CONFLICT_RETRIES: u32 = 8;

/// Schema migrations, applied in order. Entry `i` brings the schema from
/// version `i` to version `i + 1`. Never edit an entry once released; append.
pub(crate) const MIGRATIONS: &[&str] = &[
    // v1: initial schema (the SQLite schema at its v2, with Postgres types).
    r#"
CREATE TABLE topics (
    id          UUID    NOT NULL PRIMARY KEY,
    name        TEXT    COLLATE "C" NOT NULL UNIQUE,
    partitions  INTEGER NOT NULL
);

CREATE TABLE topic_configs (
    topic_id  UUID NOT NULL REFERENCES topics (id) ON DELETE CASCADE,
    key       TEXT COLLATE "C" NOT NULL,
    value     TEXT NOT NULL,
    PRIMARY KEY (topic_id, key)
);

CREATE TABLE partitions (
    topic_id          UUID    NOT NULL REFERENCES topics (id) ON DELETE CASCADE,
    partition_index   INTEGER NOT NULL,
    log_start_offset  BIGINT  NOT NULL,
    next_offset       BIGINT  NOT NULL,
    -- max timestamp over every batch ever committed to the partition
    max_timestamp     BIGINT  NOT NULL,
    PRIMARY KEY (topic_id, partition_index)
);

-- dead_since_ms: NULL while an index entry points into the segment, else
-- when its last entry went away (the janitor deletes the object later).
CREATE TABLE segments (
    key              TEXT   COLLATE "C" NOT NULL PRIMARY KEY,
    size             BIGINT NOT NULL,
    committed_at_ms  BIGINT NOT NULL,
    dead_since_ms    BIGINT NULL
);

CREATE INDEX segments_by_dead
    ON segments (dead_since_ms, key) WHERE dead_since_ms IS NOT NULL;

CREATE TABLE index_entries (
    topic_id               UUID    NOT NULL,
    partition_index        INTEGER NOT NULL,
    base_offset            BIGINT  NOT NULL,
    last_offset            BIGINT  NOT NULL,
    segment_key            TEXT    COLLATE "C" NOT NULL REFERENCES segments (key),
    byte_start             BIGINT  NOT NULL,
    byte_len               BIGINT  NOT NULL,
    max_timestamp          BIGINT  NOT NULL,
    -- max timestamp of the partition up to and including this entry
    running_max_timestamp  BIGINT  NOT NULL,
    PRIMARY KEY (topic_id, partition_index, base_offset),
    FOREIGN KEY (topic_id, partition_index)
        REFERENCES partitions (topic_id, partition_index) ON DELETE CASCADE
);

CREATE INDEX index_entries_by_last
    ON index_entries (topic_id, partition_index, last_offset);
CREATE INDEX index_entries_by_time
    ON index_entries (topic_id, partition_index, running_max_timestamp, base_offset);
CREATE INDEX index_entries_by_segment
    ON index_entries (segment_key);

CREATE TABLE producer_ids (
    singleton  INTEGER NOT NULL PRIMARY KEY CHECK (singleton = 0),
    next_id    BIGINT  NOT NULL
);
INSERT INTO producer_ids (singleton, next_id) VALUES (0, 0);

CREATE TABLE producer_state (
    topic_id         UUID     NOT NULL,
    partition_index  INTEGER  NOT NULL,
    producer_id      BIGINT   NOT NULL,
    epoch            SMALLINT NOT NULL,
    PRIMARY KEY (topic_id, partition_index, producer_id),
    FOREIGN KEY (topic_id, partition_index)
        REFERENCES partitions (topic_id, partition_index) ON DELETE CASCADE
);

-- the last few accepted batches per producer, for duplicate detection
CREATE TABLE producer_batches (
    topic_id         UUID    NOT NULL,
    partition_index  INTEGER NOT NULL,
    producer_id      BIGINT  NOT NULL,
    base_offset      BIGINT  NOT NULL,
    base_sequence    INTEGER NOT NULL,
    last_sequence    INTEGER NOT NULL,
    PRIMARY KEY (topic_id, partition_index, producer_id, base_offset),
    FOREIGN KEY (topic_id, partition_index, producer_id)
        REFERENCES producer_state (topic_id, partition_index, producer_id) ON DELETE CASCADE
);

CREATE TABLE group_offsets (
    group_id             TEXT    COLLATE "C" NOT NULL,
    topic                TEXT    COLLATE "C" NOT NULL,
    partition_index      INTEGER NOT NULL,
    committed_offset     BIGINT  NOT NULL,
    leader_epoch         INTEGER NOT NULL,
    metadata             TEXT    NULL,
    commit_timestamp_ms  BIGINT  NOT NULL,
    PRIMARY KEY (group_id, topic, partition_index)
);
"#,
    // v2: broker registry (see `postgres_registry`). A broker is live while
    // its last heartbeat is within the TTL the caller passes.
    r#"
CREATE TABLE brokers (
    node_id       INTEGER NOT NULL PRIMARY KEY,
    host          TEXT    NOT NULL,
    port          INTEGER NOT NULL,
    rack          TEXT    NULL,
    last_seen_ms  BIGINT  NOT NULL
);
"#,
    // v3: group coordinator claims. `epoch` only grows (rows are never
    // deleted, not even with the group's offsets), so an old claim can never
    // become valid again.
    r#"
CREATE TABLE group_coordinators (
    group_id  TEXT    COLLATE "C" NOT NULL PRIMARY KEY,
    node_id   INTEGER NOT NULL,
    epoch     BIGINT  NOT NULL
);
"#,
    // v4: leases (one broker at a time runs background maintenance).
    r#"
CREATE TABLE leases (
    name        TEXT    COLLATE "C" NOT NULL PRIMARY KEY,
    holder      TEXT    NOT NULL,
    expires_ms  BIGINT  NOT NULL
);
"#,
    // v5: when each producer last wrote to each partition, so idle producer
    // state expires (`producer.id.expiration.ms`). Existing producers count
    // from the upgrade.
    r#"
ALTER TABLE producer_state ADD COLUMN last_write_ms BIGINT NOT NULL DEFAULT 0;
UPDATE producer_state SET last_write_ms = (extract(epoch FROM now()) * 1000)::bigint;
CREATE INDEX producer_state_by_last_write ON producer_state (last_write_ms);
"#,
    // v6: group expiry (see the SQLite schema's v7).
    r#"
ALTER TABLE group_coordinators ADD COLUMN last_active_ms BIGINT NOT NULL DEFAULT 0;
UPDATE group_coordinators SET last_active_ms = (extract(epoch FROM now()) * 1000)::bigint;
CREATE TABLE group_epoch_floor (
    singleton  INTEGER NOT NULL PRIMARY KEY CHECK (singleton = 0),
    floor      BIGINT  NOT NULL
);
INSERT INTO group_epoch_floor (singleton, floor) VALUES (0, 0);
"#,
    // v7: saved group membership (see the SQLite schema's v8).
    r#"
ALTER TABLE group_coordinators ADD COLUMN state BYTEA NULL;
"#,
];

/// Columns of an [`IndexEntry`], in the order [`entry_from_row`] reads them.
pub(crate) const ENTRY_COLUMNS: &str = "topic_id, partition_index, base_offset, last_offset, \
     segment_key, byte_start, byte_len, max_timestamp";

/// Index entries from an offset: a range seek on `index_entries_by_last`.
/// Entries of one partition never overlap, so `last_offset` order is offset
/// order.
pub(crate) const SQL_ENTRIES_FROM: &str = "SELECT topic_id, partition_index, base_offset, \
     last_offset, segment_key, byte_start, byte_len, max_timestamp \
     FROM index_entries \
     WHERE topic_id = $1 AND partition_index = $2 AND last_offset >= $3 \
     ORDER BY last_offset LIMIT $4";

/// First entry (offset order) at or after the log start whose max timestamp
/// reaches `$3` (see the SQLite backend: `running_max_timestamp` is monotone
/// in offset order, so this is a range seek on `index_entries_by_time`).
const SQL_ENTRY_FOR_TIMESTAMP: &str = "SELECT topic_id, partition_index, base_offset, \
     last_offset, segment_key, byte_start, byte_len, max_timestamp \
     FROM index_entries \
     WHERE topic_id = $1 AND partition_index = $2 AND running_max_timestamp >= $3 \
       AND max_timestamp >= $3 AND last_offset >= $4 \
     ORDER BY running_max_timestamp, base_offset LIMIT 1";

/// Lock the partition rows a commit touches, in one deterministic order
/// (`ORDER BY` is applied before the row locks are taken).
const SQL_LOCK_PARTITIONS: &str = "SELECT p.topic_id, p.partition_index, p.log_start_offset, \
     p.next_offset, p.max_timestamp FROM partitions p \
     WHERE (p.topic_id, p.partition_index) IN \
         (SELECT k.t, k.i FROM unnest($1::UUID[], $2::INTEGER[]) AS k (t, i)) \
     ORDER BY p.topic_id, p.partition_index \
     FOR UPDATE OF p";

/// Metadata store over PostgreSQL. Cheap to clone (shares the pool).
#[derive(Clone)]
pub struct PostgresStore {
    pool: Pool,
    /// Where the database lives, for logs and `Debug` (never the password).
    location: String,
    /// How to open the dedicated `LISTEN` connection.
    pub(crate) listen_config: tokio_postgres::Config,
    pub(crate) tls: MakeRustlsConnect,
    /// This store's name in commit notifications, so it skips its own.
    pub(crate) instance: String,
    /// Whether the server takes `pg_notify` (probed at connect).
    pub(crate) notify: bool,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore")
            .field("location", &self.location)
            .field("pool", &self.pool.status())
            .finish()
    }
}

/// A value read back from the database that the store never writes.
#[derive(Debug, Error)]
pub(crate) enum CorruptValue {
    #[error("negative value in unsigned column column={0}")]
    Negative(&'static str),
}

/// Failure inside a call: a store-level error, or a database / pool failure
/// that becomes [`MetaError::Backend`] with the call's `op`.
pub(crate) enum Fail {
    Meta(MetaError),
    Pg(tokio_postgres::Error),
    Pool(PoolError),
    Corrupt(CorruptValue),
}

impl From<tokio_postgres::Error> for Fail {
    fn from(e: tokio_postgres::Error) -> Self {
        Fail::Pg(e)
    }
}

impl From<PoolError> for Fail {
    fn from(e: PoolError) -> Self {
        Fail::Pool(e)
    }
}

impl From<MetaError> for Fail {
    fn from(e: MetaError) -> Self {
        Fail::Meta(e)
    }
}

impl From<CorruptValue> for Fail {
    fn from(e: CorruptValue) -> Self {
        Fail::Corrupt(e)
    }
}

pub(crate) type Step<T> = std::result::Result<T, Fail>;

impl Fail {
    fn into_meta(self, op: &'static str) -> MetaError {
        match self {
            Fail::Meta(e) => e,
            Fail::Pg(e) => MetaError::Backend {
                op,
                source: Box::new(e),
            },
            Fail::Pool(e) => MetaError::Backend {
                op,
                source: Box::new(e),
            },
            Fail::Corrupt(e) => MetaError::Backend {
                op,
                source: Box::new(e),
            },
        }
    }

    fn sql_state(&self) -> Option<&SqlState> {
        match self {
            Fail::Pg(e) => e.code(),
            Fail::Pool(PoolError::Backend(e)) => e.code(),
            _ => None,
        }
    }

    /// The server rolled the transaction back because it conflicted with a
    /// concurrent one; running it again may succeed.
    fn is_conflict(&self) -> bool {
        self.sql_state().is_some_and(|c| {
            *c == SqlState::T_R_SERIALIZATION_FAILURE || *c == SqlState::T_R_DEADLOCK_DETECTED
        })
    }

    /// Two sessions raced to create the same catalog object (`CREATE ... IF
    /// NOT EXISTS` is not atomic against a concurrent create).
    fn is_create_race(&self) -> bool {
        self.sql_state().is_some_and(|c| {
            *c == SqlState::UNIQUE_VIOLATION
                || *c == SqlState::DUPLICATE_TABLE
                || *c == SqlState::DUPLICATE_SCHEMA
                || *c == SqlState::DUPLICATE_OBJECT
        })
    }
}

/// The parts of a store URL.
#[derive(Debug, PartialEq, Eq)]
struct ParsedUrl {
    /// The URL without the options this module handles itself.
    libpq_url: String,
    schema: Option<String>,
    tls: TlsMode,
    root_cert: Option<String>,
    /// Server-side bounds set on every session (`-c NAME=ms`).
    timeouts: Vec<(&'static str, u64)>,
    /// Whether the URL set TCP keepalive options itself.
    keepalives_given: bool,
}

/// Server-side session timeouts (ms), each settable as a query option of
/// the metadata URL. Without them one broker frozen mid-commit (VM pause,
/// SIGSTOP, network partition) would hold its partitions' row locks until
/// TCP keepalive noticed (about 2 h), and since segments mix partitions,
/// every produce on every broker would stall. `statement_timeout` stays
/// below the segment writer's 15 s per-call timeout, so a commit the broker
/// gave up on has been ended by the server too.
pub const SESSION_TIMEOUTS: [(&str, u64); 3] = [
    ("statement_timeout", 10_000),
    ("lock_timeout", 5_000),
    ("idle_in_transaction_session_timeout", 10_000),
];

/// TCP keepalive (unless the URL sets `keepalives_idle`): a silent server is
/// noticed in about a minute, not two hours.
const KEEPALIVES_IDLE: Duration = Duration::from_secs(30);

/// Split `schema=NAME`, `sslmode` and `sslrootcert` off the query string;
/// the rest goes to `tokio-postgres` unchanged.
fn parse_url(url: &str) -> Result<ParsedUrl> {
    let invalid = |what: &str| MetaError::InvalidArgument(format!("postgres url {what}"));
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return Err(invalid("must start with postgres:// or postgresql://"));
    }
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, query),
        None => (url, ""),
    };
    let mut schema = None;
    let mut tls = TlsMode::default();
    let mut root_cert = None;
    let mut rest = Vec::new();
    let mut timeouts: Vec<(&'static str, u64)> = SESSION_TIMEOUTS.to_vec();
    let mut keepalives_given = false;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        if let Some((name, value)) = pair.split_once('=') {
            if let Some(slot) = timeouts.iter_mut().find(|(n, _)| *n == name) {
                slot.1 = value.parse().map_err(|_| {
                    invalid(&format!(
                        "{name} must be a number of milliseconds (0 = none)"
                    ))
                })?;
                continue;
            }
            keepalives_given |= name.starts_with("keepalives");
        }
        match pair.split_once('=') {
            Some(("sslmode", mode)) => tls = TlsMode::parse(mode)?,
            Some(("sslrootcert", path)) if !path.is_empty() => root_cert = Some(path.to_owned()),
            Some(("schema", name)) => {
                let valid = name
                    .chars()
                    .next()
                    .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
                    && name.len() <= 63
                    && name
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
                if !valid {
                    return Err(invalid(
                        "schema must be 1-63 of [a-z0-9_], not starting with a digit",
                    ));
                }
                schema = Some(name.to_owned());
            }
            _ => rest.push(pair),
        }
    }
    let libpq_url = if rest.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", rest.join("&"))
    };
    Ok(ParsedUrl {
        libpq_url,
        schema,
        tls,
        root_cert,
        timeouts,
        keepalives_given,
    })
}

/// The parsed URL and the `tokio-postgres` settings it names, before the
/// defaults and TLS [`PostgresStore::connect`] adds.
fn config_from_url(url: &str) -> Result<(ParsedUrl, tokio_postgres::Config)> {
    let parsed = parse_url(url)?;
    let config = tokio_postgres::Config::from_str(&parsed.libpq_url)
        .map_err(|e| MetaError::InvalidArgument(format!("postgres url options error={e}")))?;
    Ok((parsed, config))
}

/// Check a PostgreSQL URL without connecting.
pub(crate) fn check_url(url: &str) -> Result<()> {
    config_from_url(url).map(|_| ())
}

impl PostgresStore {
    /// Connect to `url` (see the module docs), create the schema if asked
    /// and bring it up to date. Fails with [`MetaError::Backend`] if the
    /// server cannot be reached, [`MetaError::InvalidArgument`] for a
    /// malformed URL.
    pub async fn connect(url: &str) -> Result<Self> {
        let (parsed, mut config) = config_from_url(url)?;
        let connect_timeout = match config.get_connect_timeout() {
            Some(t) => *t,
            None => {
                config.connect_timeout(CONNECT_TIMEOUT);
                CONNECT_TIMEOUT
            }
        };
        if config.get_application_name().is_none() {
            config.application_name("tributary");
        }
        config.ssl_mode(parsed.tls.ssl_mode());
        let tls = postgres_tls::connector(parsed.tls, parsed.root_cert.as_deref())?;
        let mut options: Vec<String> = config
            .get_options()
            .filter(|o| !o.is_empty())
            .map(str::to_owned)
            .into_iter()
            .collect();
        if let Some(schema) = &parsed.schema {
            options.push(format!("-c search_path={schema}"));
        }
        for (name, ms) in &parsed.timeouts {
            options.push(format!("-c {name}={ms}"));
        }
        config.options(options.join(" "));
        if !parsed.keepalives_given {
            config.keepalives(true).keepalives_idle(KEEPALIVES_IDLE);
        }
        let location = format!(
            "hosts={:?} ports={:?} db={} schema={}",
            config.get_hosts(),
            config.get_ports(),
            config.get_dbname().unwrap_or("-"),
            parsed.schema.as_deref().unwrap_or("-"),
        );
        let listen_config = config.clone();
        let manager = Manager::from_config(
            config,
            tls.clone(),
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(POOL_WAIT_TIMEOUT))
            .create_timeout(Some(connect_timeout + CONNECT_TIMEOUT))
            .recycle_timeout(Some(CONNECT_TIMEOUT))
            .build()
            .map_err(|e| MetaError::Backend {
                op: "connect",
                source: Box::new(e),
            })?;
        let mut store = PostgresStore {
            pool,
            location,
            listen_config,
            tls,
            instance: Uuid::new_v4().to_string(),
            notify: false,
        };
        if let Some(schema) = &parsed.schema {
            store.create_schema(schema).await?;
        }
        store.migrate().await?;
        store.notify = store.probe_notify().await?;
        debug!(location = %store.location, "postgres metadata store connected");
        Ok(store)
    }

    /// Whether the server takes `pg_notify`; `Err` only when it cannot be
    /// asked at all.
    async fn probe_notify(&self) -> Result<bool> {
        let client = self.client().await.map_err(|f| f.into_meta("connect"))?;
        match client
            .execute("SELECT pg_notify($1, '')", &[&COMMIT_CHANNEL])
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if e.as_db_error().is_some() => {
                tracing::info!(error = %e, "database has no NOTIFY; brokers will poll for each other's commits");
                Ok(false)
            }
            Err(e) => Err(Fail::from(e).into_meta("connect")),
        }
    }

    /// The first column of a parameterless query, as text.
    async fn text_column(&self, op: &'static str, sql: &'static str) -> Result<Vec<String>> {
        self.run(op, move || async move {
            let client = self.client().await?;
            query(&client, sql, &[])
                .await?
                .iter()
                .map(|r| Ok(r.try_get(0)?))
                .collect()
        })
        .await
    }

    pub(crate) async fn client(&self) -> Step<Object> {
        Ok(self.pool.get().await?)
    }

    /// Run `f` (one transaction, or one statement) until it does not fail
    /// with a conflict, at most [`MAX_CONFLICT_RETRIES`] more times.
    pub(crate) async fn run<T, F, Fut>(&self, op: &'static str, mut f: F) -> Result<T>
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

    async fn create_schema(&self, schema: &str) -> Result<()> {
        // `schema` is validated to [a-z0-9_], so quoting it is enough.
        let sql = format!("CREATE SCHEMA IF NOT EXISTS \"{schema}\"");
        let mut attempt = 0u32;
        loop {
            let res: Step<()> = async {
                self.client().await?.batch_execute(&sql).await?;
                Ok(())
            }
            .await;
            match res {
                Ok(()) => return Ok(()),
                Err(f) if f.is_create_race() && attempt < MAX_CONFLICT_RETRIES => {
                    attempt += 1;
                    tokio::time::sleep(backoff(attempt)).await;
                }
                Err(f) => return Err(f.into_meta("create_schema")),
            }
        }
    }

    /// Apply the migrations this database has not seen yet, holding the
    /// `schema_version` row lock so concurrent brokers migrate one at a time.
    async fn migrate(&self) -> Result<()> {
        let mut attempt = 0u32;
        loop {
            let res: Step<()> = async {
                self.client()
                    .await?
                    .batch_execute(
                        "CREATE TABLE IF NOT EXISTS schema_version ( \
                             singleton INTEGER NOT NULL PRIMARY KEY CHECK (singleton = 0), \
                             version BIGINT NOT NULL); \
                         INSERT INTO schema_version (singleton, version) VALUES (0, 0) \
                             ON CONFLICT (singleton) DO NOTHING",
                    )
                    .await?;
                Ok(())
            }
            .await;
            match res {
                Ok(()) => break,
                Err(f) if f.is_create_race() && attempt < MAX_CONFLICT_RETRIES => {
                    attempt += 1;
                    tokio::time::sleep(backoff(attempt)).await;
                }
                Err(f) => return Err(f.into_meta("migrate")),
            }
        }
        self.run("migrate", || async {
            let mut client = self.client().await?;
            let tx = begin_write(&mut client).await?;
            let current: i64 = tx
                .query_one(
                    "SELECT version FROM schema_version WHERE singleton = 0 FOR UPDATE",
                    &[],
                )
                .await?
                .try_get(0)?;
            let known = i64::try_from(MIGRATIONS.len()).unwrap_or(i64::MAX);
            if current > known {
                return Err(MetaError::InvalidArgument(format!(
                    "postgres schema is newer than this build version={current} supported={known}"
                ))
                .into());
            }
            for (version, sql) in (1i64..)
                .zip(MIGRATIONS.iter())
                .skip(usize::try_from(current).unwrap_or(0))
            {
                tx.batch_execute(sql).await?;
                tx.execute(
                    "UPDATE schema_version SET version = $1 WHERE singleton = 0",
                    &[&version],
                )
                .await?;
                debug!(version, "postgres schema migrated");
            }
            tx.commit().await?;
            Ok(())
        })
        .await
    }
}

/// Exponential backoff with jitter: about 5 ms, 10 ms, 20 ms ... capped at
/// 500 ms.
fn backoff(attempt: u32) -> Duration {
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
pub(crate) async fn begin_write(client: &mut Object) -> Step<Transaction<'_>> {
    Ok(client
        .build_transaction()
        .isolation_level(IsolationLevel::ReadCommitted)
        .start()
        .await?)
}

/// A read-only transaction over one snapshot.
pub(crate) async fn begin_read(client: &mut Object) -> Step<Transaction<'_>> {
    Ok(client
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await?)
}

/// Run a cached prepared statement; all rows.
pub(crate) async fn query<C: GenericClient>(
    c: &C,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Step<Vec<Row>> {
    let stmt = c.prepare_cached(sql).await?;
    Ok(c.query(&stmt, params).await?)
}

/// Run a cached prepared statement; at most one row.
pub(crate) async fn query_opt<C: GenericClient>(
    c: &C,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Step<Option<Row>> {
    let stmt = c.prepare_cached(sql).await?;
    Ok(c.query_opt(&stmt, params).await?)
}

/// Run a cached prepared statement; exactly one row.
pub(crate) async fn query_one<C: GenericClient>(
    c: &C,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Step<Row> {
    let stmt = c.prepare_cached(sql).await?;
    Ok(c.query_one(&stmt, params).await?)
}

/// Run a cached prepared statement; rows affected.
pub(crate) async fn execute<C: GenericClient>(
    c: &C,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Step<u64> {
    let stmt = c.prepare_cached(sql).await?;
    Ok(c.execute(&stmt, params).await?)
}

/// The database's clock in ms since the Unix epoch (not the transaction's
/// start time: `clock_timestamp()` moves during a transaction).
pub(crate) const SQL_NOW_MS: &str = "SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint";

pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// A `u64` the store wrote as a non-negative `BIGINT`.
pub(crate) fn u64_col(row: &Row, idx: usize, column: &'static str) -> Step<u64> {
    let v: i64 = row.try_get(idx)?;
    Ok(u64::try_from(v).map_err(|_| CorruptValue::Negative(column))?)
}

/// A `u64` to store as `BIGINT` (callers validated the range).
pub(crate) fn i64_arg(v: u64, what: &str) -> Result<i64> {
    i64::try_from(v).map_err(|_| MetaError::InvalidArgument(format!("{what} too large value={v}")))
}

pub(crate) fn entry_from_row(row: &Row) -> Step<IndexEntry> {
    Ok(IndexEntry {
        topic_id: row.try_get(0)?,
        partition: row.try_get(1)?,
        base_offset: row.try_get(2)?,
        last_offset: row.try_get(3)?,
        segment_key: row.try_get(4)?,
        byte_start: u64_col(row, 5, "byte_start")?,
        byte_len: u64_col(row, 6, "byte_len")?,
        max_timestamp: row.try_get(7)?,
    })
}

pub(crate) fn entries_from_rows(rows: &[Row]) -> Step<Vec<IndexEntry>> {
    rows.iter().map(entry_from_row).collect()
}

async fn load_configs<C: GenericClient>(c: &C, id: Uuid) -> Step<BTreeMap<String, String>> {
    let rows = query(
        c,
        "SELECT key, value FROM topic_configs WHERE topic_id = $1",
        &[&id],
    )
    .await?;
    rows.iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
        .collect()
}

/// Load a topic and its configs with `sql`, a query on `topics` returning
/// `id, name, partitions` for the one argument.
async fn load_topic<C: GenericClient>(
    c: &C,
    sql: &str,
    arg: &(dyn ToSql + Sync),
) -> Step<Option<TopicMeta>> {
    let Some(row) = query_opt(c, sql, &[arg]).await? else {
        return Ok(None);
    };
    let id: Uuid = row.try_get(0)?;
    Ok(Some(TopicMeta {
        id,
        name: row.try_get(1)?,
        partitions: row.try_get(2)?,
        configs: load_configs(c, id).await?,
    }))
}

async fn topic_by_name<C: GenericClient>(c: &C, name: &str) -> Step<Option<TopicMeta>> {
    load_topic(
        c,
        "SELECT id, name, partitions FROM topics WHERE name = $1",
        &name,
    )
    .await
}

async fn topic_by_id<C: GenericClient>(c: &C, id: Uuid) -> Step<Option<TopicMeta>> {
    load_topic(
        c,
        "SELECT id, name, partitions FROM topics WHERE id = $1",
        &id,
    )
    .await
}

/// The topic, its row locked until the transaction ends, or
/// [`MetaError::UnknownTopic`].
async fn lock_topic(tx: &Transaction<'_>, name: &str) -> Step<TopicMeta> {
    load_topic(
        tx,
        "SELECT id, name, partitions FROM topics WHERE name = $1 FOR UPDATE",
        &name,
    )
    .await?
    .ok_or_else(|| MetaError::UnknownTopic(name.to_owned()).into())
}

/// Log boundaries and running max timestamp of a partition.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PartitionRow {
    pub(crate) log_start_offset: i64,
    pub(crate) next_offset: i64,
    pub(crate) max_timestamp: i64,
}

fn partition_from_row(row: &Row, first: usize) -> Step<PartitionRow> {
    Ok(PartitionRow {
        log_start_offset: row.try_get(first)?,
        next_offset: row.try_get(first + 1)?,
        max_timestamp: row.try_get(first + 2)?,
    })
}

/// The partition (its row locked until the transaction ends if `lock`), or
/// [`MetaError::UnknownTopic`] / [`MetaError::UnknownPartition`].
pub(crate) async fn require_partition<C: GenericClient>(
    c: &C,
    topic_id: Uuid,
    partition: i32,
    lock: bool,
) -> Step<PartitionRow> {
    let sql = if lock {
        "SELECT log_start_offset, next_offset, max_timestamp FROM partitions \
         WHERE topic_id = $1 AND partition_index = $2 FOR UPDATE"
    } else {
        "SELECT log_start_offset, next_offset, max_timestamp FROM partitions \
         WHERE topic_id = $1 AND partition_index = $2"
    };
    if let Some(row) = query_opt(c, sql, &[&topic_id, &partition]).await? {
        return partition_from_row(&row, 0);
    }
    let err = match topic_by_id(c, topic_id).await? {
        Some(topic) => MetaError::UnknownPartition {
            topic: topic.name,
            partition,
        },
        None => MetaError::UnknownTopic(topic_id.to_string()),
    };
    Err(err.into())
}

async fn insert_partitions(tx: &Transaction<'_>, id: Uuid, from: i32, to: i32) -> Step<()> {
    let stmt = tx
        .prepare_cached(
            "INSERT INTO partitions (topic_id, partition_index, log_start_offset, next_offset, \
             max_timestamp) VALUES ($1, $2, 0, 0, $3)",
        )
        .await?;
    let stmt = &stmt;
    let inserts = (from..to).map(|p| async move {
        tx.execute(stmt, &[&id, &p, &i64::MIN]).await?;
        Ok::<_, Fail>(())
    });
    futures::future::try_join_all(inserts).await?;
    Ok(())
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

/// Same decision as the SQLite backend. The caller holds the partition row
/// lock, so the producer rows of the partition cannot change underneath.
async fn check_producer(
    tx: &Transaction<'_>,
    topic_id: Uuid,
    partition: i32,
    p: &ProducerBatch,
) -> Step<ProducerVerdict> {
    let stored = query_opt(
        tx,
        "SELECT epoch FROM producer_state \
         WHERE topic_id = $1 AND partition_index = $2 AND producer_id = $3",
        &[&topic_id, &partition, &p.producer_id],
    )
    .await?;
    let Some(stored) = stored else {
        return Ok(ProducerVerdict::Accept { reset: true });
    };
    let epoch: i16 = stored.try_get(0)?;
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
    let rows = query(
        tx,
        "SELECT base_sequence, last_sequence, base_offset FROM producer_batches \
         WHERE topic_id = $1 AND partition_index = $2 AND producer_id = $3 \
         ORDER BY base_offset DESC LIMIT $4",
        &[
            &topic_id,
            &partition,
            &p.producer_id,
            &PRODUCER_BATCH_MEMORY,
        ],
    )
    .await?;
    let recent = rows
        .iter()
        .map(|r| {
            Ok((
                r.try_get::<_, i32>(0)?,
                r.try_get::<_, i32>(1)?,
                r.try_get::<_, i64>(2)?,
            ))
        })
        .collect::<Step<Vec<_>>>()?;
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

async fn record_producer_batch(
    tx: &Transaction<'_>,
    topic_id: Uuid,
    partition: i32,
    p: &ProducerBatch,
    base_offset: i64,
    reset: bool,
) -> Step<()> {
    // Every accepted batch refreshes the producer's last write (expiry), by
    // the database's clock.
    execute(
        tx,
        "INSERT INTO producer_state (topic_id, partition_index, producer_id, epoch, last_write_ms) \
         VALUES ($1, $2, $3, $4, (extract(epoch FROM clock_timestamp()) * 1000)::bigint) \
         ON CONFLICT (topic_id, partition_index, producer_id) \
         DO UPDATE SET epoch = excluded.epoch, last_write_ms = excluded.last_write_ms",
        &[&topic_id, &partition, &p.producer_id, &p.producer_epoch],
    )
    .await?;
    if reset {
        execute(
            tx,
            "DELETE FROM producer_batches \
             WHERE topic_id = $1 AND partition_index = $2 AND producer_id = $3",
            &[&topic_id, &partition, &p.producer_id],
        )
        .await?;
    }
    execute(
        tx,
        "INSERT INTO producer_batches (topic_id, partition_index, producer_id, base_offset, \
         base_sequence, last_sequence) VALUES ($1, $2, $3, $4, $5, $6)",
        &[
            &topic_id,
            &partition,
            &p.producer_id,
            &base_offset,
            &p.base_sequence,
            &p.last_sequence,
        ],
    )
    .await?;
    execute(
        tx,
        "DELETE FROM producer_batches \
         WHERE topic_id = $1 AND partition_index = $2 AND producer_id = $3 AND base_offset < ( \
             SELECT base_offset FROM producer_batches \
             WHERE topic_id = $1 AND partition_index = $2 AND producer_id = $3 \
             ORDER BY base_offset DESC LIMIT 1 OFFSET $4)",
        &[
            &topic_id,
            &partition,
            &p.producer_id,
            &(PRODUCER_BATCH_MEMORY - 1),
        ],
    )
    .await?;
    Ok(())
}

/// Insert index entries, pipelined on the transaction's connection.
pub(crate) async fn insert_entries(
    tx: &Transaction<'_>,
    entries: impl IntoIterator<Item = (&IndexEntry, i64)>,
) -> Step<()> {
    let stmt = tx
        .prepare_cached(
            "INSERT INTO index_entries (topic_id, partition_index, base_offset, last_offset, \
             segment_key, byte_start, byte_len, max_timestamp, running_max_timestamp) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .await?;
    let stmt = &stmt;
    let mut rows = Vec::new();
    for (e, running) in entries {
        rows.push((
            e,
            i64_arg(e.byte_start, "byte_start")?,
            i64_arg(e.byte_len, "byte_len")?,
            running,
        ));
    }
    let inserts = rows
        .iter()
        .map(|(e, byte_start, byte_len, running)| async move {
            tx.execute(
                stmt,
                &[
                    &e.topic_id,
                    &e.partition,
                    &e.base_offset,
                    &e.last_offset,
                    &e.segment_key,
                    byte_start,
                    byte_len,
                    &e.max_timestamp,
                    running,
                ],
            )
            .await?;
            Ok::<_, Fail>(())
        });
    futures::future::try_join_all(inserts).await?;
    Ok(())
}

async fn commit_segment_tx(
    tx: &Transaction<'_>,
    commit: &SegmentCommit,
) -> Step<Vec<BatchOutcome>> {
    let committed_at = now_ms();
    let size = i64_arg(commit.size, "segment size")?;
    let inserted = execute(
        tx,
        "INSERT INTO segments (key, size, committed_at_ms) VALUES ($1, $2, $3) \
         ON CONFLICT (key) DO NOTHING",
        &[&commit.key, &size, &committed_at],
    )
    .await?;
    if inserted == 0 {
        return Err(MetaError::SegmentExists(commit.key.clone()).into());
    }

    // Lock every partition of the commit, sorted, in one statement. Rows not
    // returned are unknown (or deleted while this commit waited).
    let wanted: BTreeSet<(Uuid, i32)> = commit
        .batches
        .iter()
        .map(|b| (b.topic_id, b.partition))
        .collect();
    let (ids, indexes): (Vec<Uuid>, Vec<i32>) = wanted.iter().copied().unzip();
    let mut parts: HashMap<(Uuid, i32), PartitionRow> = HashMap::new();
    for row in query(tx, SQL_LOCK_PARTITIONS, &[&ids, &indexes]).await? {
        let key: (Uuid, i32) = (row.try_get(0)?, row.try_get(1)?);
        parts.insert(key, partition_from_row(&row, 2)?);
    }

    let mut touched: BTreeSet<(Uuid, i32)> = BTreeSet::new();
    let mut planner = EntryPlanner::default();
    let mut outcomes = Vec::with_capacity(commit.batches.len());

    for b in &commit.batches {
        let key = (b.topic_id, b.partition);
        let Some(part) = parts.get_mut(&key) else {
            outcomes.push(BatchOutcome::Rejected(
                BatchRejection::UnknownTopicOrPartition,
            ));
            continue;
        };
        let mut reset = false;
        if let Some(p) = &b.producer {
            match check_producer(tx, b.topic_id, b.partition, p).await? {
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
        let part = *part;
        touched.insert(key);
        if let Some(p) = &b.producer {
            record_producer_batch(tx, b.topic_id, b.partition, p, base_offset, reset).await?;
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

    let update = tx
        .prepare_cached(
            "UPDATE partitions SET next_offset = $3, max_timestamp = $4 \
             WHERE topic_id = $1 AND partition_index = $2",
        )
        .await?;
    let update = &update;
    let updates = touched.iter().filter_map(|key| {
        let part = parts.get(key).copied()?;
        let (topic_id, partition) = *key;
        Some(async move {
            tx.execute(
                update,
                &[
                    &topic_id,
                    &partition,
                    &part.next_offset,
                    &part.max_timestamp,
                ],
            )
            .await?;
            Ok::<_, Fail>(())
        })
    });
    futures::future::try_join_all(updates).await?;
    insert_entries(
        tx,
        entries.iter().map(|e| (&e.entry, e.running_max_timestamp)),
    )
    .await?;
    if entries.is_empty() {
        // Nothing of it is readable (every batch rejected or a duplicate):
        // dead from the start, so the janitor removes the object.
        mark_dead_if_unused(tx, [commit.key.as_str()], committed_at).await?;
    }
    Ok(outcomes)
}

async fn delete_topic_tx(tx: &Transaction<'_>, name: &str) -> Step<Vec<String>> {
    let topic = lock_topic(tx, name).await?;
    let id = topic.id;
    // Same lock order as commits: partition rows sorted.
    query(
        tx,
        "SELECT partition_index FROM partitions WHERE topic_id = $1 \
         ORDER BY partition_index FOR UPDATE",
        &[&id],
    )
    .await?;
    let keys = query(
        tx,
        "SELECT DISTINCT segment_key FROM index_entries WHERE topic_id = $1",
        &[&id],
    )
    .await?
    .iter()
    .map(|r| r.try_get::<_, String>(0))
    .collect::<std::result::Result<BTreeSet<_>, _>>()?;
    for sql in [
        "DELETE FROM producer_batches WHERE topic_id = $1",
        "DELETE FROM producer_state WHERE topic_id = $1",
        "DELETE FROM index_entries WHERE topic_id = $1",
        "DELETE FROM partitions WHERE topic_id = $1",
        "DELETE FROM topic_configs WHERE topic_id = $1",
        "DELETE FROM topics WHERE id = $1",
    ] {
        execute(tx, sql, &[&id]).await?;
    }
    // As Kafka does, committed offsets of the deleted partitions go too, in
    // the same transaction, so a re-created topic never inherits them.
    execute(tx, "DELETE FROM group_offsets WHERE topic = $1", &[&name]).await?;
    // The segment rows stay (dead) until the janitor has deleted the objects
    // and forgets them: readers may still be mid-GET.
    mark_dead_if_unused(tx, keys.iter().map(String::as_str), now_ms()).await
}

#[async_trait]
impl TopicStore for PostgresStore {
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
        let configs = &configs;
        self.run("create_topic", move || async move {
            let mut client = self.client().await?;
            let tx = begin_write(&mut client).await?;
            let id = Uuid::new_v4();
            let inserted = execute(
                &tx,
                "INSERT INTO topics (id, name, partitions) VALUES ($1, $2, $3) \
                 ON CONFLICT (name) DO NOTHING",
                &[&id, &name, &partitions],
            )
            .await?;
            if inserted == 0 {
                return Err(MetaError::TopicExists(name.to_owned()).into());
            }
            insert_partitions(&tx, id, 0, partitions).await?;
            for (k, v) in configs {
                execute(
                    &tx,
                    "INSERT INTO topic_configs (topic_id, key, value) VALUES ($1, $2, $3)",
                    &[&id, k, v],
                )
                .await?;
            }
            tx.commit().await?;
            Ok(TopicMeta {
                id,
                name: name.to_owned(),
                partitions,
                configs: configs.clone(),
            })
        })
        .await
    }

    async fn delete_topic(&self, name: &str) -> Result<Vec<String>> {
        self.run("delete_topic", move || async move {
            let mut client = self.client().await?;
            let tx = begin_write(&mut client).await?;
            let dead = delete_topic_tx(&tx, name).await?;
            tx.commit().await?;
            Ok(dead)
        })
        .await
    }

    async fn get_topic(&self, name: &str) -> Result<Option<TopicMeta>> {
        self.run("get_topic", move || async move {
            let mut client = self.client().await?;
            let tx = begin_read(&mut client).await?;
            let topic = topic_by_name(&tx, name).await?;
            tx.commit().await?;
            Ok(topic)
        })
        .await
    }

    async fn get_topic_by_id(&self, id: Uuid) -> Result<Option<TopicMeta>> {
        self.run("get_topic_by_id", move || async move {
            let mut client = self.client().await?;
            let tx = begin_read(&mut client).await?;
            let topic = topic_by_id(&tx, id).await?;
            tx.commit().await?;
            Ok(topic)
        })
        .await
    }

    async fn list_topics(&self) -> Result<Vec<TopicMeta>> {
        self.run("list_topics", move || async move {
            let mut client = self.client().await?;
            let tx = begin_read(&mut client).await?;
            let mut configs: HashMap<Uuid, BTreeMap<String, String>> = HashMap::new();
            for r in query(&tx, "SELECT topic_id, key, value FROM topic_configs", &[]).await? {
                configs
                    .entry(r.try_get(0)?)
                    .or_default()
                    .insert(r.try_get(1)?, r.try_get(2)?);
            }
            let rows = query(
                &tx,
                "SELECT id, name, partitions FROM topics ORDER BY name",
                &[],
            )
            .await?;
            tx.commit().await?;
            rows.iter()
                .map(|r| {
                    let id: Uuid = r.try_get(0)?;
                    Ok(TopicMeta {
                        id,
                        name: r.try_get(1)?,
                        partitions: r.try_get(2)?,
                        configs: configs.remove(&id).unwrap_or_default(),
                    })
                })
                .collect()
        })
        .await
    }

    async fn create_partitions(&self, name: &str, total: i32) -> Result<TopicMeta> {
        self.run("create_partitions", move || async move {
            let mut client = self.client().await?;
            let tx = begin_write(&mut client).await?;
            let mut topic = lock_topic(&tx, name).await?;
            if total <= topic.partitions {
                return Err(MetaError::InvalidPartitions {
                    requested: total,
                    current: topic.partitions,
                }
                .into());
            }
            insert_partitions(&tx, topic.id, topic.partitions, total).await?;
            execute(
                &tx,
                "UPDATE topics SET partitions = $2 WHERE id = $1",
                &[&topic.id, &total],
            )
            .await?;
            tx.commit().await?;
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
        let changes = &changes;
        self.run("alter_topic_configs", move || async move {
            let mut client = self.client().await?;
            let tx = begin_write(&mut client).await?;
            let mut topic = lock_topic(&tx, name).await?;
            for (k, v) in changes {
                match v {
                    Some(v) => {
                        execute(
                            &tx,
                            "INSERT INTO topic_configs (topic_id, key, value) VALUES ($1, $2, $3) \
                             ON CONFLICT (topic_id, key) DO UPDATE SET value = excluded.value",
                            &[&topic.id, k, v],
                        )
                        .await?;
                    }
                    None => {
                        execute(
                            &tx,
                            "DELETE FROM topic_configs WHERE topic_id = $1 AND key = $2",
                            &[&topic.id, k],
                        )
                        .await?;
                    }
                }
            }
            topic.configs = load_configs(&tx, topic.id).await?;
            tx.commit().await?;
            Ok(topic)
        })
        .await
    }
}

#[async_trait]
impl LogStore for PostgresStore {
    async fn commit_segment(&self, commit: &SegmentCommit) -> Result<Vec<BatchOutcome>> {
        validate_commit(commit)?;
        self.run("commit_segment", move || async move {
            let mut client = self.client().await?;
            let tx = begin_write(&mut client).await?;
            let outcomes = commit_segment_tx(&tx, commit).await?;
            if let Some(deadline) = &commit.deadline {
                // The database's clock, last: only COMMIT follows the check.
                let row = query_one(&tx, SQL_NOW_MS, &[]).await?;
                deadline.check(&commit.key, row.try_get(0)?)?;
            }
            if self.notify {
                // Delivered at COMMIT, and only if it commits.
                tx.execute(
                    "SELECT pg_notify($1, $2)",
                    &[&COMMIT_CHANNEL, &self.instance],
                )
                .await?;
            }
            tx.commit().await?;
            Ok(outcomes)
        })
        .await
    }

    async fn abandon_segment(&self, key: &str, size: u64) -> Result<bool> {
        let size = i64::try_from(size)
            .map_err(|_| MetaError::InvalidArgument(format!("segment size too large key={key}")))?;
        self.run("abandon_segment", move || async move {
            let client = self.client().await?;
            // A commit of the same key still in flight holds the key's index
            // entry: this insert waits for it to end (bounded by lock_timeout).
            let inserted = execute(
                &client,
                "INSERT INTO segments (key, size, committed_at_ms, dead_since_ms) \
                 VALUES ($1, $2, (extract(epoch FROM clock_timestamp()) * 1000)::bigint, \
                 (extract(epoch FROM clock_timestamp()) * 1000)::bigint) \
                 ON CONFLICT (key) DO NOTHING",
                &[&key, &size],
            )
            .await?;
            Ok(inserted == 1)
        })
        .await
    }

    async fn segment_committed(&self, key: &str) -> Result<bool> {
        self.run("segment_committed", move || async move {
            let client = self.client().await?;
            let row = query_one(
                &client,
                "SELECT EXISTS (SELECT 1 FROM segments WHERE key = $1)",
                &[&key],
            )
            .await?;
            Ok(row.try_get(0)?)
        })
        .await
    }

    async fn segment_entries(&self, key: &str) -> Result<Vec<IndexEntry>> {
        self.run("segment_entries", move || async move {
            let client = self.client().await?;
            let rows = query(
                &client,
                &format!(
                    "SELECT {ENTRY_COLUMNS} FROM index_entries WHERE segment_key = $1 \
                     ORDER BY topic_id, partition_index, base_offset"
                ),
                &[&key],
            )
            .await?;
            entries_from_rows(&rows)
        })
        .await
    }

    async fn partition_offsets(&self, topic_id: Uuid, partition: i32) -> Result<PartitionOffsets> {
        self.run("partition_offsets", move || async move {
            let client = self.client().await?;
            let p = require_partition(&client, topic_id, partition, false).await?;
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
        self.run("index_entries", move || async move {
            let mut client = self.client().await?;
            let tx = begin_read(&mut client).await?;
            let p = require_partition(&tx, topic_id, partition, false).await?;
            let from = from_offset.max(p.log_start_offset);
            let rows = query(
                &tx,
                SQL_ENTRIES_FROM,
                &[&topic_id, &partition, &from, &limit],
            )
            .await?;
            tx.commit().await?;
            entries_from_rows(&rows)
        })
        .await
    }

    async fn entry_for_timestamp(
        &self,
        topic_id: Uuid,
        partition: i32,
        timestamp: i64,
    ) -> Result<Option<IndexEntry>> {
        self.run("entry_for_timestamp", move || async move {
            let mut client = self.client().await?;
            let tx = begin_read(&mut client).await?;
            let p = require_partition(&tx, topic_id, partition, false).await?;
            let row = query_opt(
                &tx,
                SQL_ENTRY_FOR_TIMESTAMP,
                &[&topic_id, &partition, &timestamp, &p.log_start_offset],
            )
            .await?;
            tx.commit().await?;
            row.as_ref().map(entry_from_row).transpose()
        })
        .await
    }

    async fn advance_log_start(
        &self,
        topic_id: Uuid,
        partition: i32,
        offset: i64,
    ) -> Result<PartitionOffsets> {
        self.run("advance_log_start", move || async move {
            let mut client = self.client().await?;
            let tx = begin_write(&mut client).await?;
            let p = require_partition(&tx, topic_id, partition, true).await?;
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
                execute(
                    &tx,
                    "UPDATE partitions SET log_start_offset = $3 \
                     WHERE topic_id = $1 AND partition_index = $2",
                    &[&topic_id, &partition, &log_start_offset],
                )
                .await?;
            }
            tx.commit().await?;
            Ok(PartitionOffsets {
                log_start_offset,
                next_offset: p.next_offset,
            })
        })
        .await
    }

    async fn allocate_producer_id(&self) -> Result<(i64, i16)> {
        self.run("allocate_producer_id", move || async move {
            // One statement: its own transaction.
            let client = self.client().await?;
            let row = query_one(
                &client,
                "UPDATE producer_ids SET next_id = next_id + 1 WHERE singleton = 0 \
                 RETURNING next_id - 1",
                &[],
            )
            .await?;
            Ok((row.try_get(0)?, 0))
        })
        .await
    }

    async fn list_segments(&self) -> Result<Vec<String>> {
        self.text_column(
            "list_segments",
            "SELECT key FROM segments WHERE dead_since_ms IS NULL ORDER BY key",
        )
        .await
    }
}

#[async_trait]
impl GroupStore for PostgresStore {
    async fn claim_group(&self, group: &str, node_id: i32) -> Result<GroupClaim> {
        self.run("claim_group", move || async move {
            let client = self.client().await?;
            let row = client
                .query_one(
                    "INSERT INTO group_coordinators (group_id, node_id, epoch, last_active_ms) \
                     VALUES ($1, $2, (SELECT floor FROM group_epoch_floor) + 1, \
                     (extract(epoch FROM clock_timestamp()) * 1000)::bigint) \
                     ON CONFLICT (group_id) DO UPDATE SET node_id = excluded.node_id, \
                     epoch = group_coordinators.epoch + 1, \
                     last_active_ms = excluded.last_active_ms RETURNING epoch",
                    &[&group, &node_id],
                )
                .await?;
            Ok(GroupClaim {
                node_id,
                epoch: row.try_get(0)?,
            })
        })
        .await
    }

    async fn save_group(&self, group: &str, claim: GroupClaim, state: &[u8]) -> Result<()> {
        self.run("save_group", move || async move {
            let client = self.client().await?;
            let saved = execute(
                &client,
                "UPDATE group_coordinators SET state = $4, \
                 last_active_ms = GREATEST(last_active_ms, \
                 (extract(epoch FROM clock_timestamp()) * 1000)::bigint) \
                 WHERE group_id = $1 AND node_id = $2 AND epoch = $3",
                &[&group, &claim.node_id, &claim.epoch, &state],
            )
            .await?;
            if saved != 1 {
                return Err(MetaError::Fenced {
                    group: group.to_owned(),
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
        self.run("load_group", move || async move {
            let client = self.client().await?;
            let row = client
                .query_opt(
                    "SELECT state FROM group_coordinators WHERE group_id = $1",
                    &[&group],
                )
                .await?;
            Ok(match row {
                Some(row) => row.try_get::<_, Option<Vec<u8>>>(0)?,
                None => None,
            })
        })
        .await
    }

    async fn touch_groups(&self, groups: &[String], now_ms: i64) -> Result<()> {
        if groups.is_empty() {
            return Ok(());
        }
        self.run("touch_groups", move || async move {
            let client = self.client().await?;
            execute(
                &client,
                "UPDATE group_coordinators SET last_active_ms = GREATEST(last_active_ms, $2) \
                 WHERE group_id = ANY($1)",
                &[&groups, &now_ms],
            )
            .await?;
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
        if offsets.is_empty() && claim.is_none() {
            return Ok(());
        }
        self.run("commit_offsets", move || async move {
            let mut client = self.client().await?;
            let tx = begin_write(&mut client).await?;
            if let Some(claim) = claim {
                // Touching the claim row locks it until this transaction
                // ends, so a newer claim waits for this commit and every
                // commit after that claim sees it.
                let held = tx
                    .execute(
                        "UPDATE group_coordinators SET epoch = epoch \
                         WHERE group_id = $1 AND node_id = $2 AND epoch = $3",
                        &[&group, &claim.node_id, &claim.epoch],
                    )
                    .await?;
                if held != 1 {
                    return Err(MetaError::Fenced {
                        group: group.to_owned(),
                        node_id: claim.node_id,
                        epoch: claim.epoch,
                    }
                    .into());
                }
            }
            let stmt = tx
                .prepare_cached(
                    "INSERT INTO group_offsets (group_id, topic, partition_index, \
                     committed_offset, leader_epoch, metadata, commit_timestamp_ms) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7) \
                     ON CONFLICT (group_id, topic, partition_index) DO UPDATE SET \
                     committed_offset = excluded.committed_offset, \
                     leader_epoch = excluded.leader_epoch, metadata = excluded.metadata, \
                     commit_timestamp_ms = excluded.commit_timestamp_ms",
                )
                .await?;
            // Pipelined; the server runs them in order, so the last of
            // several offsets for one partition wins.
            let stmt = &stmt;
            let tx_ref = &tx;
            let upserts = offsets.iter().map(|o| async move {
                tx_ref
                    .execute(
                        stmt,
                        &[
                            &group,
                            &o.topic,
                            &o.partition,
                            &o.offset,
                            &o.leader_epoch,
                            &o.metadata,
                            &o.commit_timestamp_ms,
                        ],
                    )
                    .await?;
                Ok::<_, Fail>(())
            });
            futures::future::try_join_all(upserts).await?;
            tx.commit().await?;
            Ok(())
        })
        .await
    }

    async fn fetch_offsets(
        &self,
        group: &str,
        topics: Option<&[String]>,
    ) -> Result<Vec<CommittedOffset>> {
        const COLUMNS: &str = "SELECT topic, partition_index, committed_offset, \
                               leader_epoch, metadata, commit_timestamp_ms FROM group_offsets";
        if topics.is_some_and(<[String]>::is_empty) {
            return Ok(Vec::new());
        }
        let topics = topics.map(<[String]>::to_vec);
        let topics = &topics;
        self.run("fetch_offsets", move || async move {
            let client = self.client().await?;
            let rows = match topics {
                None => {
                    query(
                        &client,
                        &format!("{COLUMNS} WHERE group_id = $1 ORDER BY topic, partition_index"),
                        &[&group],
                    )
                    .await?
                }
                Some(topics) => {
                    query(
                        &client,
                        &format!(
                            "{COLUMNS} WHERE group_id = $1 AND topic = ANY($2) \
                             ORDER BY topic, partition_index"
                        ),
                        &[&group, topics],
                    )
                    .await?
                }
            };
            rows.iter()
                .map(|r| {
                    Ok(CommittedOffset {
                        topic: r.try_get(0)?,
                        partition: r.try_get(1)?,
                        offset: r.try_get(2)?,
                        leader_epoch: r.try_get(3)?,
                        metadata: r.try_get(4)?,
                        commit_timestamp_ms: r.try_get(5)?,
                    })
                })
                .collect()
        })
        .await
    }

    async fn list_groups(&self) -> Result<Vec<String>> {
        self.text_column(
            "list_groups",
            "SELECT DISTINCT group_id FROM group_offsets ORDER BY group_id",
        )
        .await
    }

    async fn delete_group(&self, group: &str) -> Result<()> {
        self.run("delete_group", move || async move {
            let client = self.client().await?;
            execute(
                &client,
                "DELETE FROM group_offsets WHERE group_id = $1",
                &[&group],
            )
            .await?;
            execute(
                &client,
                "UPDATE group_coordinators SET state = NULL WHERE group_id = $1",
                &[&group],
            )
            .await?;
            Ok(())
        })
        .await
    }

    async fn delete_offsets(&self, group: &str, partitions: &[(String, i32)]) -> Result<()> {
        if partitions.is_empty() {
            return Ok(());
        }
        let (topics, indexes): (Vec<String>, Vec<i32>) = partitions.iter().cloned().unzip();
        let (topics, indexes) = (&topics, &indexes);
        self.run("delete_offsets", move || async move {
            let client = self.client().await?;
            execute(
                &client,
                "DELETE FROM group_offsets WHERE group_id = $1 AND (topic, partition_index) IN \
                 (SELECT k.t, k.i FROM unnest($2::TEXT[], $3::INTEGER[]) AS k (t, i))",
                &[&group, topics, indexes],
            )
            .await?;
            Ok(())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::Instant;

    use tributary_testkit::PgServer;

    use super::*;
    use crate::{conformance, BrokerRegistry, MetadataStore, PendingBatch};

    /// A throwaway cluster; fails (never skips) without PostgreSQL binaries.
    fn pg_server() -> PgServer {
        PgServer::start().unwrap_or_else(|e| panic!("cannot start PostgreSQL for the test: {e:#}"))
    }

    fn batch(topic_id: Uuid, partition: i32, byte_start: u64, count: i64) -> PendingBatch {
        PendingBatch {
            topic_id,
            partition,
            byte_start,
            byte_len: 10,
            offset_count: count,
            max_timestamp: 1_000,
            producer: None,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn conformance_postgres() {
        let server = pg_server();
        let base = server.url();
        let n = AtomicUsize::new(0);
        conformance::run_all(|| {
            let url = format!("{base}?schema=t{}", n.fetch_add(1, Ordering::Relaxed));
            async move {
                Arc::new(
                    PostgresStore::connect(&url)
                        .await
                        .unwrap_or_else(|e| panic!("connect {url}: {e}")),
                ) as Arc<dyn MetadataStore>
            }
        })
        .await;
    }

    /// Two stores ("brokers") on one database, each with four concurrent
    /// writers, commit 200 segments each to the same three partitions, in
    /// opposite partition orders: offsets stay dense and unique, and the
    /// index matches.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_brokers_commit_concurrently() {
        const BROKERS: usize = 2;
        const TASKS: usize = 4;
        const SEGMENTS_PER_TASK: usize = 50;
        let server = pg_server();
        let url = format!("{}?schema=brokers", server.url());
        // Both brokers connect (and migrate) at once.
        let (a, b) = tokio::join!(PostgresStore::connect(&url), PostgresStore::connect(&url));
        let stores = [a.expect("connect a"), b.expect("connect b")];
        let topic = stores[0]
            .create_topic("shared", 3, BTreeMap::new())
            .await
            .expect("create");
        assert_eq!(
            stores[1].get_topic("shared").await.expect("get"),
            Some(topic.clone()),
            "both brokers see one database"
        );

        let mut tasks = Vec::new();
        for (broker, store) in stores.iter().enumerate() {
            for task in 0..TASKS {
                let store = store.clone();
                let topic_id = topic.id;
                tasks.push(tokio::spawn(async move {
                    let mut got: Vec<(i32, i64, i64)> = Vec::new();
                    for i in 0..SEGMENTS_PER_TASK {
                        let mut parts = [0, 1, 2];
                        if broker == 1 {
                            parts.reverse();
                        }
                        let batches: Vec<PendingBatch> = parts
                            .iter()
                            .enumerate()
                            .map(|(j, &p)| {
                                let count = i64::try_from(1 + (i + j + task) % 4).expect("small");
                                batch(topic_id, p, u64::try_from(j).expect("small") * 10, count)
                            })
                            .collect();
                        let seg = SegmentCommit {
                            key: format!("b{broker}-t{task}-s{i:03}"),
                            size: 30,
                            batches: batches.clone(),
                            deadline: None,
                        };
                        let outcomes = store
                            .commit_segment(&seg)
                            .await
                            .unwrap_or_else(|e| panic!("commit {}: {e}", seg.key));
                        for (b, o) in batches.iter().zip(outcomes) {
                            let BatchOutcome::Appended { base_offset } = o else {
                                panic!("expected Appended, got {o:?}");
                            };
                            got.push((b.partition, base_offset, b.offset_count));
                        }
                    }
                    got
                }));
            }
        }
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.expect("writer task"));
        }
        assert_eq!(all.len(), BROKERS * TASKS * SEGMENTS_PER_TASK * 3);

        for partition in 0..3 {
            let mut ranges: Vec<(i64, i64)> = all
                .iter()
                .filter(|(p, _, _)| *p == partition)
                .map(|(_, base, count)| (*base, *count))
                .collect();
            ranges.sort();
            let mut cursor = 0;
            for (base, count) in &ranges {
                assert_eq!(
                    *base, cursor,
                    "partition {partition}: dense, unique offsets"
                );
                cursor += count;
            }
            for store in &stores {
                assert_eq!(
                    store
                        .partition_offsets(topic.id, partition)
                        .await
                        .expect("offsets")
                        .next_offset,
                    cursor
                );
            }
            let entries = stores[1]
                .index_entries(topic.id, partition, 0, usize::MAX)
                .await
                .expect("entries");
            assert_eq!(entries.len(), ranges.len(), "one entry per batch");
            let mut covered = 0;
            for e in &entries {
                assert_eq!(
                    e.base_offset, covered,
                    "partition {partition}: no index gaps"
                );
                covered = e.last_offset + 1;
            }
            assert_eq!(covered, cursor);
        }
        assert_eq!(
            stores[0].list_segments().await.expect("segments").len(),
            BROKERS * TASKS * SEGMENTS_PER_TASK
        );
    }

    /// Retry `f` until it succeeds; every failure meanwhile must be a
    /// retryable backend error. Panics after `within`.
    async fn until_ok<T, F, Fut>(what: &str, within: Duration, mut f: F) -> T
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let deadline = Instant::now() + within;
        loop {
            match f().await {
                Ok(v) => return v,
                Err(e) => {
                    assert!(
                        matches!(e, MetaError::Backend { .. }) && e.is_retryable(),
                        "{what}: only retryable backend errors while the server is away, got {e:?}"
                    );
                    assert!(
                        Instant::now() < deadline,
                        "{what}: still failing after {within:?}: {e:?}"
                    );
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    /// The server going away and coming back does not wedge the store:
    /// calls fail with retryable errors while it is down, succeed again soon
    /// after it is back (dead pooled connections are replaced), and the data
    /// is intact.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn survives_server_restart() {
        let mut server = pg_server();
        let store = PostgresStore::connect(&format!("{}?schema=restart", server.url()))
            .await
            .expect("connect");
        let topic = store
            .create_topic("t", 1, BTreeMap::new())
            .await
            .expect("create");
        let seg = |key: &str| SegmentCommit {
            key: key.to_owned(),
            size: 10,
            batches: vec![batch(topic.id, 0, 0, 3)],
            deadline: None,
        };
        store.commit_segment(&seg("before")).await.expect("commit");
        // Several pooled connections, all about to die.
        let reads = (0..6).map(|_| store.partition_offsets(topic.id, 0));
        for r in futures::future::join_all(reads).await {
            r.expect("read");
        }

        // Down: every call fails, retryably, and none hangs.
        tokio::task::block_in_place(|| server.stop()).expect("stop");
        for _ in 0..3 {
            let err = tokio::time::timeout(
                Duration::from_secs(30),
                store.partition_offsets(topic.id, 0),
            )
            .await
            .expect("a call against a stopped server returns")
            .expect_err("server is down");
            assert!(
                matches!(err, MetaError::Backend { .. }) && err.is_retryable(),
                "{err:?}"
            );
        }
        tokio::task::block_in_place(|| server.resume()).expect("resume");
        let offsets = until_ok("read after resume", Duration::from_secs(10), || {
            store.partition_offsets(topic.id, 0)
        })
        .await;
        assert_eq!(
            offsets,
            PartitionOffsets {
                log_start_offset: 0,
                next_offset: 3
            }
        );

        // A restart while the pool holds live connections.
        tokio::task::block_in_place(|| server.restart()).expect("restart");
        let outcomes = until_ok("commit after restart", Duration::from_secs(10), || async {
            // A commit whose answer was lost would be resolved by the caller
            // with segment_committed; here nothing can have landed before
            // the first success, so a retry never sees SegmentExists.
            store.commit_segment(&seg("after")).await
        })
        .await;
        assert_eq!(outcomes, vec![BatchOutcome::Appended { base_offset: 3 }]);
        let entries = store
            .index_entries(topic.id, 0, 0, 10)
            .await
            .expect("entries");
        assert_eq!(entries.len(), 2, "data from before the restart is intact");
        assert_eq!(entries[0].segment_key, "before");
        assert!(store.segment_committed("before").await.expect("committed"));
        assert_eq!(
            store.list_topics().await.expect("list"),
            vec![topic.clone()]
        );
    }

    /// Wait until the feed satisfies `ok`, at most 30 s.
    async fn feed_until(
        feed: &mut crate::CommitFeed,
        what: &str,
        ok: impl Fn(&crate::RemoteCommits) -> bool,
    ) -> crate::RemoteCommits {
        tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                let now = *feed.borrow_and_update();
                if ok(&now) {
                    return now;
                }
                feed.changed().await.expect("feed alive");
            }
        })
        .await
        .unwrap_or_else(|_| panic!("commit feed never got to: {what}"))
    }

    /// LISTEN/NOTIFY: a store hears the commits of another store on the same
    /// database, says when it stops listening (server restart) and listens
    /// again by itself.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn commit_feed_hears_other_brokers() {
        let mut server = pg_server();
        let url = format!("{}?schema=feed", server.url());
        let a = PostgresStore::connect(&url).await.expect("connect a");
        let b = PostgresStore::connect(&url).await.expect("connect b");
        let topic = a
            .create_topic("t", 1, BTreeMap::new())
            .await
            .expect("create");
        let seg = |key: &str| SegmentCommit {
            key: key.to_owned(),
            size: 10,
            batches: vec![batch(topic.id, 0, 0, 1)],
            deadline: None,
        };
        let mut feed = a.commit_feed().expect("PostgreSQL has NOTIFY");
        let start = feed_until(&mut feed, "listening", |s| s.listening).await;
        b.commit_segment(&seg("b1")).await.expect("commit b1");
        let heard = feed_until(&mut feed, "b1 heard", |s| s.seen != start.seen).await;

        // The listener loses its connection; once it listens again it
        // reports a change (commits made meanwhile were not heard).
        tokio::task::block_in_place(|| server.restart()).expect("restart");
        let back = feed_until(&mut feed, "listening again", |s| {
            s.listening && s.seen != heard.seen
        })
        .await;
        let b2 = seg("b2");
        until_ok("commit after restart", Duration::from_secs(10), || {
            b.commit_segment(&b2)
        })
        .await;
        feed_until(&mut feed, "b2 heard", |s| s.seen != back.seen).await;
        drop(feed);
    }

    /// libpq's sslmode meanings against a server that takes TCP clients only
    /// over TLS, with a certificate for `localhost` from a throwaway CA.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn tls_modes_against_a_tls_only_server() {
        let server = tokio::task::block_in_place(PgServer::start_tls).expect("start tls server");
        let ca = server.ca_cert().expect("ca").display().to_string();
        let ip = server.url();
        let named = format!(
            "postgres://postgres@localhost:{}/tributary?hostaddr=127.0.0.1&",
            server.port()
        );
        let ok = |url: String| async move {
            let store = PostgresStore::connect(&url)
                .await
                .unwrap_or_else(|e| panic!("{url}: {e:?}"));
            store.list_topics().await.expect("query over TLS");
            store
        };
        let refused = |url: String| async move {
            let err = PostgresStore::connect(&url)
                .await
                .err()
                .unwrap_or_else(|| panic!("{url} must be refused"));
            format!("{err:?}")
        };
        // Encrypted, certificate not checked (libpq's require and prefer).
        let store = ok(format!("{ip}?sslmode=require")).await;
        ok(ip.clone()).await;
        // The certificate chains to the CA; the name is checked only by
        // verify-full, and it names localhost, not 127.0.0.1.
        ok(format!("{named}sslmode=verify-full&sslrootcert={ca}")).await;
        ok(format!("{ip}?sslmode=verify-ca&sslrootcert={ca}")).await;
        let wrong_name = refused(format!("{ip}?sslmode=verify-full&sslrootcert={ca}")).await;
        assert!(wrong_name.contains("NotValidForName"), "{wrong_name}");
        // require with a root file behaves like verify-ca (as libpq).
        ok(format!("{ip}?sslmode=require&sslrootcert={ca}")).await;
        // The system roots do not know the throwaway CA.
        let unknown = refused(format!("{named}sslmode=verify-full")).await;
        assert!(unknown.contains("UnknownIssuer"), "{unknown}");
        // The server takes no plain TCP clients.
        let plain = refused(format!("{ip}?sslmode=disable")).await;
        assert!(plain.contains("no encryption"), "{plain}");
        // The LISTEN connection uses TLS too.
        let mut feed = store.commit_feed().expect("feed");
        feed_until(&mut feed, "listening over TLS", |s| s.listening).await;
    }

    /// Migrations are recorded and not re-run by a second connect.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reconnect_keeps_schema_and_data() {
        let server = pg_server();
        let url = format!("{}?schema=reconnect", server.url());
        let topic = {
            let store = PostgresStore::connect(&url).await.expect("connect");
            let (pid, _) = store.allocate_producer_id().await.expect("pid");
            assert_eq!(pid, 0);
            store
                .create_topic("t", 2, BTreeMap::new())
                .await
                .expect("create")
        };
        let store = crate::open_metadata(&url).await.expect("reopen");
        assert_eq!(store.get_topic("t").await.expect("get"), Some(topic));
        let (pid, _) = store.allocate_producer_id().await.expect("pid");
        assert_eq!(pid, 1, "producer ids continue after reconnect");
        let pg = PostgresStore::connect(&url).await.expect("connect");
        let client = pg.client().await.unwrap_or_else(|_| panic!("client"));
        let version: i64 = client
            .query_one("SELECT version FROM schema_version", &[])
            .await
            .expect("version")
            .get(0);
        assert_eq!(version, i64::try_from(MIGRATIONS.len()).expect("fits"));
        // Tables live in the named schema, not in public.
        let in_public: i64 = client
            .query_one(
                "SELECT COUNT(*) FROM information_schema.tables                  WHERE table_schema = 'public' AND table_name = 'topics'",
                &[],
            )
            .await
            .expect("catalog")
            .get(0);
        assert_eq!(in_public, 0);
    }

    /// Plan lines of `sql` with the given arguments.
    async fn plan(client: &Object, sql: &str, args: &[&(dyn ToSql + Sync)]) -> Vec<String> {
        client
            .query(&format!("EXPLAIN {sql}"), args)
            .await
            .unwrap_or_else(|e| panic!("explain {sql}: {e}"))
            .iter()
            .map(|r| r.get::<_, String>(0))
            .collect()
    }

    /// Hot-path lookups seek an index and need no sort (checked with
    /// sequential scans and sorts priced out, as tables in a test are tiny),
    /// and the commit's partition lock sorts before it locks.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn hot_queries_use_indexes_and_locks_are_ordered() {
        let server = pg_server();
        let store = PostgresStore::connect(&format!("{}?schema=plans", server.url()))
            .await
            .expect("connect");
        let client = store.client().await.unwrap_or_else(|_| panic!("client"));
        client
            .batch_execute("SET enable_seqscan = off; SET enable_sort = off")
            .await
            .expect("planner settings");
        let id = Uuid::nil();
        let (p, o, l) = (0i32, 0i64, 10i64);
        let key = "k".to_owned();
        let keys = vec![key.clone()];
        let checks: Vec<(&str, Vec<&(dyn ToSql + Sync)>)> = vec![
            (SQL_ENTRIES_FROM, vec![&id, &p, &o, &l]),
            (SQL_ENTRY_FOR_TIMESTAMP, vec![&id, &p, &o, &o]),
            (
                "SELECT log_start_offset, next_offset, max_timestamp FROM partitions \
                 WHERE topic_id = $1 AND partition_index = $2",
                vec![&id, &p],
            ),
            (
                "SELECT base_sequence, last_sequence, base_offset FROM producer_batches \
                 WHERE topic_id = $1 AND partition_index = $2 AND producer_id = $3 \
                 ORDER BY base_offset DESC LIMIT $4",
                vec![&id, &p, &o, &l],
            ),
            (
                "SELECT EXISTS (SELECT 1 FROM segments WHERE key = $1)",
                vec![&key],
            ),
            (
                "SELECT 1 FROM index_entries WHERE segment_key = $1",
                vec![&key],
            ),
            (
                "SELECT DISTINCT segment_key FROM index_entries WHERE topic_id = $1",
                vec![&id],
            ),
            (
                "SELECT key, size, dead_since_ms FROM segments \
                 WHERE dead_since_ms IS NOT NULL AND dead_since_ms <= $1 \
                 ORDER BY dead_since_ms, key LIMIT $2",
                vec![&o, &l],
            ),
            ("SELECT key FROM segments WHERE key = ANY($1)", vec![&keys]),
            (
                "SELECT running_max_timestamp FROM index_entries \
                 WHERE topic_id = $1 AND partition_index = $2 AND base_offset < $3 \
                 ORDER BY base_offset DESC LIMIT 1",
                vec![&id, &p, &o],
            ),
        ];
        for (sql, args) in &checks {
            let lines = plan(&client, sql, args).await;
            for line in &lines {
                assert!(
                    !line.contains("Seq Scan") && !line.contains("Sort"),
                    "query plan {lines:#?} for {sql}"
                );
            }
        }
        let ids = vec![id];
        let parts = vec![p];
        let lines = plan(&client, SQL_LOCK_PARTITIONS, &[&ids, &parts]).await;
        assert!(
            lines[0].trim_start().starts_with("LockRows"),
            "rows are locked after ordering: {lines:#?}"
        );
    }

    #[tokio::test]
    async fn open_metadata_dispatches_on_scheme() {
        let store = crate::open_metadata("sqlite::memory:")
            .await
            .expect("sqlite");
        assert!(store.list_topics().await.expect("list").is_empty());
        let err = crate::open_metadata("mysql://u:secret@h/db")
            .await
            .err()
            .expect("unknown scheme");
        assert!(matches!(err, MetaError::InvalidArgument(_)));
        assert!(!err.to_string().contains("secret"), "{err}");
    }

    #[test]
    fn url_parsing() {
        assert_eq!(
            parse_url("postgres://u:p@localhost:5432/db").expect("plain"),
            ParsedUrl {
                libpq_url: "postgres://u:p@localhost:5432/db".into(),
                schema: None,
                tls: TlsMode::Prefer,
                root_cert: None,
                timeouts: SESSION_TIMEOUTS.to_vec(),
                keepalives_given: false,
            }
        );
        assert_eq!(
            parse_url("postgresql://h/db?connect_timeout=3&schema=t_1&sslmode=disable")
                .expect("schema"),
            ParsedUrl {
                libpq_url: "postgresql://h/db?connect_timeout=3".into(),
                schema: Some("t_1".into()),
                tls: TlsMode::Disable,
                root_cert: None,
                timeouts: SESSION_TIMEOUTS.to_vec(),
                keepalives_given: false,
            }
        );
        assert_eq!(
            parse_url("postgres://h/db?sslmode=verify-full&sslrootcert=/etc/ca.pem").expect("tls"),
            ParsedUrl {
                libpq_url: "postgres://h/db".into(),
                schema: None,
                tls: TlsMode::VerifyFull,
                root_cert: Some("/etc/ca.pem".into()),
                timeouts: SESSION_TIMEOUTS.to_vec(),
                keepalives_given: false,
            }
        );
        assert_eq!(
            parse_url("postgres://h/db?schema=abc")
                .expect("schema only")
                .libpq_url,
            "postgres://h/db"
        );
        let bounded =
            parse_url("postgres://h/db?lock_timeout=2000&keepalives_idle=5&statement_timeout=0")
                .expect("timeouts");
        assert_eq!(
            bounded.timeouts,
            vec![
                ("statement_timeout", 0),
                ("lock_timeout", 2000),
                ("idle_in_transaction_session_timeout", 10_000)
            ]
        );
        assert!(bounded.keepalives_given);
        assert_eq!(bounded.libpq_url, "postgres://h/db?keepalives_idle=5");
        for bad in [
            "postgres://h/db?lock_timeout=soon",
            "sqlite://x.db",
            "postgres://h/db?schema=",
            "postgres://h/db?schema=1abc",
            "postgres://h/db?schema=Bad",
            "postgres://h/db?schema=a;drop",
            "postgres://h/db?sslmode=maybe",
        ] {
            assert!(
                matches!(parse_url(bad), Err(MetaError::InvalidArgument(_))),
                "{bad}"
            );
        }
    }

    #[tokio::test]
    async fn bad_url_is_invalid_argument() {
        let err = PostgresStore::connect("postgres://h/db?no_such_option=1")
            .await
            .expect_err("unknown option");
        assert!(matches!(err, MetaError::InvalidArgument(_)), "{err:?}");
        assert!(!err.is_retryable());
    }

    #[tokio::test]
    async fn unreachable_server_is_retryable_backend_error() {
        let port = tributary_testkit::free_port().expect("free port");
        let err = PostgresStore::connect(&format!(
            "postgres://postgres@127.0.0.1:{port}/db?connect_timeout=2"
        ))
        .await
        .expect_err("nothing listens there");
        assert!(matches!(err, MetaError::Backend { .. }), "{err:?}");
        assert!(err.is_retryable());
    }
}
