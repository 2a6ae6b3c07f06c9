//! The checks of the conformance suite (see `main.rs`): each takes a
//! fresh, empty store and panics with a message naming what broke.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{SystemTime, UNIX_EPOCH};

use uuid::Uuid;

use tributary_meta::{AbortedTxn, TxnOffsetRefusal, TxnRecord, TxnRole, TxnState};
use tributary_meta::{
    BatchOutcome, BatchRejection, BrokerInfo, CommitDeadline, CommittedOffset, GroupClaim,
    IndexEntry, MetaError, MetadataStore, PartitionOffsets, PendingBatch, ProducerBatch,
    SegmentCommit, TopicMeta,
};

/// A lease has one holder at a time until it expires; the holder renews it.
pub(crate) async fn leases(store: &dyn MetadataStore) {
    let take = |holder: &'static str, now: i64| store.acquire_lease("maint", holder, now, 100);
    assert!(
        take("a", 0).await.expect("a takes"),
        "a free lease is granted"
    );
    assert!(!take("b", 50).await.expect("b asks"), "held by a");
    assert!(take("a", 60).await.expect("a renews"), "the holder renews");
    assert!(!take("b", 150).await.expect("b asks"), "renewed until 160");
    assert!(take("b", 160).await.expect("b takes"), "expired at 160");
    assert!(!take("a", 170).await.expect("a asks"), "now b's");
    assert!(
        store
            .acquire_lease("other", "a", 170, 100)
            .await
            .expect("other lease"),
        "leases are independent"
    );
}

// ---------------------------------------------------------------- helpers

fn configs(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

async fn create(store: &dyn MetadataStore, name: &str, partitions: i32) -> TopicMeta {
    store
        .create_topic(name, partitions, BTreeMap::new())
        .await
        .unwrap_or_else(|e| panic!("create_topic {name} failed: {e}"))
}

/// A non-idempotent batch.
fn batch(
    topic_id: Uuid,
    partition: i32,
    byte_start: u64,
    byte_len: u64,
    offset_count: i64,
    max_timestamp: i64,
) -> PendingBatch {
    PendingBatch {
        topic_id,
        partition,
        byte_start,
        byte_len,
        offset_count,
        max_timestamp,
        producer: None,
        txn: Default::default(),
    }
}

/// An idempotent batch of `count` records starting at `base_sequence`.
fn pbatch(
    topic_id: Uuid,
    partition: i32,
    byte_start: u64,
    producer: (i64, i16),
    base_sequence: i32,
    count: i32,
) -> PendingBatch {
    PendingBatch {
        producer: Some(ProducerBatch {
            producer_id: producer.0,
            producer_epoch: producer.1,
            base_sequence,
            last_sequence: tributary_protocol::sequence::add(base_sequence, count - 1),
        }),
        ..batch(topic_id, partition, byte_start, 50, i64::from(count), 0)
    }
}

fn segment(key: &str, batches: Vec<PendingBatch>) -> SegmentCommit {
    let size = batches
        .iter()
        .map(|b| b.byte_start + b.byte_len)
        .max()
        .unwrap_or(0);
    SegmentCommit {
        key: key.to_owned(),
        size,
        batches,
        deadline: None,
    }
}

async fn commit(store: &dyn MetadataStore, seg: SegmentCommit) -> Vec<BatchOutcome> {
    let outcomes = store
        .commit_segment(&seg)
        .await
        .unwrap_or_else(|e| panic!("commit_segment {} failed: {e}", seg.key));
    assert_eq!(
        outcomes.len(),
        seg.batches.len(),
        "one outcome per batch for segment {}",
        seg.key
    );
    outcomes
}

fn appended(outcome: BatchOutcome) -> i64 {
    match outcome {
        BatchOutcome::Appended { base_offset } => base_offset,
        other => panic!("expected Appended, got {other:?}"),
    }
}

async fn offsets(store: &dyn MetadataStore, topic_id: Uuid, partition: i32) -> PartitionOffsets {
    store
        .partition_offsets(topic_id, partition)
        .await
        .unwrap_or_else(|e| panic!("partition_offsets {topic_id}/{partition} failed: {e}"))
}

async fn entries(
    store: &dyn MetadataStore,
    topic_id: Uuid,
    partition: i32,
    from: i64,
) -> Vec<IndexEntry> {
    store
        .index_entries(topic_id, partition, from, usize::MAX)
        .await
        .unwrap_or_else(|e| panic!("index_entries {topic_id}/{partition} failed: {e}"))
}

/// Wall-clock milliseconds since the epoch.
fn wall_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).expect("wall clock fits in i64"))
        .expect("wall clock after 1970")
}

/// Keys of the segments dead at or before `before_ms`.
async fn dead_keys(store: &dyn MetadataStore, before_ms: i64) -> BTreeSet<String> {
    store
        .dead_segments(before_ms, usize::MAX)
        .await
        .unwrap_or_else(|e| panic!("dead_segments {before_ms} failed: {e}"))
        .into_iter()
        .map(|d| d.key)
        .collect()
}

fn keys(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|k| (*k).to_owned()).collect()
}

/// `(base_offset, last_offset, segment_key)` of each entry.
fn spans(entries: &[IndexEntry]) -> Vec<(i64, i64, String)> {
    entries
        .iter()
        .map(|e| (e.base_offset, e.last_offset, e.segment_key.clone()))
        .collect()
}

/// One segment per entry: `(key, byte_len, offset_count, max_timestamp)`.
async fn commit_entries(
    store: &dyn MetadataStore,
    topic_id: Uuid,
    specs: &[(&str, u64, i64, i64)],
) {
    for (key, len, count, ts) in specs {
        commit(
            store,
            segment(key, vec![batch(topic_id, 0, 0, *len, *count, *ts)]),
        )
        .await;
    }
}

fn offset(topic: &str, partition: i32, offset: i64, metadata: Option<&str>) -> CommittedOffset {
    CommittedOffset {
        topic: topic.to_owned(),
        partition,
        offset,
        leader_epoch: 3,
        metadata: metadata.map(str::to_owned),
        commit_timestamp_ms: 1_700_000_000_000 + offset,
    }
}

// ---------------------------------------------------------------- topics

/// Create, duplicate, get, get by id, list order, delete.
pub(crate) async fn topic_lifecycle(store: &dyn MetadataStore) {
    assert!(store.list_topics().await.expect("list").is_empty());
    let b = store
        .create_topic("beta", 3, configs(&[("retention.ms", "60000")]))
        .await
        .expect("create beta");
    assert_eq!(b.name, "beta");
    assert_eq!(b.partitions, 3);
    assert_eq!(b.configs, configs(&[("retention.ms", "60000")]));
    let a = create(store, "alpha", 1).await;
    assert_ne!(a.id, b.id, "topic ids are unique");

    let dup = store.create_topic("beta", 5, BTreeMap::new()).await;
    assert!(
        matches!(dup, Err(MetaError::TopicExists(ref n)) if n == "beta"),
        "duplicate create must be TopicExists, got {dup:?}"
    );
    assert_eq!(
        store.get_topic("beta").await.expect("get"),
        Some(b.clone()),
        "failed duplicate create must not change the topic"
    );

    for bad in [0, -1] {
        let r = store.create_topic("bad", bad, BTreeMap::new()).await;
        assert!(
            matches!(r, Err(MetaError::InvalidPartitions { requested, current: 0 }) if requested == bad),
            "create with {bad} partitions must be InvalidPartitions, got {r:?}"
        );
    }
    assert_eq!(store.get_topic("bad").await.expect("get"), None);

    assert_eq!(
        store.get_topic_by_id(b.id).await.expect("by id"),
        Some(b.clone())
    );
    assert_eq!(
        store.get_topic_by_id(Uuid::new_v4()).await.expect("by id"),
        None
    );
    assert_eq!(store.get_topic("missing").await.expect("get"), None);
    assert_eq!(
        store.list_topics().await.expect("list"),
        vec![a.clone(), b.clone()],
        "list_topics is ordered by name"
    );
    for p in 0..3 {
        assert_eq!(
            offsets(store, b.id, p).await,
            PartitionOffsets::settled(0, 0)
        );
    }

    store.delete_topic("beta").await.expect("delete");
    assert_eq!(store.get_topic("beta").await.expect("get"), None);
    assert_eq!(store.get_topic_by_id(b.id).await.expect("by id"), None);
    assert_eq!(store.list_topics().await.expect("list"), vec![a]);
    let again = store.delete_topic("beta").await;
    assert!(
        matches!(again, Err(MetaError::UnknownTopic(_))),
        "deleting a missing topic must be UnknownTopic, got {again:?}"
    );

    // The name is free again and gets a new id.
    let b2 = create(store, "beta", 1).await;
    assert_ne!(b2.id, b.id, "a recreated topic gets a new id");
    assert!(
        b2.configs.is_empty(),
        "configs of the deleted topic are gone"
    );
}

/// Growing partitions and altering configs.
pub(crate) async fn create_partitions_and_configs(store: &dyn MetadataStore) {
    let t = create(store, "t", 2).await;
    let grown = store.create_partitions("t", 5).await.expect("grow");
    assert_eq!(grown.partitions, 5);
    assert_eq!(grown.id, t.id);
    assert_eq!(
        store.get_topic("t").await.expect("get"),
        Some(grown.clone())
    );
    for p in 0..5 {
        assert_eq!(offsets(store, t.id, p).await.next_offset, 0);
    }
    for bad in [5, 3] {
        let r = store.create_partitions("t", bad).await;
        assert!(
            matches!(r, Err(MetaError::InvalidPartitions { requested, current: 5 }) if requested == bad),
            "create_partitions to {bad} must be InvalidPartitions, got {r:?}"
        );
    }
    let r = store.create_partitions("missing", 3).await;
    assert!(
        matches!(r, Err(MetaError::UnknownTopic(_))),
        "create_partitions on a missing topic must be UnknownTopic, got {r:?}"
    );

    let changed = store
        .alter_topic_configs(
            "t",
            BTreeMap::from([
                ("retention.ms".to_owned(), Some("1000".to_owned())),
                ("cleanup.policy".to_owned(), Some("delete".to_owned())),
            ]),
        )
        .await
        .expect("alter");
    assert_eq!(
        changed.configs,
        configs(&[("cleanup.policy", "delete"), ("retention.ms", "1000")])
    );
    let changed = store
        .alter_topic_configs(
            "t",
            BTreeMap::from([
                ("retention.ms".to_owned(), Some("2000".to_owned())),
                ("cleanup.policy".to_owned(), None),
                ("never.set".to_owned(), None),
            ]),
        )
        .await
        .expect("alter again");
    assert_eq!(changed.configs, configs(&[("retention.ms", "2000")]));
    assert_eq!(
        store.get_topic("t").await.expect("get"),
        Some(changed.clone()),
        "altered configs are stored"
    );
    assert_eq!(
        store.get_topic_by_id(t.id).await.expect("get by id"),
        Some(changed)
    );
    let r = store.alter_topic_configs("missing", BTreeMap::new()).await;
    assert!(
        matches!(r, Err(MetaError::UnknownTopic(_))),
        "alter on a missing topic must be UnknownTopic, got {r:?}"
    );
}

// ---------------------------------------------------------------- offsets and index

/// Offsets are dense per partition across commits, partitions and topics.
pub(crate) async fn dense_offsets(store: &dyn MetadataStore) {
    let a = create(store, "a", 3).await;
    let b = create(store, "b", 1).await;
    let mut expected: BTreeMap<(Uuid, i32), i64> = BTreeMap::new();
    for i in 0..6u64 {
        let batches = vec![
            batch(a.id, 0, 0, 10, 3, 0),
            batch(b.id, 0, 10, 10, 1, 0),
            batch(a.id, (i % 3) as i32, 20, 10, 5, 0),
            batch(a.id, 2, 30, 10, 2, 0),
        ];
        let outcomes = commit(store, segment(&format!("dense-{i}"), batches.clone())).await;
        for (bt, out) in batches.iter().zip(outcomes) {
            let next = expected.entry((bt.topic_id, bt.partition)).or_insert(0);
            assert_eq!(
                appended(out),
                *next,
                "batch of {}/{} in dense-{i} must start at the partition's next offset",
                bt.topic_id,
                bt.partition
            );
            *next += bt.offset_count;
        }
    }
    for ((topic_id, partition), next) in &expected {
        assert_eq!(
            offsets(store, *topic_id, *partition).await,
            PartitionOffsets::settled(0, *next)
        );
        // The index covers [0, next) exactly, with no gap and no overlap.
        let mut cursor = 0;
        for e in entries(store, *topic_id, *partition, 0).await {
            assert_eq!(e.base_offset, cursor, "index entries are contiguous");
            assert!(e.last_offset >= e.base_offset);
            cursor = e.last_offset + 1;
        }
        assert_eq!(cursor, *next, "index entries end at next_offset");
    }
    let segments = store.list_segments().await.expect("list segments");
    let want: Vec<String> = (0..6).map(|i| format!("dense-{i}")).collect();
    assert_eq!(segments, want, "list_segments is ordered");
}

