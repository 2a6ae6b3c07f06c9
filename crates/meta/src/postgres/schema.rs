//! The PostgreSQL schema: versioned migrations applied at connect, tracked
//! in the one-row `schema_version` table, one migrator at a time (see the
//! backend's module docs).

use deadpool_postgres::Pool;
use tracing::debug;

use super::error::Step;
use super::sql::{backoff, begin_write, retry, MAX_CONFLICT_RETRIES};
use crate::{MetaError, Result};

/// Schema migrations, applied in order. Entry `i` brings the schema from
/// version `i` to version `i + 1`. Never edit an entry once released; append.
pub(super) const MIGRATIONS: &[&str] = &[
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
    // v8: every listener's advertised address (see the SQLite schema's v9).
    r#"
ALTER TABLE brokers ADD COLUMN listeners TEXT NOT NULL DEFAULT '';
"#,
    // v9: SCRAM credentials (see the SQLite schema's v10).
    r#"
CREATE TABLE scram_credentials (
    user_name   TEXT    NOT NULL,
    mechanism   TEXT    NOT NULL,
    salt        BYTEA   NOT NULL,
    stored_key  BYTEA   NOT NULL,
    server_key  BYTEA   NOT NULL,
    iterations  INTEGER NOT NULL,
    PRIMARY KEY (user_name, mechanism)
);
"#,
    // v10: ACL bindings and their version (see the SQLite schema's v11).
    r#"
CREATE TABLE acls (
    resource_type  SMALLINT NOT NULL,
    resource_name  TEXT     NOT NULL,
    pattern_type   SMALLINT NOT NULL,
    principal      TEXT     NOT NULL,
    host           TEXT     NOT NULL,
    operation      SMALLINT NOT NULL,
    permission     SMALLINT NOT NULL,
    PRIMARY KEY (resource_type, resource_name, pattern_type, principal, host, operation, permission)
);
CREATE TABLE acl_version (
    singleton  INTEGER NOT NULL PRIMARY KEY CHECK (singleton = 0),
    version    BIGINT  NOT NULL
);
INSERT INTO acl_version (singleton, version) VALUES (0, 0);
"#,
    // v11: transactions (see the SQLite schema's v12).
    r#"
CREATE TABLE transactions (
    transactional_id     TEXT     NOT NULL PRIMARY KEY,
    producer_id          BIGINT   NOT NULL UNIQUE,
    producer_epoch       SMALLINT NOT NULL,
    last_producer_id     BIGINT   NOT NULL,
    last_producer_epoch  SMALLINT NOT NULL,
    state                SMALLINT NOT NULL,
    timeout_ms           INTEGER  NOT NULL,
    started_ms           BIGINT   NOT NULL,
    updated_ms           BIGINT   NOT NULL,
    version              BIGINT   NOT NULL
);
CREATE INDEX transactions_by_state ON transactions (state, updated_ms);
CREATE TABLE transaction_partitions (
    transactional_id  TEXT    NOT NULL REFERENCES transactions (transactional_id) ON DELETE CASCADE,
    topic_id          UUID    NOT NULL,
    partition_index   INTEGER NOT NULL,
    PRIMARY KEY (transactional_id, topic_id, partition_index)
);
CREATE TABLE transaction_groups (
    transactional_id  TEXT NOT NULL REFERENCES transactions (transactional_id) ON DELETE CASCADE,
    group_id          TEXT NOT NULL,
    PRIMARY KEY (transactional_id, group_id)
);
CREATE TABLE transaction_offsets (
    transactional_id     TEXT    NOT NULL REFERENCES transactions (transactional_id) ON DELETE CASCADE,
    group_id             TEXT    NOT NULL,
    topic                TEXT    NOT NULL,
    partition_index      INTEGER NOT NULL,
    committed_offset     BIGINT  NOT NULL,
    leader_epoch         INTEGER NOT NULL,
    metadata             TEXT,
    commit_timestamp_ms  BIGINT  NOT NULL,
    PRIMARY KEY (transactional_id, group_id, topic, partition_index)
);
CREATE INDEX transaction_offsets_by_group ON transaction_offsets (group_id);
CREATE TABLE open_transactions (
    topic_id         UUID    NOT NULL,
    partition_index  INTEGER NOT NULL,
    producer_id      BIGINT  NOT NULL,
    first_offset     BIGINT  NOT NULL,
    PRIMARY KEY (topic_id, partition_index, producer_id),
    FOREIGN KEY (topic_id, partition_index)
        REFERENCES partitions (topic_id, partition_index) ON DELETE CASCADE
);
CREATE TABLE aborted_transactions (
    topic_id         UUID    NOT NULL,
    partition_index  INTEGER NOT NULL,
    last_offset      BIGINT  NOT NULL,
    producer_id      BIGINT  NOT NULL,
    first_offset     BIGINT  NOT NULL,
    PRIMARY KEY (topic_id, partition_index, last_offset),
    FOREIGN KEY (topic_id, partition_index)
        REFERENCES partitions (topic_id, partition_index) ON DELETE CASCADE
);
"#,
];

/// Create schema `schema` if missing (racing brokers retry).
pub(super) async fn create_schema(pool: &Pool, schema: &str) -> Result<()> {
    // `schema` is validated to [a-z0-9_], so quoting it is enough.
    let sql = format!("CREATE SCHEMA IF NOT EXISTS \"{schema}\"");
    let mut attempt = 0u32;
    loop {
        let res: Step<()> = async {
            pool.get().await?.batch_execute(&sql).await?;
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
pub(super) async fn migrate(pool: &Pool) -> Result<()> {
    let mut attempt = 0u32;
    loop {
        let res: Step<()> = async {
            pool.get()
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
    retry("migrate", || async {
        let mut client = pool.get().await?;
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
