//! Storage does not grow without bound: compaction merges many small
//! multi-partition segments into per-partition objects (and the janitor
//! deletes the old ones after the grace period) while every record stays
//! readable exactly once, in order; retention by time and by size moves the
//! log start forward and frees objects; a consumer reading across a
//! compaction sees every record once.

use std::path::Path;
use std::time::Duration;

use crate::common::*;
use anyhow::{ensure, Context, Result};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::Consumer;
use rdkafka::TopicPartitionList;

const MAINTENANCE: &[&str] = &[
    "--maintenance-interval-ms",
    "300",
    "--segment-grace-ms",
    "2000",
    "--segment-commit-deadline-ms",
    "1000",
    "--compaction-min-age-ms",
    "0",
];

/// (objects, bytes) of segment objects under the broker's file:// store.
fn segment_objects(data_dir: &Path) -> (usize, u64) {
    let dir = data_dir.join("objects").join("segments");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return (0, 0);
    };
    entries
        .flatten()
        .filter_map(|e| e.metadata().ok())
        .filter(|m| m.is_file())
        .fold((0, 0), |(n, b), m| (n + 1, b + m.len()))
}

/// Produce `rounds` rounds of `per_round` records, waiting for each round's
/// acknowledgements so every round lands in its own segment.
async fn produce_rounds(
    bootstrap: &str,
    topic: &str,
    rounds: usize,
    per_round: usize,
    size: usize,
) -> Result<()> {
    let producer = producer(bootstrap, &[("acks", "all"), ("linger.ms", "0")])?;
    for round in 0..rounds {
        let records = (0..per_round).map(|i| Out {
            key: format!("k{}", i % 10),
            value: format!("{round}:{i}:{}", "v".repeat(size)),
            ..Out::default()
        });
        produce_all(&producer, topic, records).await?;
    }
    Ok(())
}

async fn read_everything(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    expected: usize,
) -> Result<Vec<Rec>> {
    let reader = consumer(
        bootstrap,
        &format!("audit-{topic}-{}", std::process::id()),
        &[],
    )?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, rdkafka::Offset::Beginning)
            .context("assign")?;
    }
    reader.assign(&tpl).context("assign")?;
    let mut got = consume_n(&reader, expected, Duration::from_secs(60)).await?;
    got.extend(drain_quiet(&reader, Duration::from_secs(1)).await?);
    got.sort_by_key(|r| (r.partition, r.offset));
    Ok(got)
}

#[tokio::test(flavor = "multi_thread")]
async fn compaction_merges_segments_and_keeps_every_record() -> Result<()> {
    let broker = start_broker_local(MAINTENANCE)?;
    run_test(&broker, async {
        let bootstrap = broker.bootstrap();
        create_topic(&bootstrap, "compact-me", 3).await?;
        produce_rounds(&bootstrap, "compact-me", 40, 30, 100).await?;
        let (before, before_bytes) = segment_objects(broker.data_dir());
        ensure!(before >= 30, "expected many small segments, found {before}");

        // A consumer reading while compaction swaps the index under it.
        let during = read_everything(&bootstrap, "compact-me", 3, 1200).await?;
        ensure!(
            during.len() == 1200,
            "read {} records during compaction",
            during.len()
        );
        check_dense(&during, |_| 0)?;

        let (after, after_bytes) =
            wait_for("compaction and janitor", Duration::from_secs(60), || {
                let (n, b) = segment_objects(broker.data_dir());
                Ok(if n <= before / 3 { Ok((n, b)) } else { Err(n) })
            })
            .await?;
        eprintln!("segment objects {before} ({before_bytes} B) -> {after} ({after_bytes} B)");
        ensure!(
            after_bytes < before_bytes,
            "bytes did not go down: {before_bytes} -> {after_bytes}"
        );

        let got = read_everything(&bootstrap, "compact-me", 3, 1200).await?;
        ensure!(
            got.len() == 1200,
            "read {} records after compaction",
            got.len()
        );
        check_dense(&got, |_| 0)?;
        let mut values: Vec<&str> = got.iter().map(|r| r.value.as_str()).collect();
        values.sort_unstable();
        values.dedup();
        ensure!(values.len() == 1200, "duplicates after compaction");
        Ok(())
    })
    .await
}

async fn create_topic_with(
    bootstrap: &str,
    name: &str,
    partitions: i32,
    configs: &[(&str, &str)],
) -> Result<()> {
    let admin: AdminClient<DefaultClientContext> = client_config(bootstrap).create()?;
    let mut topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
    for (k, v) in configs {
        topic = topic.set(k, v);
    }
    let results = admin
        .create_topics(
            [&topic],
            &AdminOptions::new().operation_timeout(Some(OP_TIMEOUT)),
        )
        .await?;
    for r in results {
        if let Err((t, code)) = r {
            anyhow::bail!("create topic {t}: {code:?}");
        }
    }
    Ok(())
}

fn log_start(bootstrap: &str, topic: &str, partition: i32) -> Result<(i64, i64)> {
    let c = consumer(bootstrap, "watermarks", &[])?;
    Ok(c.fetch_watermarks(topic, partition, OP_TIMEOUT)?)
}

#[tokio::test(flavor = "multi_thread")]
async fn retention_by_time_and_size_frees_objects() -> Result<()> {
    let broker = start_broker_local(&[MAINTENANCE, &["--compaction", "false"]].concat())?;
    run_test(&broker, async {
        let bootstrap = broker.bootstrap();
        create_topic_with(&bootstrap, "by-time", 1, &[("retention.ms", "1000")]).await?;
        create_topic_with(&bootstrap, "by-size", 1, &[("retention.bytes", "20000")]).await?;
        produce_rounds(&bootstrap, "by-time", 20, 10, 200).await?;
        produce_rounds(&bootstrap, "by-size", 20, 10, 200).await?;
        let (before, before_bytes) = segment_objects(broker.data_dir());

        let bs = bootstrap.clone();
        let (low_time, high_time) = wait_for("time retention", Duration::from_secs(30), || {
            let (low, high) = tokio::task::block_in_place(|| log_start(&bs, "by-time", 0))?;
            Ok(if low > 0 { Ok((low, high)) } else { Err(low) })
        })
        .await?;
        ensure!(
            high_time == 200 && low_time <= 200,
            "by-time watermarks {low_time}..{high_time}"
        );
        let bs = bootstrap.clone();
        let (low_size, high_size) = wait_for("size retention", Duration::from_secs(30), || {
            let (low, high) = tokio::task::block_in_place(|| log_start(&bs, "by-size", 0))?;
            Ok(if low > 0 { Ok((low, high)) } else { Err(low) })
        })
        .await?;
        ensure!(
            high_size == 200 && low_size > 0 && low_size < 200,
            "by-size watermarks {low_size}..{high_size}"
        );

        let (after, after_bytes) = wait_for("janitor", Duration::from_secs(30), || {
            let (n, b) = segment_objects(broker.data_dir());
            Ok(if b < before_bytes { Ok((n, b)) } else { Err(n) })
        })
        .await?;
        eprintln!("retention: objects {before} ({before_bytes} B) -> {after} ({after_bytes} B)");

        // What is left is readable from the new log start, densely.
        let left = usize::try_from(high_size - low_size)?;
        let reader = consumer(&bootstrap, "after-retention", &[])?;
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset("by-size", 0, rdkafka::Offset::Beginning)?;
        reader.assign(&tpl)?;
        let got = consume_n(&reader, left, Duration::from_secs(30)).await?;
        check_dense(&got, |_| low_size)?;
        Ok(())
    })
    .await
}