/// Byte-adjacent consecutive batches of one partition share one entry;
/// anything else starts a new one.
pub(crate) async fn index_merges_adjacent_batches(store: &dyn MetadataStore) {
    let t = create(store, "t", 2).await;
    let outcomes = commit(
        store,
        segment(
            "merge",
            vec![
                // p0: three adjacent batches -> one entry [0, 9]
                batch(t.id, 0, 0, 100, 2, 50),
                batch(t.id, 0, 100, 50, 3, 70),
                batch(t.id, 0, 150, 25, 5, 60),
                // p1: two adjacent batches -> one entry
                batch(t.id, 1, 175, 10, 1, 5),
                batch(t.id, 1, 185, 10, 1, 6),
                // p0 again after p1's bytes: not adjacent -> new entry
                batch(t.id, 0, 195, 40, 4, 10),
                // p1 with a gap in the bytes: new entry
                batch(t.id, 1, 300, 10, 2, 7),
            ],
        ),
    )
    .await;
    let bases: Vec<i64> = outcomes.into_iter().map(appended).collect();
    assert_eq!(bases, vec![0, 2, 5, 0, 1, 10, 2]);

    // The entries of one segment, as used to resolve a lost commit answer.
    let by_segment: Vec<(i32, i64, i64, u64)> = store
        .segment_entries("merge")
        .await
        .expect("segment_entries")
        .into_iter()
        .map(|e| (e.partition, e.base_offset, e.last_offset, e.byte_start))
        .collect();
    assert_eq!(
        by_segment,
        vec![
            (0, 0, 9, 0),
            (0, 10, 13, 195),
            (1, 0, 1, 175),
            (1, 2, 3, 300)
        ],
        "segment_entries lists every entry of the segment in partition/offset order"
    );
    assert!(store
        .segment_entries("no-such-segment")
        .await
        .expect("segment_entries")
        .is_empty());

    let p0 = entries(store, t.id, 0, 0).await;
    assert_eq!(
        p0,
        vec![
            IndexEntry {
                topic_id: t.id,
                partition: 0,
                base_offset: 0,
                last_offset: 9,
                segment_key: "merge".into(),
                byte_start: 0,
                byte_len: 175,
                max_timestamp: 70,
            },
            IndexEntry {
                topic_id: t.id,
                partition: 0,
                base_offset: 10,
                last_offset: 13,
                segment_key: "merge".into(),
                byte_start: 195,
                byte_len: 40,
                max_timestamp: 10,
            },
        ],
        "adjacent p0 batches merge, the later non-adjacent one does not"
    );
    let p1 = entries(store, t.id, 1, 0).await;
    assert_eq!(
        p1.iter()
            .map(|e| (
                e.base_offset,
                e.last_offset,
                e.byte_start,
                e.byte_len,
                e.max_timestamp
            ))
            .collect::<Vec<_>>(),
        vec![(0, 1, 175, 20, 6), (2, 3, 300, 10, 7)]
    );

    // A new segment never extends an entry of an earlier one, even if the
    // byte ranges happen to line up.
    commit(
        store,
        segment("merge-2", vec![batch(t.id, 0, 235, 10, 1, 1)]),
    )
    .await;
    let p0 = entries(store, t.id, 0, 0).await;
    assert_eq!(p0.len(), 3);
    assert_eq!(p0[2].segment_key, "merge-2");
    assert_eq!((p0[2].base_offset, p0[2].last_offset), (14, 14));
}

/// Lookups from the middle of an entry, limits, and past the end.
pub(crate) async fn index_entries_lookup(store: &dyn MetadataStore) {
    let t = create(store, "t", 1).await;
    // Entries: [0,9] [10,14] [15,15] [16,35], one segment each.
    for (i, count) in [10, 5, 1, 20].into_iter().enumerate() {
        commit(
            store,
            segment(&format!("s{i}"), vec![batch(t.id, 0, 0, 100, count, 0)]),
        )
        .await;
    }
    let all = entries(store, t.id, 0, 0).await;
    assert_eq!(
        all.iter()
            .map(|e| (e.base_offset, e.last_offset))
            .collect::<Vec<_>>(),
        vec![(0, 9), (10, 14), (15, 15), (16, 35)]
    );
    let mid = entries(store, t.id, 0, 12).await;
    assert_eq!(
        mid.first().map(|e| e.base_offset),
        Some(10),
        "a lookup inside an entry returns the whole entry that holds the offset"
    );
    assert_eq!(mid.len(), 3);
    assert_eq!(entries(store, t.id, 0, 14).await[0].base_offset, 10);
    assert_eq!(entries(store, t.id, 0, 15).await[0].base_offset, 15);
    assert_eq!(entries(store, t.id, 0, 35).await.len(), 1);
    assert!(entries(store, t.id, 0, 36).await.is_empty(), "past the end");
    assert!(entries(store, t.id, 0, 1_000).await.is_empty());
    let limited = store
        .index_entries(t.id, 0, 3, 2)
        .await
        .expect("limited lookup");
    assert_eq!(
        limited.iter().map(|e| e.base_offset).collect::<Vec<_>>(),
        vec![0, 10],
        "limit caps the number of entries"
    );
    assert!(store
        .index_entries(t.id, 0, 0, 0)
        .await
        .expect("limit 0")
        .is_empty());
}

/// First entry whose max timestamp reaches the target, in offset order.
pub(crate) async fn entry_for_timestamp(store: &dyn MetadataStore) {
    let t = create(store, "t", 2).await;
    // Timestamps not monotone: 100, 300, 200, 400.
    for (i, ts) in [100, 300, 200, 400].into_iter().enumerate() {
        commit(
            store,
            segment(&format!("ts{i}"), vec![batch(t.id, 0, 0, 10, 10, ts)]),
        )
        .await;
    }
    let at = |ts: i64| async move {
        store
            .entry_for_timestamp(t.id, 0, ts)
            .await
            .expect("entry_for_timestamp")
            .map(|e| e.base_offset)
    };
    assert_eq!(at(i64::MIN).await, Some(0));
    assert_eq!(at(0).await, Some(0));
    assert_eq!(at(100).await, Some(0));
    assert_eq!(at(101).await, Some(10));
    assert_eq!(
        at(250).await,
        Some(10),
        "first in offset order, not closest"
    );
    assert_eq!(at(300).await, Some(10));
    assert_eq!(at(301).await, Some(30));
    assert_eq!(at(400).await, Some(30));
    assert_eq!(at(401).await, None, "no entry reaches the timestamp");
    assert_eq!(
        store
            .entry_for_timestamp(t.id, 1, 0)
            .await
            .expect("empty partition"),
        None
    );
    let e = store
        .entry_for_timestamp(t.id, 0, 250)
        .await
        .expect("lookup")
        .expect("entry");
    assert_eq!((e.segment_key.as_str(), e.max_timestamp), ("ts1", 300));

    // Entries entirely below the log start are ignored; one straddling it
    // is still returned.
    store.advance_log_start(t.id, 0, 15).await.expect("advance");
    assert_eq!(at(0).await, Some(10));
    assert_eq!(at(100).await, Some(10));
    store.advance_log_start(t.id, 0, 20).await.expect("advance");
    assert_eq!(at(0).await, Some(20));
    assert_eq!(at(250).await, Some(30), "hidden entries do not answer");
    assert_eq!(at(200).await, Some(20));
}

/// Committing a key twice fails and changes nothing.
pub(crate) async fn duplicate_segment_rejected(store: &dyn MetadataStore) {
    let t = create(store, "t", 1).await;
    assert!(!store.segment_committed("seg").await.expect("committed"));
    commit(store, segment("seg", vec![batch(t.id, 0, 0, 10, 4, 0)])).await;
    assert!(store.segment_committed("seg").await.expect("committed"));
    let before = entries(store, t.id, 0, 0).await;

    let again = segment(
        "seg",
        vec![batch(t.id, 0, 0, 10, 4, 0), batch(t.id, 0, 10, 10, 4, 0)],
    );
    let r = store.commit_segment(&again).await;
    assert!(
        matches!(r, Err(MetaError::SegmentExists(ref k)) if k == "seg"),
        "second commit of a key must be SegmentExists, got {r:?}"
    );
    assert!(
        r.as_ref().map_err(MetaError::is_retryable).err() == Some(false),
        "SegmentExists is not retryable"
    );
    assert_eq!(
        offsets(store, t.id, 0).await.next_offset,
        4,
        "no offsets assigned"
    );
    assert_eq!(entries(store, t.id, 0, 0).await, before, "no entries added");
    assert_eq!(
        store.list_segments().await.expect("list"),
        vec!["seg".to_owned()]
    );
    assert!(!store.segment_committed("other").await.expect("committed"));

    // A segment whose every batch is rejected is still recorded, so an
    // unknown-outcome retry can tell it landed.
    let outcomes = commit(
        store,
        segment("all-rejected", vec![batch(Uuid::new_v4(), 0, 0, 10, 1, 0)]),
    )
    .await;
    assert_eq!(
        outcomes,
        vec![BatchOutcome::Rejected(
            BatchRejection::UnknownTopicOrPartition
        )]
    );
    assert!(store
        .segment_committed("all-rejected")
        .await
        .expect("committed"));
    let empty = commit(store, segment("empty", vec![])).await;
    assert!(empty.is_empty());
    assert!(store.segment_committed("empty").await.expect("committed"));
}

/// Idempotent-producer state of a producer idle for longer than the
/// expiration is forgotten (Kafka's `producer.id.expiration.ms`): its next
/// batch is accepted as a new producer's instead of being checked against
/// the old sequence.
pub(crate) async fn producer_state_expires(store: &dyn MetadataStore) {
    let t = create(store, "t", 2).await;
    let p = store.allocate_producer_id().await.expect("pid");
    commit(store, segment("s1", vec![pbatch(t.id, 0, 0, p, 0, 5)])).await;
    commit(store, segment("s2", vec![pbatch(t.id, 1, 0, p, 0, 5)])).await;
    let hour = 3_600_000;
    assert_eq!(
        store
            .expire_producers(wall_ms(), hour)
            .await
            .expect("expire"),
        0,
        "fresh producers stay"
    );
    let gap = |key: &str| segment(key, vec![pbatch(t.id, 0, 0, p, 10, 1)]);
    assert_eq!(
        commit(store, gap("gap-1")).await,
        vec![BatchOutcome::Rejected(BatchRejection::OutOfOrderSequence)],
        "a known producer's sequence gap is refused"
    );
    let removed = store
        .expire_producers(wall_ms() + 2 * hour, hour)
        .await
        .expect("expire");
    assert_eq!(removed, 2, "one state per partition the producer wrote");
    assert!(matches!(
        commit(store, gap("gap-2")).await[..],
        [BatchOutcome::Appended { base_offset: 5 }]
    ));
    assert_eq!(
        store
            .expire_producers(wall_ms() + 2 * hour, 10 * hour)
            .await
            .expect("expire"),
        0,
        "the producer wrote again just now"
    );
}

/// A commit past its deadline by the store's clock is refused and changes
/// nothing (defect: the janitor may already have deleted the object); an
/// abandoned key can never be committed afterwards and is dead at once, so
/// the janitor deletes its object; abandoning a committed key is refused and
/// keeps its entries.
pub(crate) async fn commit_deadline_and_abandon(store: &dyn MetadataStore) {
    let t = create(store, "t", 1).await;
    let now = wall_ms();
    let mut late = segment("late", vec![batch(t.id, 0, 0, 10, 4, 0)]);
    late.deadline = Some(CommitDeadline {
        created_ms: now - 60_000,
        max_age_ms: 30_000,
    });
    let r = store.commit_segment(&late).await;
    assert!(
        matches!(r, Err(MetaError::CommitTooLate { ref key, max_age_ms: 30_000, .. }) if key == "late"),
        "a commit past its deadline must be CommitTooLate, got {r:?}"
    );
    assert!(
        r.as_ref().map_err(MetaError::is_retryable).err() == Some(false),
        "CommitTooLate is not retryable"
    );
    assert!(!store.segment_committed("late").await.expect("committed"));
    assert_eq!(
        offsets(store, t.id, 0).await.next_offset,
        0,
        "nothing assigned"
    );
    assert!(entries(store, t.id, 0, 0).await.is_empty());

    // In time: committed as usual.
    let mut timely = segment("timely", vec![batch(t.id, 0, 0, 10, 4, 0)]);
    timely.deadline = Some(CommitDeadline {
        created_ms: now,
        max_age_ms: 600_000,
    });
    commit(store, timely).await;
    assert_eq!(offsets(store, t.id, 0).await.next_offset, 4);

    // Abandoning the refused upload: recorded dead, never committable.
    assert!(store.abandon_segment("late", 10).await.expect("abandon"));
    assert!(!store
        .abandon_segment("late", 10)
        .await
        .expect("abandon again"));
    let r = store
        .commit_segment(&segment("late", vec![batch(t.id, 0, 0, 10, 4, 0)]))
        .await;
    assert!(
        matches!(r, Err(MetaError::SegmentExists(_))),
        "an abandoned key cannot be committed, got {r:?}"
    );
    assert_eq!(offsets(store, t.id, 0).await.next_offset, 4);
    assert!(dead_keys(store, wall_ms() + 1).await.contains("late"));
    assert!(store
        .unknown_segments(&["late".to_owned()])
        .await
        .expect("unknown")
        .is_empty());

    // Abandoning what was committed is refused and changes nothing.
    assert!(!store.abandon_segment("timely", 10).await.expect("abandon"));
    assert_eq!(
        store
            .segment_entries("timely")
            .await
            .expect("entries")
            .len(),
        1
    );
    assert!(!dead_keys(store, wall_ms() + 1).await.contains("timely"));
}

/// A commit that left no index entry (every batch rejected or a duplicate,
/// or no batch at all) is dead from its commit time, so the janitor removes
/// the object; one accepted batch keeps it alive.
pub(crate) async fn entryless_commit_is_dead(store: &dyn MetadataStore) {
    let t = create(store, "t", 1).await;
    let p = store.allocate_producer_id().await.expect("pid");
    let before = wall_ms();
    commit(
        store,
        segment("rejected", vec![batch(Uuid::new_v4(), 0, 0, 10, 1, 0)]),
    )
    .await;
    commit(store, segment("empty", vec![])).await;
    commit(store, segment("first", vec![pbatch(t.id, 0, 0, p, 0, 2)])).await;
    let dup = commit(store, segment("retry", vec![pbatch(t.id, 0, 0, p, 0, 2)])).await;
    assert_eq!(dup, vec![BatchOutcome::Duplicate { base_offset: 0 }]);
    let mixed = commit(
        store,
        segment(
            "mixed",
            vec![
                batch(Uuid::new_v4(), 0, 0, 10, 1, 0),
                batch(t.id, 0, 10, 10, 1, 0),
            ],
        ),
    )
    .await;
    assert_eq!(mixed[1], BatchOutcome::Appended { base_offset: 2 });
    let after = wall_ms();

    let dead = store.dead_segments(i64::MAX, 100).await.expect("dead");
    assert_eq!(
        dead.iter().map(|d| d.key.clone()).collect::<BTreeSet<_>>(),
        keys(&["empty", "rejected", "retry"]),
        "entry-less commits are dead, the others alive"
    );
    for d in &dead {
        assert!(
            (before..=after).contains(&d.dead_since_ms),
            "{} dead at {} outside its commit [{before}, {after}]",
            d.key,
            d.dead_since_ms
        );
        assert!(store.segment_committed(&d.key).await.expect("committed"));
    }
    assert_eq!(
        store.list_segments().await.expect("list"),
        vec!["first".to_owned(), "mixed".to_owned()]
    );
    assert!(
        store
            .unknown_segments(&["rejected".to_owned()])
            .await
            .expect("unknown")
            .is_empty(),
        "a dead segment is not an orphan"
    );
}

