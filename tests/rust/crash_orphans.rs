//! A SIGKILL while segment uploads are in flight (every PUT is slowed down)
//! loses no acknowledged record, and the janitor deletes uploads that were
//! never committed once they are older than the grace period. An orphan is
//! also planted by hand (an object under `segments/` the metadata store has
//! never heard of, as left by a crash between PUT and commit), so the test
//! does not depend on the kill landing in that window.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::common::*;
use anyhow::{bail, ensure, Context, Result};
use rdkafka::consumer::Consumer;
use rdkafka::producer::FutureRecord;
use rdkafka::TopicPartitionList;

const TOPIC: &str = "crash";
const PARTITIONS: i32 = 2;

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_with_uploads_in_flight_then_janitor_cleans_orphans() -> Result<()> {
    let mut broker = start_broker_local(&[
        "--inject-faults",
        "latency_ms=100-300",
        "--maintenance-interval-ms",
        "300",
        "--segment-grace-ms",
        "2000",
        "--segment-commit-deadline-ms",
        "1000",
    ])?;
    let result = tokio::time::timeout(TEST_TIMEOUT, body(&mut broker))
        .await
        .unwrap_or_else(|_| Err(anyhow::anyhow!("timed out")));
    run_test(&broker, async { result }).await
}

async fn body(broker: &mut BrokerProcess) -> Result<()> {
    let bootstrap = broker.bootstrap();
    create_topic(&bootstrap, TOPIC, PARTITIONS).await?;
    let orphan = broker
        .data_dir()
        .join("objects/segments/000000000000001-0123456789abcdef0123456789abcdef.seg");
    std::fs::create_dir_all(orphan.parent().context("orphan dir")?)?;
    std::fs::write(&orphan, b"an upload whose commit never happened")?;

    let producer = producer(
        &bootstrap,
        &[
            ("acks", "all"),
            ("message.timeout.ms", "5000"),
            ("retries", "0"),
        ],
    )?;
    let stop = Arc::new(AtomicBool::new(false));
    let acks = Arc::new(AtomicUsize::new(0));
    let task = {
        let stop = stop.clone();
        let acks = acks.clone();
        tokio::spawn(async move {
            let mut acked: HashMap<String, (i32, i64)> = HashMap::new();
            let mut pending = Vec::new();
            let mut n = 0usize;
            while !stop.load(Ordering::Relaxed) && n < 100_000 {
                let value = format!("v{n}");
                if let Ok(f) =
                    producer.send_result(FutureRecord::to(TOPIC).key("k").payload(&value))
                {
                    pending.push((value, f));
                }
                n += 1;
                if pending.len() >= 200 {
                    for (value, f) in pending.drain(..) {
                        if let Ok(Ok(d)) = f.await {
                            acked.insert(value, (d.partition, d.offset));
                            acks.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }
            for (value, f) in pending.drain(..) {
                if let Ok(Ok(d)) = f.await {
                    acked.insert(value, (d.partition, d.offset));
                }
            }
            acked
        })
    };
    let seen = acks.clone();
    wait_for(
        "acknowledgements before the kill",
        Duration::from_secs(60),
        || {
            let n = seen.load(Ordering::Relaxed);
            Ok(if n >= 1_000 { Ok(n) } else { Err(n) })
        },
    )
    .await?;
    tokio::task::block_in_place(|| broker.kill_9())?;
    stop.store(true, Ordering::Relaxed);
    let acked = task.await.context("producer task")?;
    ensure!(acked.len() >= 1_000);

    tokio::task::block_in_place(|| broker.restart())?;
    let bootstrap = broker.bootstrap();
    let reader = consumer(&bootstrap, "crash-audit", &[])?;
    let mut total = 0usize;
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        let (_, high) =
            tokio::task::block_in_place(|| reader.fetch_watermarks(TOPIC, p, OP_TIMEOUT))?;
        total += usize::try_from(high)?;
        tpl.add_partition_offset(TOPIC, p, rdkafka::Offset::Beginning)?;
    }
    reader.assign(&tpl)?;
    let mut got = consume_n(&reader, total, Duration::from_secs(120)).await?;
    got.extend(drain_quiet(&reader, Duration::from_secs(1)).await?);
    got.sort_by_key(|r| (r.partition, r.offset));
    check_dense(&got, |_| 0)?;
    let mut at: HashMap<&str, Vec<(i32, i64)>> = HashMap::new();
    for r in &got {
        at.entry(r.value.as_str())
            .or_default()
            .push((r.partition, r.offset));
    }
    for (value, place) in &acked {
        match at.get(value.as_str()).map(Vec::as_slice) {
            Some([only]) => ensure!(
                only == place,
                "{value} acked at {place:?}, stored at {only:?}"
            ),
            Some(many) => bail!("{value} stored {} times", many.len()),
            None => bail!("acknowledged {value} lost after SIGKILL"),
        }
    }

    let orphan_path = orphan.clone();
    wait_for(
        "the janitor to delete the orphan",
        Duration::from_secs(30),
        || {
            Ok(if orphan_path.exists() {
                Err("still there")
            } else {
                Ok(())
            })
        },
    )
    .await?;
    ensure!(broker.logs().contains("deleted orphan upload"));
    Ok(())
}
