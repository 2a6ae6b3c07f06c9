//! Conformance suite every metadata backend must pass (all five traits of
//! [`tributary_meta::MetadataStore`]).
//!
//! Each check (`checks.rs`) is an `async fn` taking a fresh, empty store
//! and panicking with a message naming what broke. The [`conformance!`]
//! macro below makes one test per check per backend (`sqlite_memory::*`,
//! `sqlite_file::*`, `postgres::*`, each store on its own database), so a
//! failure names both, and the quick tier can leave PostgreSQL out by
//! name. A new backend adds one `backend!` line here.
//!
//! Behaviour pinned here beyond the trait docs (every backend must agree):
//! - `index_entries`, `entry_for_timestamp`, `partition_offsets` and
//!   `advance_log_start` on a missing topic id fail with
//!   [`MetaError::UnknownTopic`], on a missing partition of an existing topic
//!   with [`MetaError::UnknownPartition`].
//! - `advance_log_start` to an offset at or below the current log start is a
//!   no-op that returns the current offsets (as Kafka's DeleteRecords);
//!   negative offsets and offsets past `next_offset` are
//!   [`MetaError::OffsetOutOfRange`].
//! - `create_topic` with fewer than one partition is
//!   [`MetaError::InvalidPartitions`] with `current = 0`.
//! - Producer sequences wrap from `i32::MAX` to 0.
//! - Segments are alive while an index entry points into them and dead from
//!   the call that removed their last entry (at its `now_ms`; at the wall
//!   clock for `delete_topic` and for commits that produced no entry) until
//!   forgotten. `segment_committed` is true for dead segments,
//!   `list_segments` lists live ones only, `forget_segments` ignores live
//!   ones, `unknown_segments` answers in input order.
//! - Time retention drops leading entries only, stopping at the first one
//!   that is not expired (as Kafka does); a straddling first entry counts
//!   whole toward `retention.bytes`; both limits are strict ("older than",
//!   "exceed").
//! - `compaction_candidates` skips large entries and lone small entries and
//!   returns the lowest run of at least two.
//! - Broker registry: a broker is live while `last_seen_ms >= now_ms -
//!   ttl_ms` (the boundary is live). A heartbeat from the same host:port is a
//!   refresh that also replaces the rack; a refused heartbeat changes
//!   nothing; an expired or deregistered id may be taken by any address.
//!
//! Persistence across restarts is backend-specific and tested by each
//! backend itself.

mod checks;

use std::sync::Arc;

use tributary_meta::{MetadataStore, PostgresStore, SqliteStore};
use tributary_testkit::PgServer;

/// One store per test, kept with what it lives on.
struct Fixture {
    store: Arc<dyn MetadataStore>,
    _dir: Option<tempfile::TempDir>,
    _server: Option<PgServer>,
}

async fn sqlite_memory() -> Fixture {
    Fixture {
        store: Arc::new(SqliteStore::open_in_memory().await.expect("open in memory")),
        _dir: None,
        _server: None,
    }
}

async fn sqlite_file() -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SqliteStore::open(&dir.path().join("meta.db"))
        .await
        .expect("open file");
    Fixture {
        store: Arc::new(store),
        _dir: Some(dir),
        _server: None,
    }
}

async fn postgres() -> Fixture {
    let server =
        PgServer::start().unwrap_or_else(|e| panic!("cannot start PostgreSQL for the test: {e:#}"));
    let url = server.url();
    let store = PostgresStore::connect(&url)
        .await
        .unwrap_or_else(|e| panic!("connect {url}: {e}"));
    Fixture {
        store: Arc::new(store),
        _dir: None,
        _server: Some(server),
    }
}

/// `backend!(name, checks...)`: a module `name` with one test per check,
/// each on a fresh store from the fixture function `name`.
macro_rules! backend {
    ($backend:ident, $($check:ident),* $(,)?) => {
        mod $backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $check() {
                    let fixture = super::$backend().await;
                    super::checks::$check(&*fixture.store).await;
                }
            )*
        }
    };
}

/// Every check, against every backend.
macro_rules! conformance {
    ($($check:ident),* $(,)?) => {
        backend!(sqlite_memory, $($check),*);
        backend!(sqlite_file, $($check),*);
        backend!(postgres, $($check),*);
    };
}

conformance!(
    topic_lifecycle,
    create_partitions_and_configs,
    dense_offsets,
    index_merges_adjacent_batches,
    index_entries_lookup,
    entry_for_timestamp,
    duplicate_segment_rejected,
    commit_deadline_and_abandon,
    idempotent_producer,
    producer_sequence_wraps,
    producer_state_expires,
    producer_ids_unique,
    rejects_unknown_topic_or_partition,
    delete_topic_returns_orphaned_segments,
    delete_topic_drops_its_group_offsets,
    advance_log_start,
    unknown_partition_errors,
    concurrent_commits,
    group_offsets,
    group_claims,
    group_state_saved,
    groups_expire,
    entryless_commit_is_dead,
    retention_by_time,
    retention_by_bytes,
    retention_keeps_newest_and_never_moves_back,
    delete_records_then_drop_expired,
    dead_segments_grace_and_forget,
    unknown_segments,
    compaction_candidates,
    replace_entries_swaps,
    replace_entries_refuses_stale,
    broker_registry,
    leases,
    scram_credentials,
    acls,
    transactions,
);