// ---------------------------------------------------------------- producers

/// Duplicate retries, gaps, fencing and epoch bumps.
pub(crate) async fn idempotent_producer(store: &dyn MetadataStore) {
    let t = create(store, "t", 2).await;
    let (pid, epoch) = store.allocate_producer_id().await.expect("pid");
    assert_eq!(epoch, 0);
    let p = (pid, epoch);

    // First batch: any sequence is accepted when nothing is known.
    let out = commit(store, segment("p1", vec![pbatch(t.id, 0, 0, p, 7, 3)])).await;
    assert_eq!(out, vec![BatchOutcome::Appended { base_offset: 0 }]);
    // Next in sequence, several batches in one segment (adjacent -> merged).
    let out = commit(
        store,
        segment(
            "p2",
            vec![
                pbatch(t.id, 0, 0, p, 10, 2),
                pbatch(t.id, 0, 50, p, 12, 4),
                pbatch(t.id, 1, 100, p, 0, 1),
            ],
        ),
    )
    .await;
    assert_eq!(
        out,
        vec![
            BatchOutcome::Appended { base_offset: 3 },
            BatchOutcome::Appended { base_offset: 5 },
            BatchOutcome::Appended { base_offset: 0 },
        ]
    );

    // A retry of the last batch and of an older remembered batch.
    let out = commit(
        store,
        segment(
            "p3",
            vec![pbatch(t.id, 0, 0, p, 12, 4), pbatch(t.id, 0, 50, p, 7, 3)],
        ),
    )
    .await;
    assert_eq!(
        out,
        vec![
            BatchOutcome::Duplicate { base_offset: 5 },
            BatchOutcome::Duplicate { base_offset: 0 },
        ],
        "retries answer with the original offsets"
    );
    assert_eq!(
        offsets(store, t.id, 0).await.next_offset,
        9,
        "duplicates assign nothing"
    );
    assert_eq!(
        entries(store, t.id, 0, 0)
            .await
            .last()
            .map(|e| e.last_offset),
        Some(8),
        "duplicates add no index entry"
    );

    // Gap (16 expected), and a batch overlapping the last one.
    let out = commit(
        store,
        segment(
            "p4",
            vec![pbatch(t.id, 0, 0, p, 17, 1), pbatch(t.id, 0, 50, p, 14, 4)],
        ),
    )
    .await;
    assert_eq!(
        out,
        vec![
            BatchOutcome::Rejected(BatchRejection::OutOfOrderSequence),
            BatchOutcome::Rejected(BatchRejection::OutOfOrderSequence),
        ]
    );
    assert_eq!(offsets(store, t.id, 0).await.next_offset, 9);

    // Remembering covers the last 5 batches: after 5 more, the first is
    // forgotten and its retry is out of order.
    for seq in 16..21 {
        let out = commit(
            store,
            segment(&format!("p5-{seq}"), vec![pbatch(t.id, 0, 0, p, seq, 1)]),
        )
        .await;
        assert_eq!(
            out,
            vec![BatchOutcome::Appended {
                base_offset: i64::from(seq) - 7
            }]
        );
    }
    let out = commit(
        store,
        segment(
            "p6",
            vec![pbatch(t.id, 0, 0, p, 16, 1), pbatch(t.id, 0, 50, p, 12, 4)],
        ),
    )
    .await;
    assert_eq!(
        out,
        vec![
            BatchOutcome::Duplicate { base_offset: 9 },
            BatchOutcome::Rejected(BatchRejection::OutOfOrderSequence),
        ],
        "the 5 most recent batches are remembered, older ones are not"
    );

    // Bump the epoch: sequences restart at 0, anything else is out of order.
    let bumped = (pid, epoch + 1);
    let out = commit(
        store,
        segment("e1", vec![pbatch(t.id, 0, 0, bumped, 21, 1)]),
    )
    .await;
    assert_eq!(
        out,
        vec![BatchOutcome::Rejected(BatchRejection::OutOfOrderSequence)]
    );
    let out = commit(store, segment("e2", vec![pbatch(t.id, 0, 0, bumped, 0, 2)])).await;
    assert_eq!(out, vec![BatchOutcome::Appended { base_offset: 14 }]);
    // The old epoch is now fenced, even for what would be a duplicate.
    let out = commit(
        store,
        segment(
            "e3",
            vec![pbatch(t.id, 0, 0, p, 20, 1), pbatch(t.id, 0, 50, p, 21, 1)],
        ),
    )
    .await;
    assert_eq!(
        out,
        vec![
            BatchOutcome::Rejected(BatchRejection::InvalidProducerEpoch),
            BatchOutcome::Rejected(BatchRejection::InvalidProducerEpoch),
        ]
    );
    // The new epoch continues; its first batch is a duplicate now.
    let out = commit(
        store,
        segment(
            "e4",
            vec![
                pbatch(t.id, 0, 0, bumped, 0, 2),
                pbatch(t.id, 0, 50, bumped, 2, 1),
            ],
        ),
    )
    .await;
    assert_eq!(
        out,
        vec![
            BatchOutcome::Duplicate { base_offset: 14 },
            BatchOutcome::Appended { base_offset: 16 },
        ]
    );

    // Partition 1 kept its own sequence (last was 0).
    let out = commit(store, segment("q1", vec![pbatch(t.id, 1, 0, p, 1, 1)])).await;
    assert_eq!(out, vec![BatchOutcome::Appended { base_offset: 1 }]);

    // A retry of a batch inside the same segment is a duplicate too.
    let (pid2, e2) = store.allocate_producer_id().await.expect("pid");
    let out = commit(
        store,
        segment(
            "same",
            vec![
                pbatch(t.id, 1, 0, (pid2, e2), 0, 2),
                pbatch(t.id, 1, 50, (pid2, e2), 0, 2),
            ],
        ),
    )
    .await;
    assert_eq!(
        out,
        vec![
            BatchOutcome::Appended { base_offset: 2 },
            BatchOutcome::Duplicate { base_offset: 2 },
        ]
    );

    // Non-idempotent batches never interfere.
    let out = commit(store, segment("plain", vec![batch(t.id, 1, 0, 10, 3, 0)])).await;
    assert_eq!(out, vec![BatchOutcome::Appended { base_offset: 4 }]);
    let out = commit(
        store,
        segment("after-plain", vec![pbatch(t.id, 1, 0, (pid2, e2), 2, 1)]),
    )
    .await;
    assert_eq!(out, vec![BatchOutcome::Appended { base_offset: 7 }]);
}

/// Sequences wrap from `i32::MAX` to 0 as in Kafka.
pub(crate) async fn producer_sequence_wraps(store: &dyn MetadataStore) {
    let t = create(store, "t", 1).await;
    let p = store.allocate_producer_id().await.expect("pid");
    let out = commit(
        store,
        segment("w1", vec![pbatch(t.id, 0, 0, p, i32::MAX - 1, 2)]),
    )
    .await;
    assert_eq!(appended(out[0]), 0);
    let out = commit(store, segment("w2", vec![pbatch(t.id, 0, 0, p, 0, 3)])).await;
    assert_eq!(
        out,
        vec![BatchOutcome::Appended { base_offset: 2 }],
        "after i32::MAX the next sequence is 0"
    );
    // A batch that itself wraps.
    let q = store.allocate_producer_id().await.expect("pid");
    commit(
        store,
        segment("w3", vec![pbatch(t.id, 0, 0, q, i32::MAX - 2, 1)]),
    )
    .await;
    let wrapping = pbatch(t.id, 0, 0, q, i32::MAX - 1, 4);
    assert_eq!(
        wrapping.producer.map(|p| p.last_sequence),
        Some(1),
        "test helper wraps"
    );
    let out = commit(store, segment("w4", vec![wrapping.clone()])).await;
    assert_eq!(out, vec![BatchOutcome::Appended { base_offset: 6 }]);
    let out = commit(
        store,
        segment("w5", vec![wrapping, pbatch(t.id, 0, 50, q, 2, 1)]),
    )
    .await;
    assert_eq!(
        out,
        vec![
            BatchOutcome::Duplicate { base_offset: 6 },
            BatchOutcome::Appended { base_offset: 10 },
        ]
    );
}

/// Producer ids are unique and start at epoch 0.
pub(crate) async fn producer_ids_unique(store: &dyn MetadataStore) {
    let mut seen = BTreeSet::new();
    for _ in 0..20 {
        let (id, epoch) = store.allocate_producer_id().await.expect("pid");
        assert!(id >= 0, "producer ids are non-negative, got {id}");
        assert_eq!(epoch, 0);
        assert!(seen.insert(id), "producer id {id} allocated twice");
    }
}

// ---------------------------------------------------------------- deletion

/// Batches for deleted topics or missing partitions are rejected alone.
pub(crate) async fn rejects_unknown_topic_or_partition(store: &dyn MetadataStore) {
    let keep = create(store, "keep", 1).await;
    let gone = create(store, "gone", 1).await;
    commit(
        store,
        segment("before", vec![batch(gone.id, 0, 0, 10, 2, 0)]),
    )
    .await;
    store.delete_topic("gone").await.expect("delete");
    let p = store.allocate_producer_id().await.expect("pid");
    let out = commit(
        store,
        segment(
            "after",
            vec![
                batch(gone.id, 0, 0, 10, 2, 0),
                batch(keep.id, 0, 10, 10, 2, 0),
                batch(keep.id, 1, 20, 10, 2, 0),
                pbatch(gone.id, 0, 30, p, 0, 1),
                batch(keep.id, 0, 30, 10, 1, 0),
            ],
        ),
    )
    .await;
    assert_eq!(
        out,
        vec![
            BatchOutcome::Rejected(BatchRejection::UnknownTopicOrPartition),
            BatchOutcome::Appended { base_offset: 0 },
            BatchOutcome::Rejected(BatchRejection::UnknownTopicOrPartition),
            BatchOutcome::Rejected(BatchRejection::UnknownTopicOrPartition),
            BatchOutcome::Appended { base_offset: 2 },
        ]
    );
    // Rejected batches in between break byte adjacency: two entries.
    let e = entries(store, keep.id, 0, 0).await;
    assert_eq!(
        e.iter()
            .map(|e| (e.base_offset, e.last_offset, e.byte_start))
            .collect::<Vec<_>>(),
        vec![(0, 1, 10), (2, 2, 30)]
    );

    // A recreated topic with the same name is a different topic.
    let reborn = create(store, "gone", 1).await;
    let out = commit(
        store,
        segment(
            "reborn",
            vec![
                batch(gone.id, 0, 0, 10, 2, 0),
                batch(reborn.id, 0, 10, 10, 2, 0),
            ],
        ),
    )
    .await;
    assert_eq!(
        out,
        vec![
            BatchOutcome::Rejected(BatchRejection::UnknownTopicOrPartition),
            BatchOutcome::Appended { base_offset: 0 },
        ],
        "a recreated topic starts at offset 0 and the old id stays dead"
    );
}

/// delete_topic returns exactly the segments no other topic still uses.
/// Deleting a topic drops every group's committed offsets for it in the
/// same transaction (they were dropped by the broker afterwards, so a crash
/// in between left offsets a re-created topic inherited); other topics'
/// offsets stay.
pub(crate) async fn delete_topic_drops_its_group_offsets(store: &dyn MetadataStore) {
    create(store, "doomed", 2).await;
    create(store, "kept", 1).await;
    for g in ["g1", "g2"] {
        store
            .commit_offsets(
                g,
                None,
                &[
                    offset("doomed", 0, 5, None),
                    offset("doomed", 1, 6, None),
                    offset("kept", 0, 7, None),
                ],
            )
            .await
            .expect("commit");
    }
    store.delete_topic("doomed").await.expect("delete");
    for g in ["g1", "g2"] {
        assert_eq!(
            store.fetch_offsets(g, None).await.expect("fetch"),
            vec![offset("kept", 0, 7, None)],
            "{g}"
        );
    }
    create(store, "doomed", 2).await;
    let topics = ["doomed".to_owned()];
    assert!(store
        .fetch_offsets("g1", Some(&topics))
        .await
        .expect("fetch")
        .is_empty());
}

