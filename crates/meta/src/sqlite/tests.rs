//! Tests of the SQLite backend as a whole (durability, plans, recovery); the
//! conformance suite is in `tests/conformance`.

use std::collections::BTreeMap;

use uuid::Uuid;

use std::path::PathBuf;

use super::conn::{parse_url, SqliteStore};
use super::log::SQL_ENTRY_FOR_TIMESTAMP;
use super::rows::SQL_ENTRIES_FROM;
use super::schema::MIGRATIONS;
use crate::{
    BatchOutcome, CommittedOffset, GroupStore, LogStore, MetaError, PartitionOffsets, PendingBatch,
    SegmentCommit, TopicStore,
};

fn batch(topic_id: Uuid, partition: i32, byte_start: u64, count: i64) -> PendingBatch {
    PendingBatch {
        topic_id,
        partition,
        byte_start,
        byte_len: 100,
        offset_count: count,
        max_timestamp: 1_000,
        producer: None,
        txn: Default::default(),
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
        PartitionOffsets::settled(0, 3)
    );
    assert_eq!(
        store.partition_offsets(topic.id, 1).await.expect("p1"),
        PartitionOffsets::settled(1, 4)
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
    let version: i64 = store
        .writer_for_tests()
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
    let conn = store.writer_for_tests();
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
    let conn = store.writer_for_tests();
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
        super::maintenance::SQL_DEAD_SEGMENTS,
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
                (!d.starts_with("SCAN") || d == "SCAN CONSTANT ROW") && !d.contains("TEMP B-TREE"),
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
    let poisoner = store.clone();
    let res = tokio::task::spawn_blocking(move || {
        let conn = poisoner
            .writer_mutex_for_tests()
            .lock()
            .expect("first lock");
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
    assert!(store.writer_mutex_for_tests().is_poisoned());

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
