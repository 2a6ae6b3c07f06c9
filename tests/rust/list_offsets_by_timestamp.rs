//! ListOffsets by timestamp: for records with explicit timestamps
//! `base + i * step`, `offsets_for_times` returns the first offset whose
//! timestamp is at or after the query — including a query between two
//! records, one before the first, and one after the last (-1, i.e. end).

use std::time::{SystemTime, UNIX_EPOCH};

use crate::common::*;
use anyhow::{ensure, Context, Result};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};

const TOPIC: &str = "offsets-by-time";
const COUNT: i64 = 10;
/// Timestamp step per record, per partition.
const STEPS: [i64; 2] = [1_000, 2_000];

#[tokio::test(flavor = "multi_thread")]
async fn list_offsets_by_timestamp() -> Result<()> {
    let broker = start_broker(&[])?;
    run_test(&broker, body(&broker)).await
}

async fn body(broker: &BrokerProcess) -> Result<()> {
    let bootstrap = broker.bootstrap();
    create_topic(&bootstrap, TOPIC, STEPS.len() as i32).await?;

    // One hour ago, on a whole second: clearly in the past, no clock games.
    let now_ms = i64::try_from(SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis())?;
    let base = (now_ms - 3_600_000) / 1000 * 1000;

    let producer = producer(&bootstrap, &[("acks", "all")])?;
    let outs = (0..STEPS.len()).flat_map(|p| {
        (0..COUNT).map(move |i| Out {
            partition: Some(p as i32),
            key: format!("k{i}"),
            value: format!("ts-{p}-{i}"),
            timestamp: Some(base + i * STEPS[p]),
            ..Out::default()
        })
    });
    let deliveries = produce_all(&producer, TOPIC, outs).await?;
    ensure!(deliveries.len() == 2 * COUNT as usize);

    let consumer: BaseConsumer = client_config(&bootstrap)
        .create()
        .context("create consumer")?;

    // (partition, query timestamp, expected offset)
    let last = COUNT - 1;
    let cases: Vec<(i32, i64, Offset)> = vec![
        (0, base - 5_000, Offset::Offset(0)),
        (0, base, Offset::Offset(0)),
        (0, base + 3_000, Offset::Offset(3)),
        (0, base + 3_500, Offset::Offset(4)), // between records 3 and 4
        (0, base + last * 1_000, Offset::Offset(last)),
        (0, base + last * 1_000 + 1, Offset::End), // after the end: -1
        (1, base + 1, Offset::Offset(1)),
        (1, base + 7_000, Offset::Offset(4)), // between records 3 and 4
        (1, base + last * 2_000 + 1, Offset::End),
    ];
    for (partition, ts, expected) in cases {
        let mut query = TopicPartitionList::new();
        query
            .add_partition_offset(TOPIC, partition, Offset::Offset(ts))
            .context("build query")?;
        let answer = tokio::task::block_in_place(|| consumer.offsets_for_times(query, OP_TIMEOUT))
            .with_context(|| format!("offsets_for_times partition {partition} ts {ts}"))?;
        let elem = answer
            .find_partition(TOPIC, partition)
            .context("partition missing from answer")?;
        ensure!(
            elem.error().is_ok(),
            "partition {partition} ts {ts}: error {:?}",
            elem.error()
        );
        ensure!(
            elem.offset() == expected,
            "partition {partition} ts base{:+}: offset {:?}, expected {expected:?}",
            ts - base,
            elem.offset()
        );
    }

    // Both partitions queried at once get independent answers.
    let mut query = TopicPartitionList::new();
    query
        .add_partition_offset(TOPIC, 0, Offset::Offset(base + 5_000))
        .context("build query")?;
    query
        .add_partition_offset(TOPIC, 1, Offset::Offset(base + 5_000))
        .context("build query")?;
    let answer = tokio::task::block_in_place(|| consumer.offsets_for_times(query, OP_TIMEOUT))
        .context("offsets_for_times both partitions")?;
    let got: Vec<Offset> = (0..2)
        .map(|p| answer.find_partition(TOPIC, p).map(|e| e.offset()))
        .collect::<Option<_>>()
        .context("partition missing from answer")?;
    ensure!(
        got == [Offset::Offset(5), Offset::Offset(3)],
        "two-partition query answered {got:?}"
    );

    for partition in 0..2 {
        let (low, high) =
            tokio::task::block_in_place(|| consumer.fetch_watermarks(TOPIC, partition, OP_TIMEOUT))
                .context("fetch_watermarks")?;
        ensure!(
            (low, high) == (0, COUNT),
            "partition {partition} watermarks ({low}, {high})"
        );
    }
    Ok(())
}