pub(crate) async fn delete_topic_returns_orphaned_segments(store: &dyn MetadataStore) {
    let a = create(store, "a", 2).await;
    let b = create(store, "b", 1).await;
    let p = store.allocate_producer_id().await.expect("pid");
    commit(
        store,
        segment(
            "only-a",
            vec![batch(a.id, 0, 0, 10, 1, 0), pbatch(a.id, 1, 10, p, 0, 1)],
        ),
    )
    .await;
    commit(
        store,
        segment(
            "shared",
            vec![batch(a.id, 0, 0, 10, 1, 0), batch(b.id, 0, 10, 10, 1, 0)],
        ),
    )
    .await;
    commit(store, segment("only-b", vec![batch(b.id, 0, 0, 10, 1, 0)])).await;
    commit(store, segment("a-again", vec![batch(a.id, 1, 0, 10, 1, 0)])).await;

    let before = wall_ms();
    let mut freed = store.delete_topic("a").await.expect("delete a");
    let after = wall_ms();
    freed.sort();
    assert_eq!(freed, vec!["a-again".to_owned(), "only-a".to_owned()]);
    assert_eq!(
        store.list_segments().await.expect("list"),
        vec!["only-b".to_owned(), "shared".to_owned()],
        "freed segments are no longer listed as live"
    );
    // Freed segments are dead (at the wall clock), not forgotten: readers
    // may be mid-GET, the janitor deletes them after its grace period.
    let dead = store.dead_segments(i64::MAX, 100).await.expect("dead");
    assert_eq!(
        dead.iter().map(|d| d.key.as_str()).collect::<BTreeSet<_>>(),
        BTreeSet::from(["a-again", "only-a"]),
        "delete_topic marks exactly the freed segments dead"
    );
    for d in &dead {
        assert!(
            (before..=after).contains(&d.dead_since_ms),
            "{} dead at {} outside the delete call [{before}, {after}]",
            d.key,
            d.dead_since_ms
        );
    }
    assert_eq!(
        dead.iter().find(|d| d.key == "only-a").map(|d| d.size),
        Some(60),
        "dead segments keep their size"
    );
    assert!(
        store.segment_committed("only-a").await.expect("committed"),
        "a dead segment still counts as committed until forgotten"
    );
    store
        .forget_segments(&["only-a".to_owned()])
        .await
        .expect("forget");
    assert!(!store.segment_committed("only-a").await.expect("committed"));
    let r = store.partition_offsets(a.id, 0).await;
    assert!(
        matches!(r, Err(MetaError::UnknownTopic(_))),
        "partitions of a deleted topic are gone, got {r:?}"
    );
    assert_eq!(entries(store, b.id, 0, 0).await.len(), 2, "b is untouched");

    let mut freed = store.delete_topic("b").await.expect("delete b");
    freed.sort();
    assert_eq!(freed, vec!["only-b".to_owned(), "shared".to_owned()]);
    assert!(store.list_segments().await.expect("list").is_empty());
    assert_eq!(
        dead_keys(store, i64::MAX).await,
        vec!["a-again", "only-b", "shared"]
            .into_iter()
            .map(str::to_owned)
            .collect::<BTreeSet<_>>()
    );

    // Producer state went with the topic: a recreated topic accepts the
    // same producer from any sequence.
    let a2 = create(store, "a", 2).await;
    let out = commit(store, segment("fresh", vec![pbatch(a2.id, 1, 0, p, 9, 1)])).await;
    assert_eq!(out, vec![BatchOutcome::Appended { base_offset: 0 }]);
}

// ---------------------------------------------------------------- log start

/// Moving the log start: forward only, never past next, hides entries.
pub(crate) async fn advance_log_start(store: &dyn MetadataStore) {
    let t = create(store, "t", 2).await;
    for i in 0..3 {
        commit(
            store,
            segment(
                &format!("s{i}"),
                vec![batch(t.id, 0, 0, 10, 10, 100 * (i + 1))],
            ),
        )
        .await;
    }
    // Entries [0,9] [10,19] [20,29]; next = 30.
    let moved = store.advance_log_start(t.id, 0, 12).await.expect("advance");
    assert_eq!(moved, PartitionOffsets::settled(12, 30));
    assert_eq!(offsets(store, t.id, 0).await, moved);
    let back = store
        .advance_log_start(t.id, 0, 5)
        .await
        .expect("backwards");
    assert_eq!(back, moved, "moving backwards is a no-op");
    let same = store.advance_log_start(t.id, 0, 12).await.expect("same");
    assert_eq!(same, moved);
    for bad in [31, -1, i64::MAX] {
        let r = store.advance_log_start(t.id, 0, bad).await;
        assert!(
            matches!(r, Err(MetaError::OffsetOutOfRange { offset, log_start: 12, next: 30 }) if offset == bad),
            "advance to {bad} must be OffsetOutOfRange, got {r:?}"
        );
    }
    assert_eq!(
        offsets(store, t.id, 0).await,
        moved,
        "failed advances change nothing"
    );

    let visible = entries(store, t.id, 0, 0).await;
    assert_eq!(
        visible.iter().map(|e| e.base_offset).collect::<Vec<_>>(),
        vec![10, 20],
        "the entry below the log start is hidden, the straddling one is not"
    );
    let e = store
        .entry_for_timestamp(t.id, 0, 0)
        .await
        .expect("lookup")
        .expect("entry");
    assert_eq!(e.base_offset, 10);

    // Up to next_offset: everything hidden, appends continue densely.
    let end = store.advance_log_start(t.id, 0, 30).await.expect("to end");
    assert_eq!(end, PartitionOffsets::settled(30, 30));
    assert!(entries(store, t.id, 0, 0).await.is_empty());
    assert_eq!(
        store.entry_for_timestamp(t.id, 0, 0).await.expect("lookup"),
        None
    );
    let out = commit(store, segment("s3", vec![batch(t.id, 0, 0, 10, 5, 1)])).await;
    assert_eq!(out, vec![BatchOutcome::Appended { base_offset: 30 }]);
    assert_eq!(entries(store, t.id, 0, 0).await.len(), 1);
    assert_eq!(
        offsets(store, t.id, 0).await,
        PartitionOffsets::settled(30, 35)
    );
    // Other partitions are untouched.
    assert_eq!(
        offsets(store, t.id, 1).await,
        PartitionOffsets::settled(0, 0)
    );
    assert_eq!(
        store.advance_log_start(t.id, 1, 0).await.expect("empty"),
        PartitionOffsets::settled(0, 0)
    );
}

/// Per-partition calls on missing topics or partitions.
pub(crate) async fn unknown_partition_errors(store: &dyn MetadataStore) {
    let t = create(store, "t", 1).await;
    let missing = Uuid::new_v4();
    let unknown_topic = |r: &Result<(), MetaError>| matches!(r, Err(MetaError::UnknownTopic(_)));
    let unknown_partition = |r: &Result<(), MetaError>| matches!(r, Err(MetaError::UnknownPartition { topic, partition: 1 }) if topic == "t");
    let calls: Vec<(Uuid, i32, &str)> = vec![(missing, 0, "topic"), (t.id, 1, "partition")];
    for (id, partition, what) in calls {
        let check = |r: Result<(), MetaError>, call: &str| {
            let ok = if what == "topic" {
                unknown_topic(&r)
            } else {
                unknown_partition(&r)
            };
            assert!(ok, "{call} on unknown {what} gave {r:?}");
        };
        check(
            store.partition_offsets(id, partition).await.map(|_| ()),
            "partition_offsets",
        );
        check(
            store.advance_log_start(id, partition, 0).await.map(|_| ()),
            "advance_log_start",
        );
        check(
            store.index_entries(id, partition, 0, 10).await.map(|_| ()),
            "index_entries",
        );
        check(
            store
                .entry_for_timestamp(id, partition, 0)
                .await
                .map(|_| ()),
            "entry_for_timestamp",
        );
    }
    let r = store.partition_offsets(t.id, -1).await;
    assert!(
        matches!(r, Err(MetaError::UnknownPartition { .. })),
        "negative partition gave {r:?}"
    );
    // Many at once: the same answers in order, None for what is unknown.
    let many = store
        .partition_offsets_many(&[(t.id, 0), (missing, 0), (t.id, 1), (t.id, 0)])
        .await
        .expect("partition_offsets_many");
    let one = store.partition_offsets(t.id, 0).await.expect("partition 0");
    assert_eq!(many, vec![Some(one), None, None, Some(one)]);
    assert_eq!(
        store.partition_offsets_many(&[]).await.expect("none asked"),
        vec![]
    );
}

// ---------------------------------------------------------------- concurrency

/// 8 writers x 50 segments on the same partitions: offsets stay dense and
/// unique, the index covers them exactly.
pub(crate) async fn concurrent_commits(store: &dyn MetadataStore) {
    const TASKS: u64 = 8;
    const SEGMENTS: u64 = 50;
    let t = create(store, "t", 2).await;
    let writers = (0..TASKS).map(|task| {
        let topic_id = t.id;
        async move {
            let mut got: Vec<(i32, i64, i64)> = Vec::new();
            for i in 0..SEGMENTS {
                let count0 = i64::try_from(1 + (task + i) % 3).expect("small");
                let batches = vec![
                    batch(topic_id, 0, 0, 10, count0, 0),
                    batch(topic_id, 1, 10, 10, 2, 0),
                    batch(topic_id, 0, 20, 10, 1, 0),
                ];
                let seg = segment(&format!("c-{task:02}-{i:03}"), batches.clone());
                let outcomes = store
                    .commit_segment(&seg)
                    .await
                    .unwrap_or_else(|e| panic!("concurrent commit {} failed: {e}", seg.key));
                let bases: Vec<i64> = outcomes.into_iter().map(appended).collect();
                assert_eq!(
                    bases[2],
                    bases[0] + count0,
                    "batches of one partition in one segment get consecutive offsets"
                );
                for (b, base) in batches.iter().zip(bases) {
                    got.push((b.partition, base, b.offset_count));
                }
            }
            got
        }
    });
    let results = futures::future::join_all(writers).await;

    for partition in 0..2 {
        let mut ranges: Vec<(i64, i64)> = results
            .iter()
            .flatten()
            .filter(|(p, _, _)| *p == partition)
            .map(|(_, base, count)| (*base, *count))
            .collect();
        ranges.sort();
        let mut cursor = 0;
        for (base, count) in &ranges {
            assert_eq!(
                *base, cursor,
                "partition {partition}: offsets must be dense and unique"
            );
            cursor += count;
        }
        assert_eq!(offsets(store, t.id, partition).await.next_offset, cursor);
        let mut covered = 0;
        let all = entries(store, t.id, partition, 0).await;
        for e in &all {
            assert_eq!(
                e.base_offset, covered,
                "partition {partition}: index has no gaps"
            );
            covered = e.last_offset + 1;
        }
        assert_eq!(covered, cursor);
        let per_entry = if partition == 0 { 2 } else { 1 };
        assert_eq!(
            all.len(),
            usize::try_from(TASKS * SEGMENTS).expect("small") * per_entry,
            "partition {partition}: one entry per contiguous run per segment"
        );
    }
    assert_eq!(
        store.list_segments().await.expect("list").len(),
        usize::try_from(TASKS * SEGMENTS).expect("small")
    );
}

// ---------------------------------------------------------------- maintenance

/// Time retention drops leading entries whose max timestamp is older than
/// `now - retention.ms` (stopping at the first younger one, as Kafka does),
/// moves the log start to the first kept entry and kills freed segments.
pub(crate) async fn retention_by_time(store: &dyn MetadataStore) {
    let t = create(store, "t", 2).await;
    commit_entries(store, t.id, &[("r0", 100, 10, 100)]).await;
    // r1 is shared with p1, so it outlives p0's entry.
    commit(
        store,
        segment(
            "r1",
            vec![
                batch(t.id, 0, 0, 100, 10, 200),
                batch(t.id, 1, 100, 10, 3, 0),
            ],
        ),
    )
    .await;
    commit_entries(
        store,
        t.id,
        &[
            ("r2", 100, 10, 900),
            ("r3", 100, 10, 300),
            ("r4", 100, 10, 950),
        ],
    )
    .await;

    let moved = store
        .apply_retention(t.id, 0, 1_000, 750, -1)
        .await
        .expect("retention");
    assert_eq!(
        moved,
        PartitionOffsets::settled(20, 50),
        "entries older than 250 are dropped up to the first younger one"
    );
    assert_eq!(offsets(store, t.id, 0).await, moved);
    assert_eq!(
        entries(store, t.id, 0, 0)
            .await
            .iter()
            .map(|e| e.base_offset)
            .collect::<Vec<_>>(),
        vec![20, 30, 40],
        "r3 is expired but sits behind the younger r2, so it stays"
    );
    let at = |ts: i64| async move {
        store
            .entry_for_timestamp(t.id, 0, ts)
            .await
            .expect("entry_for_timestamp")
            .map(|e| e.base_offset)
    };
    assert_eq!(at(0).await, Some(20), "dropped entries do not answer");
    assert_eq!(at(150).await, Some(20));
    let dead = store.dead_segments(i64::MAX, 10).await.expect("dead");
    assert_eq!(
        dead.iter()
            .map(|d| (d.key.as_str(), d.dead_since_ms))
            .collect::<Vec<_>>(),
        vec![("r0", 1_000)],
        "r0 is dead at now_ms; r1 still holds p1's chunk"
    );
    assert!(dead_keys(store, 999).await.is_empty());
    assert_eq!(
        store.list_segments().await.expect("list"),
        vec!["r1", "r2", "r3", "r4"]
            .into_iter()
            .map(str::to_owned)
            .collect::<Vec<_>>()
    );

    // -1 disables both limits.
    let same = store
        .apply_retention(t.id, 0, i64::MAX, -1, -1)
        .await
        .expect("disabled");
    assert_eq!(same, moved);

    // Later, everything but the newest is old enough.
    let moved = store
        .apply_retention(t.id, 0, 2_000, 750, -1)
        .await
        .expect("retention");
    assert_eq!(moved.log_start_offset, 40);
    assert_eq!(
        dead_keys(store, 2_000).await,
        keys(&["r0", "r2", "r3"]),
        "r1 stays alive for p1"
    );
    assert_eq!(
        offsets(store, t.id, 1).await,
        PartitionOffsets::settled(0, 3),
        "other partitions are untouched"
    );
    assert_eq!(entries(store, t.id, 1, 0).await.len(), 1);

    let r = store.apply_retention(Uuid::new_v4(), 0, 0, 1, 1).await;
    assert!(
        matches!(r, Err(MetaError::UnknownTopic(_))),
        "apply_retention on an unknown topic gave {r:?}"
    );
    let r = store.apply_retention(t.id, 2, 0, 1, 1).await;
    assert!(
        matches!(r, Err(MetaError::UnknownPartition { partition: 2, .. })),
        "apply_retention on an unknown partition gave {r:?}"
    );
}

