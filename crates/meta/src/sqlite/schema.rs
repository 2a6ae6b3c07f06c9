//! The SQLite schema: versioned migrations applied in order at open,
//! tracked in the `schema_version` table.

use rusqlite::{Connection, TransactionBehavior};
use tracing::debug;

use super::error::Step;
use crate::MetaError;

/// Schema migrations, applied in order. Entry `i` brings the schema from
/// version `i` to version `i + 1`. Never edit an entry once released; append.
pub(super) const MIGRATIONS: &[&str] = &[
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
    // v9: every listener's advertised address (`rules::registry::encode_listeners`).
    r#"
ALTER TABLE brokers ADD COLUMN listeners TEXT NOT NULL DEFAULT '';
"#,
    // v10: SCRAM credentials (RFC 5802), never passwords.
    r#"
CREATE TABLE scram_credentials (
    user_name   TEXT    NOT NULL,
    mechanism   TEXT    NOT NULL,
    salt        BLOB    NOT NULL,
    stored_key  BLOB    NOT NULL,
    server_key  BLOB    NOT NULL,
    iterations  INTEGER NOT NULL,
    PRIMARY KEY (user_name, mechanism)
) WITHOUT ROWID;
"#,
    // v11: ACL bindings (Kafka's codes) and their version, which every
    // change bumps so brokers know to reload.
    r#"
CREATE TABLE acls (
    resource_type  INTEGER NOT NULL,
    resource_name  TEXT    NOT NULL,
    pattern_type   INTEGER NOT NULL,
    principal      TEXT    NOT NULL,
    host           TEXT    NOT NULL,
    operation      INTEGER NOT NULL,
    permission     INTEGER NOT NULL,
    PRIMARY KEY (resource_type, resource_name, pattern_type, principal, host, operation, permission)
) WITHOUT ROWID;
CREATE TABLE acl_version (
    singleton  INTEGER NOT NULL PRIMARY KEY CHECK (singleton = 0),
    version    INTEGER NOT NULL
);
INSERT INTO acl_version (singleton, version) VALUES (0, 0);
"#,
    // v12: transactions. A transactional id's state for its coordinator
    // (`version` grows with every write: writes compare it), the partitions
    // and groups it has added, the offsets it will commit, and in the log
    // the transactions open on each partition (the last stable offset) and
    // the aborted ranges `read_committed` fetches skip.
    r#"
CREATE TABLE transactions (
    transactional_id     TEXT    NOT NULL PRIMARY KEY,
    producer_id          INTEGER NOT NULL UNIQUE,
    producer_epoch       INTEGER NOT NULL,
    last_producer_id     INTEGER NOT NULL,
    last_producer_epoch  INTEGER NOT NULL,
    state                INTEGER NOT NULL,
    timeout_ms           INTEGER NOT NULL,
    started_ms           INTEGER NOT NULL,
    updated_ms           INTEGER NOT NULL,
    version              INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX transactions_by_state ON transactions (state, updated_ms);
CREATE TABLE transaction_partitions (
    transactional_id  TEXT    NOT NULL REFERENCES transactions(transactional_id) ON DELETE CASCADE,
    topic_id          BLOB    NOT NULL,
    partition_index   INTEGER NOT NULL,
    PRIMARY KEY (transactional_id, topic_id, partition_index)
) WITHOUT ROWID;
CREATE TABLE transaction_groups (
    transactional_id  TEXT NOT NULL REFERENCES transactions(transactional_id) ON DELETE CASCADE,
    group_id          TEXT NOT NULL,
    PRIMARY KEY (transactional_id, group_id)
) WITHOUT ROWID;
CREATE TABLE transaction_offsets (
    transactional_id     TEXT    NOT NULL REFERENCES transactions(transactional_id) ON DELETE CASCADE,
    group_id             TEXT    NOT NULL,
    topic                TEXT    NOT NULL,
    partition_index      INTEGER NOT NULL,
    committed_offset     INTEGER NOT NULL,
    leader_epoch         INTEGER NOT NULL,
    metadata             TEXT,
    commit_timestamp_ms  INTEGER NOT NULL,
    PRIMARY KEY (transactional_id, group_id, topic, partition_index)
) WITHOUT ROWID;
CREATE INDEX transaction_offsets_by_group ON transaction_offsets (group_id);
CREATE TABLE open_transactions (
    topic_id         BLOB    NOT NULL,
    partition_index  INTEGER NOT NULL,
    producer_id      INTEGER NOT NULL,
    first_offset     INTEGER NOT NULL,
    PRIMARY KEY (topic_id, partition_index, producer_id),
    FOREIGN KEY (topic_id, partition_index)
        REFERENCES partitions(topic_id, partition_index) ON DELETE CASCADE
) WITHOUT ROWID;
CREATE TABLE aborted_transactions (
    topic_id         BLOB    NOT NULL,
    partition_index  INTEGER NOT NULL,
    last_offset      INTEGER NOT NULL,
    producer_id      INTEGER NOT NULL,
    first_offset     INTEGER NOT NULL,
    PRIMARY KEY (topic_id, partition_index, last_offset),
    FOREIGN KEY (topic_id, partition_index)
        REFERENCES partitions(topic_id, partition_index) ON DELETE CASCADE
) WITHOUT ROWID;
"#,
];

/// Apply the migrations this database has not seen yet, in one transaction.
pub(super) fn migrate(conn: &mut Connection) -> Step<()> {
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
