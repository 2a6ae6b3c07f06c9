//! An acknowledged record is never lost (DESIGN.md invariant 1): an acks=all
//! producer writes a numbered sequence, the broker is SIGKILLed mid-stream,
//! restarted on the same data dir, and every acknowledged record is there
//! exactly once, at the offset it was acknowledged with. Unacknowledged
//! records may or may not be there.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::common::*;
use anyhow::{bail, ensure, Context, Result};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use rdkafka::TopicPartitionList;

const TOPIC: &str = "sigkill";
const PARTITIONS: i32 = 3;
/// Kill the broker once this many records were acknowledged.
const KILL_AFTER_ACKS: usize = 3_000;
/// Upper bound on records produced (the kill normally comes long before).
const MAX_RECORDS: usize = 200_000;
/// Records awaiting acknowledgement at most.
const WINDOW: usize = 1_000;

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_durability() -> Result<()> {
    let mut broker = start_broker(&[])?;
    let result = tokio::time::timeout(TEST_TIMEOUT, body(&mut broker))
        .await
        .unwrap_or_else(|_| Err(anyhow::anyhow!("timed out")));
    run_test(&broker, async { result }).await
}

#[derive(Default)]
struct Outcome {
    /// value -> (partition, offset) for every acknowledged record.
    acked: HashMap<String, (i32, i64)>,
    failed: usize,
    sent: usize,
}

async fn settle(future: DeliveryFuture, value: String, outcome: &mut Outcome, acks: &AtomicUsize) {
    match future.await {
        Ok(Ok(delivery)) => {
            outcome
                .acked
                .insert(value, (delivery.partition, delivery.offset));
            acks.fetch_add(1, Ordering::Relaxed);
        }
        Ok(Err(_)) | Err(_) => outcome.failed += 1,
    }
}

/// Produces `seq-<n>` in order until `stop`, then waits for every pending
/// delivery to resolve (acknowledged or failed after message.timeout.ms).
async fn produce_until_stopped(
    producer: FutureProducer,
    stop: Arc<AtomicBool>,
    acks: Arc<AtomicUsize>,
) -> Result<Outcome> {
    let mut outcome = Outcome::default();
    let mut pending: VecDeque<(String, DeliveryFuture)> = VecDeque::new();
    for n in 0..MAX_RECORDS {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let value = format!("seq-{n}");
        let key = format!("k{}", n % 30);
        match producer.send_result(FutureRecord::to(TOPIC).key(&key).payload(&value)) {
            Ok(future) => {
                pending.push_back((value, future));
                outcome.sent += 1;
            }
            // Queue full (the broker is gone or slow): this number is
            // skipped, never sent; wait on the oldest pending below.
            Err((err, _)) => {
                let Some((value, future)) = pending.pop_front() else {
                    bail!("enqueue failed with nothing pending: {err}");
                };
                settle(future, value, &mut outcome, &acks).await;
            }
        }
        // A bounded window in flight keeps acknowledgements flowing.
        while pending.len() >= WINDOW {
            if let Some((value, future)) = pending.pop_front() {
                settle(future, value, &mut outcome, &acks).await;
            }
        }
    }
    while let Some((value, future)) = pending.pop_front() {
        settle(future, value, &mut outcome, &acks).await;
    }
    Ok(outcome)
}

async fn body(broker: &mut BrokerProcess) -> Result<()> {
    let bootstrap = broker.bootstrap();
    create_topic(&bootstrap, TOPIC, PARTITIONS).await?;

    let producer = producer(
        &bootstrap,
        &[
            ("acks", "all"),
            // Unacknowledged records fail quickly once the broker is dead,
            // and are not retried into the restarted broker.
            ("message.timeout.ms", "5000"),
            ("retries", "0"),
            ("reconnect.backoff.max.ms", "500"),
        ],
    )?;
    let stop = Arc::new(AtomicBool::new(false));
    let acks = Arc::new(AtomicUsize::new(0));
    let task = tokio::spawn(produce_until_stopped(
        producer,
        Arc::clone(&stop),
        Arc::clone(&acks),
    ));

    let acks_now = Arc::clone(&acks);
    let wait = wait_for(
        "acknowledgements before the kill",
        Duration::from_secs(120),
        || {
            let n = acks_now.load(Ordering::Relaxed);
            Ok(if n >= KILL_AFTER_ACKS { Ok(n) } else { Err(n) })
        },
    )
    .await;
    if let Err(err) = wait {
        stop.store(true, Ordering::Relaxed);
        return Err(err);
    }
    tokio::task::block_in_place(|| broker.kill_9())?;
    stop.store(true, Ordering::Relaxed);
    let outcome = task.await.context("producer task panicked")??;
    eprintln!(
        "sent {} acknowledged {} failed {}",
        outcome.sent,
        outcome.acked.len(),
        outcome.failed
    );
    ensure!(outcome.acked.len() >= KILL_AFTER_ACKS);

    tokio::task::block_in_place(|| broker.restart())?;
    let bootstrap = broker.bootstrap();

    // Read every partition from 0 to its high watermark.
    let reader = consumer(&bootstrap, "sigkill-audit", &[])?;
    let mut total = 0usize;
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        let (low, high) =
            tokio::task::block_in_place(|| reader.fetch_watermarks(TOPIC, p, OP_TIMEOUT))
                .with_context(|| format!("watermarks of partition {p}"))?;
        ensure!(low == 0, "partition {p} log start {low}");
        total += usize::try_from(high)?;
        tpl.add_partition_offset(TOPIC, p, rdkafka::Offset::Beginning)
            .context("assign")?;
    }
    reader.assign(&tpl).context("assign")?;
    let records = read_all(&reader, total).await?;
    check_dense(&records, |_| 0)?;

    let mut at: HashMap<&str, Vec<(i32, i64)>> = HashMap::new();
    for rec in &records {
        at.entry(rec.value.as_str())
            .or_default()
            .push((rec.partition, rec.offset));
    }
    let mut lost = Vec::new();
    for (value, place) in &outcome.acked {
        match at.get(value.as_str()).map(Vec::as_slice) {
            None => lost.push(value.clone()),
            Some([only]) => ensure!(
                only == place,
                "{value} acknowledged at {place:?} but stored at {only:?}"
            ),
            Some(many) => bail!("acknowledged {value} stored {} times: {many:?}", many.len()),
        }
    }
    if !lost.is_empty() {
        lost.sort();
        bail!(
            "{} acknowledged records lost after SIGKILL, e.g. {:?}",
            lost.len(),
            &lost[..lost.len().min(10)]
        );
    }
    Ok(())
}

/// Reads exactly `total` records (the sum of high watermarks).
async fn read_all(reader: &StreamConsumer, total: usize) -> Result<Vec<Rec>> {
    let mut records = consume_n(reader, total, Duration::from_secs(120)).await?;
    records.extend(drain_quiet(reader, Duration::from_secs(2)).await?);
    ensure!(
        records.len() == total,
        "read {} records, high watermarks sum to {total}",
        records.len()
    );
    Ok(records)
}