/// Size retention drops leading entries while the entries after them still
/// exceed `retention.bytes`; a straddling first entry counts whole.
pub(crate) async fn retention_by_bytes(store: &dyn MetadataStore) {
    let t = create(store, "t", 1).await;
    commit_entries(
        store,
        t.id,
        &[
            ("b0", 100, 5, 1_000),
            ("b1", 100, 5, 1_000),
            ("b2", 100, 5, 1_000),
            ("b3", 100, 5, 1_000),
        ],
    )
    .await;
    let start = |retention_bytes: i64| async move {
        store
            .apply_retention(t.id, 0, 1_000, -1, retention_bytes)
            .await
            .expect("retention")
            .log_start_offset
    };
    assert_eq!(start(250).await, 5, "300 bytes after b0 exceed 250");
    assert_eq!(start(200).await, 5, "200 bytes after b1 do not exceed 200");
    assert_eq!(start(199).await, 10);
    assert_eq!(dead_keys(store, 1_000).await, keys(&["b0", "b1"]));
    assert_eq!(start(0).await, 15, "only the newest entry is left");
    assert_eq!(
        spans(&entries(store, t.id, 0, 0).await),
        vec![(15, 19, "b3".to_owned())]
    );

    commit_entries(store, t.id, &[("b4", 100, 5, 1_000)]).await;
    store.advance_log_start(t.id, 0, 17).await.expect("advance");
    assert_eq!(
        start(150).await,
        17,
        "the straddling b3 counts whole: 100 bytes after it do not exceed 150"
    );
    assert_eq!(start(99).await, 20);
    assert_eq!(
        dead_keys(store, i64::MAX).await,
        keys(&["b0", "b1", "b2", "b3"])
    );
}

/// The newest entry survives any retention; the log start never moves
/// backwards; empty partitions are left alone.
pub(crate) async fn retention_keeps_newest_and_never_moves_back(store: &dyn MetadataStore) {
    let t = create(store, "t", 2).await;
    commit_entries(
        store,
        t.id,
        &[
            ("n0", 10, 10, 100),
            ("n1", 10, 10, 100),
            ("n2", 10, 10, 100),
        ],
    )
    .await;
    let now = 1_000_000;
    // A log start inside a kept entry stays there: retention never moves it
    // back to the entry's base offset.
    store.advance_log_start(t.id, 0, 5).await.expect("advance");
    for (retention_ms, retention_bytes) in [(-1, 10_000), (now - 50, -1), (now - 50, 25)] {
        assert_eq!(
            store
                .apply_retention(t.id, 0, now, retention_ms, retention_bytes)
                .await
                .expect("retention")
                .log_start_offset,
            5,
            "nothing to drop with retention.ms={retention_ms} retention.bytes={retention_bytes}"
        );
    }
    let moved = store
        .apply_retention(t.id, 0, now, 1, 0)
        .await
        .expect("retention");
    assert_eq!(
        moved,
        PartitionOffsets::settled(20, 30),
        "the newest entry is kept even though it is expired"
    );
    assert_eq!(
        spans(&entries(store, t.id, 0, 0).await),
        vec![(20, 29, "n2".to_owned())]
    );
    assert_eq!(
        store
            .entry_for_timestamp(t.id, 0, 0)
            .await
            .expect("lookup")
            .map(|e| e.base_offset),
        Some(20)
    );

    store.advance_log_start(t.id, 0, 25).await.expect("advance");
    let kept = store
        .apply_retention(t.id, 0, now, 1, 0)
        .await
        .expect("retention");
    assert_eq!(
        kept.log_start_offset, 25,
        "retention never moves the log start backwards"
    );
    assert_eq!(offsets(store, t.id, 0).await, kept);

    assert_eq!(
        store
            .apply_retention(t.id, 1, now, 1, 0)
            .await
            .expect("empty partition"),
        PartitionOffsets::settled(0, 0)
    );

    // Everything hidden by DeleteRecords: retention drops the rows and the
    // log start stays at next_offset.
    store.advance_log_start(t.id, 0, 30).await.expect("to end");
    let end = store
        .apply_retention(t.id, 0, now, 1, 0)
        .await
        .expect("retention");
    assert_eq!(end, PartitionOffsets::settled(30, 30));
    assert_eq!(dead_keys(store, now).await, keys(&["n0", "n1", "n2"]));
    commit_entries(store, t.id, &[("n3", 10, 5, 100)]).await;
    assert_eq!(
        store
            .apply_retention(t.id, 0, now, 1, 0)
            .await
            .expect("retention")
            .log_start_offset,
        30
    );
    assert_eq!(entries(store, t.id, 0, 0).await.len(), 1);
}

/// DeleteRecords only moves the log start; drop_expired_entries then removes
/// the rows wholly below it in every partition and kills freed segments.
pub(crate) async fn delete_records_then_drop_expired(store: &dyn MetadataStore) {
    let a = create(store, "a", 2).await;
    let b = create(store, "b", 1).await;
    commit(
        store,
        segment(
            "d0",
            vec![batch(a.id, 0, 0, 10, 10, 0), batch(b.id, 0, 10, 10, 5, 0)],
        ),
    )
    .await;
    commit(store, segment("d1", vec![batch(a.id, 0, 0, 10, 10, 0)])).await;
    commit(store, segment("d2", vec![batch(a.id, 0, 0, 10, 10, 0)])).await;
    commit(store, segment("d3", vec![batch(a.id, 1, 0, 10, 10, 0)])).await;

    assert_eq!(
        store.drop_expired_entries(100).await.expect("drop"),
        0,
        "nothing below any log start yet"
    );
    store.advance_log_start(a.id, 0, 15).await.expect("advance");
    store.advance_log_start(a.id, 1, 10).await.expect("advance");
    assert!(
        dead_keys(store, i64::MAX).await.is_empty(),
        "advance_log_start alone kills nothing"
    );
    assert_eq!(store.drop_expired_entries(500).await.expect("drop"), 2);
    let dead = store.dead_segments(i64::MAX, 10).await.expect("dead");
    assert_eq!(
        dead.iter()
            .map(|d| (d.key.as_str(), d.dead_since_ms))
            .collect::<Vec<_>>(),
        vec![("d3", 500)],
        "d0 still holds b's chunk, d1 straddles the log start"
    );
    assert_eq!(
        spans(&entries(store, a.id, 0, 0).await),
        vec![(10, 19, "d1".to_owned()), (20, 29, "d2".to_owned())]
    );
    assert_eq!(store.drop_expired_entries(550).await.expect("again"), 0);

    store
        .advance_log_start(b.id, 0, 5)
        .await
        .expect("advance b");
    assert_eq!(store.drop_expired_entries(600).await.expect("drop"), 1);
    let dead = store.dead_segments(i64::MAX, 10).await.expect("dead");
    assert_eq!(
        dead.iter()
            .map(|d| (d.key.as_str(), d.dead_since_ms))
            .collect::<Vec<_>>(),
        vec![("d3", 500), ("d0", 600)]
    );
    assert!(store.segment_committed("d0").await.expect("committed"));
    assert_eq!(
        store.list_segments().await.expect("list"),
        vec!["d1".to_owned(), "d2".to_owned()]
    );
    assert_eq!(
        offsets(store, b.id, 0).await,
        PartitionOffsets::settled(5, 5)
    );
}

/// dead_segments filters by the grace cutoff, oldest first, with a limit;
/// forget_segments removes dead rows and ignores unknown and live keys.
pub(crate) async fn dead_segments_grace_and_forget(store: &dyn MetadataStore) {
    let t = create(store, "t", 1).await;
    commit_entries(
        store,
        t.id,
        &[
            ("g0", 10, 1, 0),
            ("g1", 20, 1, 0),
            ("g2", 30, 1, 0),
            ("g3", 40, 1, 0),
        ],
    )
    .await;
    for (offset, now) in [(1, 100), (2, 300), (3, 200)] {
        store
            .advance_log_start(t.id, 0, offset)
            .await
            .expect("advance");
        store.drop_expired_entries(now).await.expect("drop");
    }
    let dead = |before: i64, limit: usize| async move {
        store
            .dead_segments(before, limit)
            .await
            .expect("dead_segments")
            .into_iter()
            .map(|d| (d.key, d.size, d.dead_since_ms))
            .collect::<Vec<_>>()
    };
    let d = |k: &str, size: u64, at: i64| (k.to_owned(), size, at);
    assert!(dead(99, 10).await.is_empty(), "nothing dead before 100");
    assert_eq!(dead(100, 10).await, vec![d("g0", 10, 100)]);
    assert_eq!(
        dead(250, 10).await,
        vec![d("g0", 10, 100), d("g2", 30, 200)]
    );
    assert_eq!(
        dead(i64::MAX, 10).await,
        vec![d("g0", 10, 100), d("g2", 30, 200), d("g1", 20, 300)],
        "oldest first"
    );
    assert_eq!(
        dead(i64::MAX, 2).await,
        vec![d("g0", 10, 100), d("g2", 30, 200)]
    );
    assert!(dead(i64::MAX, 0).await.is_empty());

    store
        .forget_segments(&["g0".to_owned(), "never-seen".to_owned(), "g3".to_owned()])
        .await
        .expect("forget");
    assert_eq!(
        dead(i64::MAX, 10).await,
        vec![d("g2", 30, 200), d("g1", 20, 300)]
    );
    assert!(!store.segment_committed("g0").await.expect("committed"));
    assert_eq!(
        store
            .unknown_segments(&["g0".to_owned(), "g1".to_owned()])
            .await
            .expect("unknown"),
        vec!["g0".to_owned()],
        "a forgotten segment is unknown again"
    );
    assert!(
        store.segment_committed("g3").await.expect("committed"),
        "a live segment is never forgotten"
    );
    assert_eq!(
        spans(&entries(store, t.id, 0, 0).await),
        vec![(3, 3, "g3".to_owned())]
    );
    store.forget_segments(&[]).await.expect("forget nothing");
    store
        .forget_segments(&["g0".to_owned()])
        .await
        .expect("forget twice");
}

/// unknown_segments answers for thousands of keys at once, in input order.
pub(crate) async fn unknown_segments(store: &dyn MetadataStore) {
    let t = create(store, "t", 1).await;
    commit_entries(
        store,
        t.id,
        &[
            ("k-0007", 10, 1, 0),
            ("k-1234", 10, 1, 0),
            ("k-2999", 10, 1, 0),
        ],
    )
    .await;
    // k-1234 dead but not forgotten: still known.
    store.advance_log_start(t.id, 0, 2).await.expect("advance");
    store.drop_expired_entries(1).await.expect("drop");
    assert_eq!(dead_keys(store, 1).await, keys(&["k-0007", "k-1234"]));

    let all: Vec<String> = (0..3_000).map(|i| format!("k-{i:04}")).collect();
    let unknown = store.unknown_segments(&all).await.expect("unknown");
    let want: Vec<String> = all
        .iter()
        .filter(|k| !["k-0007", "k-1234", "k-2999"].contains(&k.as_str()))
        .cloned()
        .collect();
    assert_eq!(unknown.len(), 2_997);
    assert_eq!(unknown, want, "exactly the never-committed keys, in order");
    assert!(store
        .unknown_segments(&[])
        .await
        .expect("no keys")
        .is_empty());
}

/// The lowest run of two or more consecutive small entries, bounded by
/// total bytes and count; a lone small entry is skipped.
pub(crate) async fn compaction_candidates(store: &dyn MetadataStore) {
    let t = create(store, "t", 2).await;
    // c0 [0,1] c1 [2,4] c2 [5,5] C3 [6,10] c4 [11,11] C5 [12,12]
    // c6 [13,14] c7 [15,16] c8 [17,18]; capitals are large.
    commit_entries(
        store,
        t.id,
        &[
            ("c0", 10, 2, 0),
            ("c1", 10, 3, 0),
            ("c2", 10, 1, 0),
            ("c3", 1_000, 5, 0),
            ("c4", 10, 1, 0),
            ("c5", 1_000, 1, 0),
            ("c6", 10, 2, 0),
            ("c7", 10, 2, 0),
            ("c8", 10, 2, 0),
        ],
    )
    .await;
    let run = |small: u64, max_total: u64, limit: usize| async move {
        store
            .compaction_candidates(t.id, 0, small, max_total, limit)
            .await
            .expect("compaction_candidates")
            .into_iter()
            .map(|e| e.segment_key)
            .collect::<Vec<_>>()
    };
    let all = entries(store, t.id, 0, 0).await;
    let got = store
        .compaction_candidates(t.id, 0, 100, 10_000, 100)
        .await
        .expect("candidates");
    assert_eq!(got, all[..3].to_vec(), "whole entries, in offset order");
    assert_eq!(run(100, 10_000, 2).await, vec!["c0", "c1"], "limit");
    assert_eq!(run(100, 25, 100).await, vec!["c0", "c1"], "max total bytes");
    assert_eq!(run(100, 30, 100).await, vec!["c0", "c1", "c2"]);
    assert!(run(10, 10_000, 100).await.is_empty(), "byte_len < small");
    assert!(run(100, 10_000, 1).await.is_empty());
    assert!(
        run(100, 15, 100).await.is_empty(),
        "no two entries fit max_total_bytes"
    );

    store.advance_log_start(t.id, 0, 2).await.expect("advance");
    assert_eq!(
        run(100, 10_000, 100).await,
        vec!["c1", "c2"],
        "entries below the log start are not candidates"
    );
    store.advance_log_start(t.id, 0, 6).await.expect("advance");
    assert_eq!(
        run(100, 10_000, 100).await,
        vec!["c6", "c7", "c8"],
        "large entries and a lone small one are skipped"
    );
    assert!(store
        .compaction_candidates(t.id, 1, 100, 10_000, 100)
        .await
        .expect("empty partition")
        .is_empty());
    let r = store.compaction_candidates(t.id, 2, 100, 10_000, 100).await;
    assert!(
        matches!(r, Err(MetaError::UnknownPartition { partition: 2, .. })),
        "compaction_candidates on an unknown partition gave {r:?}"
    );
}

/// A compaction swap: the index points into the new segment, every offset
/// is still covered exactly once, timestamp lookups stay right (the running
/// max continues from the preceding entry), and freed segments are dead.
pub(crate) async fn replace_entries_swaps(store: &dyn MetadataStore) {
    let t = create(store, "t", 2).await;
    commit_entries(store, t.id, &[("big", 1_000, 5, 500)]).await;
    // m1 is shared with p1 and outlives the swap.
    commit(
        store,
        segment(
            "m1",
            vec![batch(t.id, 0, 0, 10, 2, 100), batch(t.id, 1, 10, 10, 1, 0)],
        ),
    )
    .await;
    commit_entries(
        store,
        t.id,
        &[
            ("m2", 10, 3, 300),
            ("m3", 10, 1, 200),
            ("tail", 1_000, 4, 600),
        ],
    )
    .await;
    let old = store
        .compaction_candidates(t.id, 0, 100, 10_000, 100)
        .await
        .expect("candidates");
    assert_eq!(
        spans(&old),
        vec![
            (5, 6, "m1".to_owned()),
            (7, 9, "m2".to_owned()),
            (10, 10, "m3".to_owned())
        ]
    );
    let new_entry = |base: i64, last: i64, start: u64, len: u64, ts: i64| IndexEntry {
        topic_id: t.id,
        partition: 0,
        base_offset: base,
        last_offset: last,
        segment_key: "compacted".to_owned(),
        byte_start: start,
        byte_len: len,
        max_timestamp: ts,
    };
    let new = vec![new_entry(5, 8, 0, 20, 100), new_entry(9, 10, 20, 10, 300)];
    assert!(store
        .replace_entries(&old, "compacted", 30, &new, 5_000, None)
        .await
        .expect("replace"));

    let after = entries(store, t.id, 0, 0).await;
    assert_eq!(
        spans(&after),
        vec![
            (0, 4, "big".to_owned()),
            (5, 8, "compacted".to_owned()),
            (9, 10, "compacted".to_owned()),
            (11, 14, "tail".to_owned())
        ],
        "every offset covered once, the middle now in the new segment"
    );
    assert_eq!(&after[1..3], &new[..]);
    for offset in 0..15 {
        let e = entries(store, t.id, 0, offset).await;
        let first = e.first().expect("an entry holds every offset");
        assert!(
            first.base_offset <= offset && offset <= first.last_offset,
            "offset {offset} not in the first entry returned"
        );
    }
    assert_eq!(
        offsets(store, t.id, 0).await,
        PartitionOffsets::settled(0, 15)
    );
    let at = |ts: i64| async move {
        store
            .entry_for_timestamp(t.id, 0, ts)
            .await
            .expect("entry_for_timestamp")
            .map(|e| e.base_offset)
    };
    assert_eq!(
        at(150).await,
        Some(0),
        "big (500) comes first in offset order: the new entries' running max \
         includes the entries before them"
    );
    assert_eq!(at(550).await, Some(11));
    assert_eq!(at(601).await, None);
    store.advance_log_start(t.id, 0, 5).await.expect("advance");
    assert_eq!(at(50).await, Some(5));
    assert_eq!(at(150).await, Some(9));
    assert_eq!(at(300).await, Some(9));
    assert_eq!(at(301).await, Some(11));

    let dead = store.dead_segments(i64::MAX, 10).await.expect("dead");
    assert_eq!(
        dead.iter()
            .map(|d| (d.key.as_str(), d.dead_since_ms))
            .collect::<Vec<_>>(),
        vec![("m2", 5_000), ("m3", 5_000)],
        "m1 still holds p1's chunk"
    );
    assert!(store
        .segment_committed("compacted")
        .await
        .expect("committed"));
    assert_eq!(
        store.list_segments().await.expect("list"),
        vec!["big", "compacted", "m1", "tail"]
            .into_iter()
            .map(str::to_owned)
            .collect::<Vec<_>>()
    );
    assert_eq!(entries(store, t.id, 1, 0).await[0].segment_key, "m1");

    // Appends continue after the swap with a correct running max.
    commit_entries(store, t.id, &[("later", 10, 1, 700)]).await;
    assert_eq!(at(650).await, Some(15));
}

/// A swap whose `old` no longer matches the index (or whose `new` does not
/// cover the same offsets) returns false and changes nothing.
pub(crate) async fn replace_entries_refuses_stale(store: &dyn MetadataStore) {
    let t = create(store, "t", 1).await;
    commit_entries(
        store,
        t.id,
        &[
            ("s0", 10, 2, 0),
            ("s1", 10, 2, 0),
            ("s2", 10, 2, 0),
            ("s3", 10, 2, 0),
        ],
    )
    .await;
    let old = entries(store, t.id, 0, 0).await;
    let into = |key: &str, base: i64, last: i64| IndexEntry {
        topic_id: t.id,
        partition: 0,
        base_offset: base,
        last_offset: last,
        segment_key: key.to_owned(),
        byte_start: 0,
        byte_len: 10,
        max_timestamp: 0,
    };
    let unchanged = |before: Vec<IndexEntry>, key: &'static str, why: &'static str| async move {
        assert_eq!(entries(store, t.id, 0, 0).await, before, "{why}: index");
        assert!(dead_keys(store, i64::MAX).await.is_empty(), "{why}: dead");
        assert_eq!(
            store
                .unknown_segments(&[key.to_owned()])
                .await
                .expect("unknown"),
            vec![key.to_owned()],
            "{why}: the new segment is not recorded"
        );
    };

    // A compacted object older than its deadline (by the store's clock)
    // is never indexed: the janitor may have deleted it as an orphan.
    let late = CommitDeadline {
        created_ms: wall_ms() - 60_000,
        max_age_ms: 30_000,
    };
    let r = store
        .replace_entries(&old, "x0", 10, &[into("x0", 0, 7)], 1, Some(late))
        .await;
    assert!(
        matches!(r, Err(MetaError::CommitTooLate { ref key, .. }) if key == "x0"),
        "{r:?}"
    );
    unchanged(old.clone(), "x0", "a swap past its deadline").await;

    let mut changed = old.clone();
    changed[1].byte_len = 11;
    assert!(!store
        .replace_entries(&changed, "x1", 10, &[into("x1", 0, 7)], 1, None)
        .await
        .expect("replace"));
    unchanged(old.clone(), "x1", "an old entry differs").await;

    assert!(!store
        .replace_entries(&old, "x2", 10, &[into("x2", 0, 6)], 1, None)
        .await
        .expect("replace"));
    unchanged(old.clone(), "x2", "new ends early").await;
    assert!(!store
        .replace_entries(
            &old,
            "x3",
            10,
            &[into("x3", 0, 2), into("x3", 4, 7)],
            1,
            None
        )
        .await
        .expect("replace"));
    unchanged(old.clone(), "x3", "new has a gap").await;
    let gappy = vec![old[0].clone(), old[2].clone()];
    assert!(!store
        .replace_entries(&gappy, "x4", 10, &[into("x4", 0, 5)], 1, None)
        .await
        .expect("replace"));
    unchanged(old.clone(), "x4", "old is not consecutive").await;

    let r = store
        .replace_entries(&old[3..], "s0", 10, &[into("s0", 6, 7)], 1, None)
        .await;
    assert!(
        matches!(r, Err(MetaError::SegmentExists(ref k)) if k == "s0"),
        "replacing into a known key gave {r:?}"
    );
    assert_eq!(entries(store, t.id, 0, 0).await, old);
    let r = store
        .replace_entries(&[], "x5", 10, &[into("x5", 0, 7)], 1, None)
        .await;
    assert!(
        matches!(r, Err(MetaError::InvalidArgument(_))),
        "replacing nothing gave {r:?}"
    );

    // A real swap, then the same swap again from a stale view.
    assert!(store
        .replace_entries(&old[..2], "y", 10, &[into("y", 0, 3)], 7, None)
        .await
        .expect("replace"));
    let swapped = entries(store, t.id, 0, 0).await;
    assert_eq!(swapped[0].segment_key, "y");
    assert_eq!(dead_keys(store, 7).await, keys(&["s0", "s1"]));
    assert!(!store
        .replace_entries(&old[..2], "y2", 10, &[into("y2", 0, 3)], 8, None)
        .await
        .expect("stale replace"));
    assert_eq!(entries(store, t.id, 0, 0).await, swapped);
    assert_eq!(
        store
            .unknown_segments(&["y2".to_owned()])
            .await
            .expect("unknown"),
        vec!["y2".to_owned()]
    );

    // Retention got there first.
    store.advance_log_start(t.id, 0, 6).await.expect("advance");
    store.drop_expired_entries(9).await.expect("drop");
    assert!(!store
        .replace_entries(&old[2..], "z", 10, &[into("z", 4, 7)], 10, None)
        .await
        .expect("replace after retention"));
    assert_eq!(
        spans(&entries(store, t.id, 0, 0).await),
        vec![(6, 7, "s3".to_owned())]
    );
    assert_eq!(
        dead_keys(store, i64::MAX).await,
        keys(&["s0", "s1", "s2", "y"])
    );
}

// ---------------------------------------------------------------- groups

/// Coordinator claims fence commits made under an older claim, by another
/// broker or by the same one, and survive the group's deletion.
pub(crate) async fn group_claims(store: &dyn MetadataStore) {
    let a1 = store.claim_group("g", 1).await.expect("claim by 1");
    assert_eq!(
        a1,
        GroupClaim {
            node_id: 1,
            epoch: 1
        }
    );
    store
        .commit_offsets("g", Some(a1), &[offset("t", 0, 10, None)])
        .await
        .expect("commit under the current claim");

    let b = store.claim_group("g", 2).await.expect("claim by 2");
    assert_eq!(
        b,
        GroupClaim {
            node_id: 2,
            epoch: 2
        }
    );
    let err = store
        .commit_offsets("g", Some(a1), &[offset("t", 0, 99, None)])
        .await
        .expect_err("an older claim is fenced");
    assert!(
        matches!(err, MetaError::Fenced { ref group, node_id: 1, epoch: 1 } if group == "g"),
        "{err:?}"
    );
    assert!(!err.is_retryable());
    store
        .commit_offsets("g", Some(b), &[offset("t", 0, 20, None)])
        .await
        .expect("commit under the new claim");
    assert_eq!(
        store.fetch_offsets("g", None).await.expect("fetch"),
        vec![offset("t", 0, 20, None)],
        "the fenced commit changed nothing"
    );

    // The same broker claiming again fences its own older claim.
    let a3 = store.claim_group("g", 1).await.expect("claim by 1 again");
    assert_eq!(a3.epoch, 3);
    assert!(store
        .commit_offsets("g", Some(b), &[offset("t", 0, 30, None)])
        .await
        .is_err());
    let other = store.claim_group("h", 2).await.expect("claim h");
    assert_eq!(other.epoch, 1, "groups have their own epochs");
    assert!(
        store
            .commit_offsets("g", Some(other), &[offset("t", 0, 30, None)])
            .await
            .is_err(),
        "a claim on one group is no claim on another"
    );

    // Unfenced commits (admin tools) always go through.
    store
        .commit_offsets("g", None, &[offset("t", 1, 5, None)])
        .await
        .expect("unfenced commit");
    // Deleting the group keeps its epoch: old claims stay fenced.
    store.delete_group("g").await.expect("delete");
    assert!(store
        .commit_offsets("g", Some(b), &[offset("t", 0, 40, None)])
        .await
        .is_err());
    let a4 = store.claim_group("g", 1).await.expect("claim after delete");
    assert_eq!(a4.epoch, 4);

    // A group never claimed refuses every claim.
    assert!(store
        .commit_offsets("fresh", Some(a4), &[offset("t", 0, 1, None)])
        .await
        .is_err());
}

/// A coordinator's saved membership survives later claims (that is how a
/// new coordinator carries the group on), only the newest claim may save,
/// and deleting or expiring the group drops it.
pub(crate) async fn group_state_saved(store: &dyn MetadataStore) {
    assert_eq!(store.load_group("g").await.expect("load"), None);
    let a = store.claim_group("g", 1).await.expect("claim by 1");
    assert_eq!(store.load_group("g").await.expect("load"), None);
    store.save_group("g", a, b"gen 1").await.expect("save");
    store
        .save_group("g", a, b"gen 2")
        .await
        .expect("save again");
    assert_eq!(
        store.load_group("g").await.expect("load").as_deref(),
        Some(&b"gen 2"[..])
    );

    let b = store.claim_group("g", 2).await.expect("claim by 2");
    assert_eq!(
        store.load_group("g").await.expect("load").as_deref(),
        Some(&b"gen 2"[..]),
        "a claim keeps the saved state"
    );
    match store.save_group("g", a, b"stale").await {
        Err(MetaError::Fenced { .. }) => {}
        other => panic!("a save under an old claim must be fenced: {other:?}"),
    }
    // Never claimed: nothing to save under.
    assert!(matches!(
        store.save_group("h", a, b"x").await,
        Err(MetaError::Fenced { .. })
    ));
    store.save_group("g", b, b"gen 3").await.expect("save by 2");
    assert_eq!(
        store.load_group("g").await.expect("load").as_deref(),
        Some(&b"gen 3"[..])
    );
    assert_eq!(store.load_group("h").await.expect("load"), None);

    store.delete_group("g").await.expect("delete");
    assert_eq!(store.load_group("g").await.expect("load"), None);

    // Expiry drops it with the claim row.
    let c = store.claim_group("old", 1).await.expect("claim");
    store.save_group("old", c, b"empty").await.expect("save");
    let later = wall_ms() + 30 * 86_400_000;
    let gone = store
        .expire_groups(later, 86_400_000)
        .await
        .expect("expire");
    assert!(gone.contains(&"old".to_owned()), "{gone:?}");
    assert_eq!(store.load_group("old").await.expect("load"), None);
}

/// Groups idle and uncommitted for the retention lose their offsets and
/// claim rows; active or recently committed ones keep them; a claim made
/// before the expiry stays fenced afterwards.
pub(crate) async fn groups_expire(store: &dyn MetadataStore) {
    let day = 86_400_000;
    let now = wall_ms();
    let at = |ts: i64| CommittedOffset {
        commit_timestamp_ms: ts,
        ..offset("t", 0, 7, None)
    };
    store
        .commit_offsets("old", None, &[at(now - 10 * day)])
        .await
        .expect("commit");
    store
        .commit_offsets("recent", None, &[at(now - day)])
        .await
        .expect("commit");
    let claimed = store.claim_group("claimed", 1).await.expect("claim");
    store
        .commit_offsets("claimed", Some(claimed), &[at(now - 10 * day)])
        .await
        .expect("commit");
    let gone = store.expire_groups(now, 7 * day).await.expect("expire");
    assert_eq!(gone, vec!["old".to_owned()], "only the idle, old group");
    assert!(store
        .fetch_offsets("old", None)
        .await
        .expect("fetch")
        .is_empty());
    assert_eq!(
        store
            .fetch_offsets("recent", None)
            .await
            .expect("fetch")
            .len(),
        1
    );

    // A coordinator keeps its group alive; without it the group expires.
    store
        .touch_groups(
            &["claimed".to_owned(), "never-claimed".to_owned()],
            now + 9 * day,
        )
        .await
        .expect("touch");
    let gone = store
        .expire_groups(now + 10 * day, 7 * day)
        .await
        .expect("expire");
    assert_eq!(gone, vec!["recent".to_owned()]);
    let gone = store
        .expire_groups(now + 20 * day, 7 * day)
        .await
        .expect("expire");
    assert_eq!(gone, vec!["claimed".to_owned()]);
    assert_eq!(
        store.list_groups().await.expect("list"),
        Vec::<String>::new()
    );

    // The expired claim stays fenced: a new claim starts above it.
    let again = store.claim_group("claimed", 2).await.expect("claim again");
    assert!(again.epoch > claimed.epoch, "{again:?} after {claimed:?}");
    assert!(store
        .commit_offsets("claimed", Some(claimed), &[at(now)])
        .await
        .is_err());
}

/// Commit, fetch (all and filtered), metadata, list, delete.
pub(crate) async fn group_offsets(store: &dyn MetadataStore) {
    assert!(store.list_groups().await.expect("list").is_empty());
    assert!(store
        .fetch_offsets("nobody", None)
        .await
        .expect("fetch")
        .is_empty());

    store
        .commit_offsets(
            "g1",
            None,
            &[
                offset("orders", 1, 10, Some("consumer-1 state")),
                offset("orders", 0, 5, None),
                offset("audit", 0, 7, Some("")),
            ],
        )
        .await
        .expect("commit g1");
    store
        .commit_offsets("g0", None, &[offset("orders", 0, 99, None)])
        .await
        .expect("commit g0");
    store
        .commit_offsets("g2", None, &[])
        .await
        .expect("empty commit");

    let all = store.fetch_offsets("g1", None).await.expect("fetch all");
    assert_eq!(
        all,
        vec![
            offset("audit", 0, 7, Some("")),
            offset("orders", 0, 5, None),
            offset("orders", 1, 10, Some("consumer-1 state")),
        ],
        "fetch returns every field, ordered by topic and partition; \
         empty and missing metadata stay distinct"
    );
    let orders = store
        .fetch_offsets("g1", Some(&["orders".to_owned(), "missing".to_owned()]))
        .await
        .expect("fetch filtered");
    assert_eq!(
        orders,
        vec![
            offset("orders", 0, 5, None),
            offset("orders", 1, 10, Some("consumer-1 state"))
        ]
    );
    assert!(store
        .fetch_offsets("g1", Some(&[]))
        .await
        .expect("fetch none")
        .is_empty());

    // Upsert.
    let mut newer = offset("orders", 0, 6, Some("m2"));
    newer.leader_epoch = 4;
    store
        .commit_offsets("g1", None, &[newer.clone()])
        .await
        .expect("recommit");
    let orders = store
        .fetch_offsets("g1", Some(&["orders".to_owned()]))
        .await
        .expect("fetch");
    assert_eq!(orders[0], newer, "a commit replaces the previous offset");
    assert_eq!(orders.len(), 2);
    assert_eq!(
        store.fetch_offsets("g0", None).await.expect("fetch g0"),
        vec![offset("orders", 0, 99, None)],
        "groups are independent"
    );

    assert_eq!(
        store.list_groups().await.expect("list"),
        vec!["g0".to_owned(), "g1".to_owned()],
        "groups with offsets, ordered, each once"
    );

    store
        .delete_offsets("g1", &[("orders".to_owned(), 1), ("audit".to_owned(), 9)])
        .await
        .expect("delete offsets");
    assert_eq!(
        store.fetch_offsets("g1", None).await.expect("fetch"),
        vec![offset("audit", 0, 7, Some("")), newer]
    );

    store.delete_group("g1").await.expect("delete group");
    assert!(store
        .fetch_offsets("g1", None)
        .await
        .expect("fetch")
        .is_empty());
    assert_eq!(
        store.list_groups().await.expect("list"),
        vec!["g0".to_owned()]
    );
    store
        .delete_group("never")
        .await
        .expect("delete missing group");
    assert_eq!(
        store
            .fetch_offsets("g0", None)
            .await
            .expect("fetch g0")
            .len(),
        1
    );
}

// ---------------------------------------------------------------- brokers

fn broker_info(node_id: i32, host: &str, port: i32, rack: Option<&str>) -> BrokerInfo {
    BrokerInfo {
        node_id,
        host: host.to_owned(),
        port,
        rack: rack.map(str::to_owned),
        listeners: Vec::new(),
    }
}

async fn live(store: &dyn MetadataStore, now_ms: i64, ttl_ms: i64) -> Vec<BrokerInfo> {
    store
        .live_brokers(now_ms, ttl_ms)
        .await
        .unwrap_or_else(|e| panic!("live_brokers now={now_ms} ttl={ttl_ms} failed: {e}"))
}

async fn beat(store: &dyn MetadataStore, info: &BrokerInfo, now_ms: i64, ttl_ms: i64) {
    store
        .heartbeat_broker(info, now_ms, ttl_ms)
        .await
        .unwrap_or_else(|e| panic!("heartbeat {info:?} now={now_ms} failed: {e}"));
}

/// Registration, ordering, refresh, expiry, id conflicts, racks and
/// deregistration, all on explicit clocks.
pub(crate) async fn broker_registry(store: &dyn MetadataStore) {
    const TTL: i64 = 10_000;
    assert!(live(store, 1_000, TTL).await.is_empty(), "empty registry");

    // Three brokers, registered out of order, listed by node id.
    let mut b3 = broker_info(3, "broker-3.local", 9094, Some("us-east-1c"));
    // Listeners round-trip (Metadata answers each client with its own).
    b3.listeners = vec![
        tributary_meta::Endpoint {
            name: "PLAINTEXT".into(),
            host: "broker-3.local".into(),
            port: 9094,
        },
        tributary_meta::Endpoint {
            name: "SASL_SSL".into(),
            host: "b3.example.com".into(),
            port: 19094,
        },
    ];
    let b1 = broker_info(1, "broker-1.local", 9092, Some("us-east-1a"));
    let b2 = broker_info(2, "broker-2.local", 9093, None);
    beat(store, &b3, 1_000, TTL).await;
    beat(store, &b1, 1_000, TTL).await;
    beat(store, &b2, 2_000, TTL).await;
    assert_eq!(
        live(store, 2_000, TTL).await,
        vec![b1.clone(), b2.clone(), b3.clone()],
        "live brokers ordered by node id, rack Some and None round-trip"
    );

    // Expiry: live while last_seen >= now - ttl (the boundary is live).
    assert_eq!(
        live(store, 1_000 + TTL, TTL).await,
        vec![b1.clone(), b2.clone(), b3.clone()],
        "a broker exactly ttl old is still live"
    );
    assert_eq!(
        live(store, 1_001 + TTL, TTL).await,
        vec![b2.clone()],
        "brokers older than ttl are not live"
    );
    assert_eq!(
        live(store, 1_001 + TTL, 2 * TTL).await,
        vec![b1.clone(), b2.clone(), b3.clone()],
        "liveness is judged with the ttl of the call"
    );

    // Heartbeat refresh keeps a broker live; it may change its rack.
    let b1_moved = broker_info(1, "broker-1.local", 9092, None);
    beat(store, &b1_moved, 9_000, TTL).await;
    assert_eq!(
        live(store, 9_000 + TTL, TTL).await,
        vec![b1_moved.clone()],
        "refreshed broker stays live, others expire; the rack is replaced"
    );
    beat(store, &b1, 9_500, TTL).await;
    assert_eq!(
        live(store, 9_500 + TTL, TTL).await,
        vec![b1.clone()],
        "same id, same address is a refresh (rack back to Some)"
    );

    // Same id, different address, while the holder is live: refused, and
    // nothing changes.
    let impostor = broker_info(1, "broker-9.local", 9092, Some("eu-west-1a"));
    let other_port = broker_info(1, "broker-1.local", 9099, None);
    for (who, now) in [(&impostor, 9_600), (&other_port, 9_500 + TTL)] {
        match store.heartbeat_broker(who, now, TTL).await {
            Err(MetaError::InvalidArgument(msg)) => assert!(
                msg.contains("broker id 1 is already used by live broker broker-1.local:9092"),
                "refusal names the live holder: {msg}"
            ),
            other => panic!("a second live broker with id 1 ({who:?}) must be refused: {other:?}"),
        }
    }
    assert_eq!(
        live(store, 9_500 + TTL, TTL).await,
        vec![b1.clone()],
        "a refused heartbeat does not refresh or replace the holder"
    );

    // After the holder expires the id may be taken by another address, and
    // then the old holder is the one refused.
    beat(store, &impostor, 9_501 + TTL, TTL).await;
    assert_eq!(
        live(store, 9_501 + TTL, TTL).await,
        vec![impostor.clone()],
        "an expired id is taken over by the new address"
    );
    match store.heartbeat_broker(&b1, 9_502 + TTL, TTL).await {
        Err(MetaError::InvalidArgument(msg)) => assert!(
            msg.contains("broker id 1 is already used by live broker broker-9.local:9092"),
            "refusal names the new holder: {msg}"
        ),
        other => panic!("the old holder of id 1 must now be refused: {other:?}"),
    }

    // Deregister: gone at once, the id is free, unknown ids are ignored.
    beat(store, &b2, 20_000, TTL).await;
    beat(store, &b3, 20_000, TTL).await;
    store.deregister_broker(1).await.expect("deregister 1");
    assert_eq!(
        live(store, 20_000, TTL).await,
        vec![b2.clone(), b3.clone()],
        "a deregistered broker is gone while it would still be live"
    );
    store
        .deregister_broker(42)
        .await
        .expect("deregister unknown id");
    beat(store, &b1, 20_001, TTL).await;
    assert_eq!(
        live(store, 20_001, TTL).await,
        vec![b1, b2, b3],
        "a deregistered id is free for any address"
    );
}

/// SCRAM credentials: stored per user and mechanism, replaced in place,
/// listed without keys, deleted one mechanism at a time.
pub(crate) async fn scram_credentials(store: &dyn MetadataStore) {
    let cred = |mechanism: &str, seed: u8, iterations: i32| tributary_meta::ScramCredential {
        mechanism: mechanism.to_owned(),
        salt: vec![seed; 16],
        stored_key: vec![seed.wrapping_add(1); 32],
        server_key: vec![seed.wrapping_add(2); 32],
        iterations,
    };
    assert!(store
        .list_scram_credentials()
        .await
        .expect("list")
        .is_empty());
    assert_eq!(
        store
            .scram_credential("alice", "SCRAM-SHA-256")
            .await
            .expect("get"),
        None
    );
    let a256 = cred("SCRAM-SHA-256", 1, 4096);
    let a512 = cred("SCRAM-SHA-512", 2, 8192);
    store
        .put_scram_credential("alice", &a256)
        .await
        .expect("put");
    store
        .put_scram_credential("alice", &a512)
        .await
        .expect("put");
    store
        .put_scram_credential("bob, the =admin", &cred("SCRAM-SHA-512", 3, 4096))
        .await
        .expect("names are any text");
    assert_eq!(
        store
            .scram_credential("alice", "SCRAM-SHA-512")
            .await
            .expect("get"),
        Some(a512.clone())
    );
    // Replaced in place (a password change).
    let changed = cred("SCRAM-SHA-256", 9, 10_000);
    store
        .put_scram_credential("alice", &changed)
        .await
        .expect("put");
    assert_eq!(
        store
            .scram_credential("alice", "SCRAM-SHA-256")
            .await
            .expect("get"),
        Some(changed)
    );
    assert_eq!(
        store.list_scram_credentials().await.expect("list"),
        vec![
            ("alice".to_owned(), "SCRAM-SHA-256".to_owned(), 10_000),
            ("alice".to_owned(), "SCRAM-SHA-512".to_owned(), 8192),
            (
                "bob, the =admin".to_owned(),
                "SCRAM-SHA-512".to_owned(),
                4096
            ),
        ]
    );
    assert!(store
        .delete_scram_credential("alice", "SCRAM-SHA-256")
        .await
        .expect("delete"));
    assert!(!store
        .delete_scram_credential("alice", "SCRAM-SHA-256")
        .await
        .expect("delete again"));
    assert_eq!(
        store
            .scram_credential("alice", "SCRAM-SHA-512")
            .await
            .expect("get"),
        Some(a512),
        "the other mechanism stays"
    );
    assert_eq!(store.list_scram_credentials().await.expect("list").len(), 2);
}

/// ACL bindings: added once (duplicates change nothing), listed sorted,
/// deleted by filter (returning what went), and every change moves the
/// version brokers poll.
pub(crate) async fn acls(store: &dyn MetadataStore) {
    use tributary_meta::rules::acl::{operation, pattern, permission, resource};
    use tributary_meta::{AclBinding, AclFilter};
    let acl = |t: i8, name: &str, p: i8, who: &str, op: i8, perm: i8| AclBinding {
        resource_type: t,
        resource_name: name.to_owned(),
        pattern_type: p,
        principal: who.to_owned(),
        host: "*".to_owned(),
        operation: op,
        permission: perm,
    };
    let v0 = store.acl_version().await.expect("version");
    assert!(store.list_acls().await.expect("list").is_empty());
    let read = acl(
        resource::TOPIC,
        "orders",
        pattern::LITERAL,
        "User:alice",
        operation::READ,
        permission::ALLOW,
    );
    let write = acl(
        resource::TOPIC,
        "ord",
        pattern::PREFIXED,
        "User:bob",
        operation::WRITE,
        permission::DENY,
    );
    let group = acl(
        resource::GROUP,
        "app",
        pattern::LITERAL,
        "User:alice",
        operation::READ,
        permission::ALLOW,
    );
    store
        .create_acls(&[read.clone(), write.clone(), group.clone()])
        .await
        .expect("create");
    let v1 = store.acl_version().await.expect("version");
    assert_ne!(v1, v0, "adding bindings moves the version");
    store
        .create_acls(std::slice::from_ref(&read))
        .await
        .expect("again");
    assert_eq!(
        store.acl_version().await.expect("version"),
        v1,
        "a duplicate changes nothing"
    );
    let mut expected = vec![read.clone(), write.clone(), group.clone()];
    expected.sort();
    assert_eq!(store.list_acls().await.expect("list"), expected);

    // Delete alice's topic bindings matching the name `orders` (literal or
    // prefixed): only `read` (bob's prefixed one is another principal).
    let filter = AclFilter {
        resource_type: resource::TOPIC,
        resource_name: Some("orders".into()),
        pattern_type: pattern::MATCH,
        principal: Some("User:alice".into()),
        host: None,
        operation: operation::ANY,
        permission: permission::ANY,
    };
    assert_eq!(
        store.delete_acls(&filter).await.expect("delete"),
        vec![read]
    );
    let v2 = store.acl_version().await.expect("version");
    assert_ne!(v2, v1);
    assert!(store
        .delete_acls(&filter)
        .await
        .expect("delete again")
        .is_empty());
    assert_eq!(
        store.acl_version().await.expect("version"),
        v2,
        "deleting nothing changes nothing"
    );
    let mut rest = vec![write, group];
    rest.sort();
    assert_eq!(store.list_acls().await.expect("list"), rest);
}

// ----------------------------------------------------------- transactions

fn txn_record(id: &str, producer_id: i64, epoch: i16) -> TxnRecord {
    TxnRecord {
        transactional_id: id.to_owned(),
        producer_id,
        producer_epoch: epoch,
        last_producer_id: -1,
        last_producer_epoch: -1,
        state: TxnState::Empty,
        timeout_ms: 60_000,
        started_ms: -1,
        updated_ms: -1,
        partitions: BTreeSet::new(),
        groups: BTreeSet::new(),
        version: 0,
    }
}

/// A transactional data batch of `count` records.
fn tbatch(
    topic_id: Uuid,
    partition: i32,
    byte_start: u64,
    producer: (i64, i16),
    base_sequence: i32,
    count: i32,
) -> PendingBatch {
    PendingBatch {
        txn: TxnRole::Data {
            transactional_id: "app-1".into(),
        },
        ..pbatch(
            topic_id,
            partition,
            byte_start,
            producer,
            base_sequence,
            count,
        )
    }
}

fn marker(
    topic_id: Uuid,
    partition: i32,
    byte_start: u64,
    producer: (i64, i16),
    commit: bool,
) -> PendingBatch {
    PendingBatch {
        txn: TxnRole::Marker {
            producer_id: producer.0,
            producer_epoch: producer.1,
            commit,
        },
        ..batch(topic_id, partition, byte_start, 50, 1, 0)
    }
}

async fn put(store: &dyn MetadataStore, rec: &TxnRecord, expected: Option<i64>) -> TxnRecord {
    store
        .put_transaction(rec, expected)
        .await
        .expect("put_transaction")
        .unwrap_or_else(|| panic!("put_transaction lost the race for {rec:?}"))
}

/// Transaction records are written compare-and-set on their version;
/// transactional data needs an ongoing transaction with the partition
/// added; markers need the matching end, are written once, and move the
/// last stable offset; aborted ranges are listed; staged offsets become
/// committed offsets only with the commit; idle ids expire.
pub(crate) async fn transactions(store: &dyn MetadataStore) {
    let t = create(store, "txn", 2).await;
    let (pid, _) = store.allocate_producer_id().await.expect("producer id");
    let producer = (pid, 0);

    // Create once; a second create and a stale version lose.
    let mut rec = put(store, &txn_record("app-1", pid, 0), None).await;
    assert_eq!(rec.version, 0);
    assert!(rec.updated_ms > 0, "the store stamps updated_ms");
    assert!(store
        .put_transaction(&txn_record("app-1", pid, 0), None)
        .await
        .expect("second create")
        .is_none());
    assert!(store
        .put_transaction(&rec, Some(5))
        .await
        .expect("stale")
        .is_none());
    assert!(
        store
            .put_transaction(&txn_record("app-2", pid, 0), None)
            .await
            .is_err(),
        "one producer id belongs to one transactional id"
    );

    // Data before the partition is added is refused (KIP-890).
    let out = commit(
        store,
        segment("t1", vec![tbatch(t.id, 0, 0, producer, 0, 3)]),
    )
    .await;
    assert_eq!(
        out,
        vec![BatchOutcome::Rejected(BatchRejection::InvalidTxnState)]
    );

    // Plain data first, then the transaction's.
    commit(store, segment("t2", vec![batch(t.id, 0, 0, 50, 2, 0)])).await;
    rec.state = TxnState::Ongoing;
    rec.partitions.insert((t.id, 0));
    rec.partitions.insert((t.id, 1));
    let v = rec.version;
    rec = put(store, &rec, Some(v)).await;
    assert_eq!(rec.version, v + 1);
    assert!(
        rec.started_ms > 0,
        "an ongoing transaction gets a start time"
    );
    let loaded = store
        .transaction("app-1")
        .await
        .expect("load")
        .expect("present");
    assert_eq!(loaded, rec);

    let out = commit(
        store,
        segment(
            "t3",
            vec![
                tbatch(t.id, 0, 0, producer, 0, 3),
                batch(t.id, 0, 50, 50, 1, 0),
                tbatch(t.id, 0, 100, producer, 3, 2),
            ],
        ),
    )
    .await;
    assert_eq!(appended(out[0]), 2);
    let o = offsets(store, t.id, 0).await;
    assert_eq!(
        (o.next_offset, o.last_stable_offset),
        (8, 2),
        "the open transaction holds the LSO"
    );
    let active = store.active_producers(t.id, 0).await.expect("producers");
    assert_eq!(
        active
            .iter()
            .map(|a| (
                a.producer_id,
                a.producer_epoch,
                a.last_sequence,
                a.txn_start_offset
            ))
            .collect::<Vec<_>>(),
        vec![(pid, 0, 4, 2)],
        "the transactional producer and its open transaction"
    );
    assert_eq!(offsets(store, t.id, 1).await.last_stable_offset, 0);

    // Another id may not write into this id's transaction.
    let foreign = PendingBatch {
        txn: TxnRole::Data {
            transactional_id: "app-2".into(),
        },
        ..tbatch(t.id, 0, 0, producer, 5, 1)
    };
    let out = commit(store, segment("t3b", vec![foreign])).await;
    assert_eq!(
        out,
        vec![BatchOutcome::Rejected(
            BatchRejection::InvalidProducerIdMapping
        )]
    );

    // A marker before the transaction ends is refused.
    let out = commit(
        store,
        segment("t4", vec![marker(t.id, 0, 0, producer, false)]),
    )
    .await;
    assert_eq!(
        out,
        vec![BatchOutcome::Rejected(BatchRejection::InvalidTxnState)]
    );

    // Abort: the marker closes the data, moves the LSO, records the range;
    // the partition without data needs no marker; a repeat changes nothing.
    rec.state = TxnState::PrepareAbort;
    let v = rec.version;
    rec = put(store, &rec, Some(v)).await;
    let out = commit(
        store,
        segment(
            "t5",
            vec![
                marker(t.id, 0, 0, producer, true),
                marker(t.id, 0, 50, producer, false),
                marker(t.id, 1, 100, producer, false),
            ],
        ),
    )
    .await;
    assert_eq!(
        out[0],
        BatchOutcome::Rejected(BatchRejection::InvalidTxnState),
        "a commit marker while aborting"
    );
    assert_eq!(appended(out[1]), 8);
    assert_eq!(out[2], BatchOutcome::NotNeeded);
    let o = offsets(store, t.id, 0).await;
    assert_eq!((o.next_offset, o.last_stable_offset), (9, 9));
    let again = commit(
        store,
        segment("t6", vec![marker(t.id, 0, 0, producer, false)]),
    )
    .await;
    assert_eq!(
        again,
        vec![BatchOutcome::NotNeeded],
        "a repeated marker is not written twice"
    );
    assert_eq!(
        store
            .aborted_transactions(t.id, 0, 0, 100)
            .await
            .expect("aborted"),
        vec![AbortedTxn {
            producer_id: pid,
            first_offset: 2,
            last_offset: 8
        }]
    );
    assert!(store
        .aborted_transactions(t.id, 0, 9, 100)
        .await
        .expect("after")
        .is_empty());
    assert!(store
        .aborted_transactions(t.id, 0, 0, 1)
        .await
        .expect("before")
        .is_empty());

    // The aborted transaction's late data is refused.
    rec.state = TxnState::CompleteAbort;
    rec.partitions.clear();
    let v = rec.version;
    rec = put(store, &rec, Some(v)).await;
    assert_eq!(rec.started_ms, -1);
    let out = commit(
        store,
        segment("t7", vec![tbatch(t.id, 0, 0, producer, 5, 1)]),
    )
    .await;
    assert_eq!(
        out,
        vec![BatchOutcome::Rejected(BatchRejection::InvalidTxnState)]
    );

    // A new epoch: the old one is fenced; offsets staged for a group
    // become committed offsets with the commit.
    rec.producer_epoch = 1;
    rec.state = TxnState::Ongoing;
    rec.started_ms = -1;
    rec.partitions.insert((t.id, 1));
    let v = rec.version;
    rec = put(store, &rec, Some(v)).await;
    let out = commit(
        store,
        segment("t8", vec![tbatch(t.id, 1, 0, producer, 0, 1)]),
    )
    .await;
    assert_eq!(
        out,
        vec![BatchOutcome::Rejected(BatchRejection::InvalidProducerEpoch)]
    );
    let out = commit(
        store,
        segment("t9", vec![tbatch(t.id, 1, 0, (pid, 1), 0, 2)]),
    )
    .await;
    assert_eq!(appended(out[0]), 0);
    let staged = [offset("txn", 1, 42, Some("m"))];
    assert_eq!(
        store
            .stage_txn_offsets("app-1", pid, 1, "g", &staged)
            .await
            .expect("stage"),
        Err(TxnOffsetRefusal::InvalidState),
        "the group was not added"
    );
    rec.groups.insert("g".to_owned());
    let v = rec.version;
    rec = put(store, &rec, Some(v)).await;
    assert_eq!(
        store
            .stage_txn_offsets("app-1", pid, 0, "g", &staged)
            .await
            .expect("stage"),
        Err(TxnOffsetRefusal::Fenced)
    );
    assert_eq!(
        store
            .stage_txn_offsets("app-1", pid + 1, 1, "g", &staged)
            .await
            .expect("stage"),
        Err(TxnOffsetRefusal::UnknownProducer)
    );
    assert_eq!(
        store
            .stage_txn_offsets("app-1", pid, 1, "g", &staged)
            .await
            .expect("stage"),
        Ok(())
    );
    assert_eq!(
        store.pending_txn_offsets("g").await.expect("pending"),
        vec![("txn".to_owned(), 1)]
    );
    assert!(
        store
            .fetch_offsets("g", None)
            .await
            .expect("fetch")
            .is_empty(),
        "not before the commit"
    );
    let listed = store
        .list_transactions(&[TxnState::Ongoing])
        .await
        .expect("list");
    assert_eq!(
        listed
            .iter()
            .map(|r| r.transactional_id.as_str())
            .collect::<Vec<_>>(),
        ["app-1"]
    );
    rec.state = TxnState::PrepareCommit;
    let v = rec.version;
    rec = put(store, &rec, Some(v)).await;
    let out = commit(
        store,
        segment("t10", vec![marker(t.id, 1, 0, (pid, 1), true)]),
    )
    .await;
    assert_eq!(appended(out[0]), 2);
    assert!(
        store
            .aborted_transactions(t.id, 1, 0, 100)
            .await
            .expect("none")
            .is_empty(),
        "commits leave no range"
    );
    rec.state = TxnState::CompleteCommit;
    rec.partitions.clear();
    rec.groups.clear();
    let v = rec.version;
    rec = put(store, &rec, Some(v)).await;
    let fetched = store.fetch_offsets("g", None).await.expect("fetch");
    assert_eq!(fetched.len(), 1);
    assert_eq!(
        (fetched[0].offset, fetched[0].metadata.as_deref()),
        (42, Some("m"))
    );
    assert!(store
        .pending_txn_offsets("g")
        .await
        .expect("pending")
        .is_empty());
    assert!(store
        .list_transactions(&[TxnState::Ongoing])
        .await
        .expect("list")
        .is_empty());

    // Idle ids expire; ongoing ones never do.
    let other = put(
        store,
        &TxnRecord {
            state: TxnState::Ongoing,
            ..txn_record("app-3", pid + 1000, 0)
        },
        None,
    )
    .await;
    let far = rec.updated_ms.max(other.updated_ms) + 10_000;
    assert!(store
        .expire_transactions(far, 60_000)
        .await
        .expect("expire")
        .is_empty());
    assert_eq!(
        store.expire_transactions(far, 1_000).await.expect("expire"),
        vec!["app-1".to_owned()]
    );
    assert!(store.transaction("app-1").await.expect("gone").is_none());
    assert!(store.transaction("app-3").await.expect("kept").is_some());

    // Retention past an aborted range forgets it.
    store
        .advance_log_start(t.id, 0, 9)
        .await
        .expect("delete records");
    store.drop_expired_entries(wall_ms()).await.expect("drop");
    assert!(store
        .aborted_transactions(t.id, 0, 0, 100)
        .await
        .expect("aborted")
        .is_empty());
}
