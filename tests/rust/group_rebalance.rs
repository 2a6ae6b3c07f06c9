//! Three consumers in one group share a 6-partition topic 2/2/2; when one
//! closes, the other two take over 3/3 and consume everything produced after.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use crate::common::*;
use anyhow::{bail, ensure, Context, Result};
use rdkafka::consumer::{Consumer, StreamConsumer};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

const TOPIC: &str = "rebalance";
const GROUP: &str = "rebalance-group";
const PARTITIONS: i32 = 6;
const PER_PARTITION: usize = 100;

#[tokio::test(flavor = "multi_thread")]
async fn group_rebalance() -> Result<()> {
    let broker = start_broker(&[])?;
    run_test(&broker, body(&broker)).await
}

/// Polls `consumer` (which also drives its rebalances) and forwards every
/// record tagged with the member's index.
fn pump(
    index: usize,
    consumer: Arc<StreamConsumer>,
    sink: mpsc::UnboundedSender<(usize, Rec)>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            match consumer.recv().await {
                Ok(msg) => {
                    if sink.send((index, Rec::from_message(&msg))).is_err() {
                        return;
                    }
                }
                Err(err) => eprintln!("consumer {index} error: {err}"),
            }
        }
    })
}

fn assignments(consumers: &[&Arc<StreamConsumer>]) -> Result<Vec<Vec<i32>>> {
    consumers.iter().map(|c| assigned(c, TOPIC)).collect()
}

/// Sizes match `sizes` and the assignments partition 0..PARTITIONS.
fn balanced(current: &[Vec<i32>], sizes: &[usize]) -> bool {
    let all: BTreeSet<i32> = current.iter().flatten().copied().collect();
    let count: usize = current.iter().map(Vec::len).sum();
    current.iter().map(Vec::len).collect::<Vec<_>>() == sizes
        && count == PARTITIONS as usize
        && all == (0..PARTITIONS).collect()
}

async fn body(broker: &BrokerProcess) -> Result<()> {
    let bootstrap = broker.bootstrap();
    create_topic(&bootstrap, TOPIC, PARTITIONS).await?;

    let (sink, mut records) = mpsc::unbounded_channel();
    let mut members = Vec::new();
    let mut pumps = Vec::new();
    for index in 0..3 {
        // Range assignment makes 6 partitions over 3 members exactly 2/2/2.
        let consumer = Arc::new(consumer(
            &bootstrap,
            GROUP,
            &[("partition.assignment.strategy", "range")],
        )?);
        consumer.subscribe(&[TOPIC]).context("subscribe")?;
        pumps.push(pump(index, Arc::clone(&consumer), sink.clone()));
        members.push(consumer);
    }
    drop(sink);

    wait_for("2/2/2 assignment", Duration::from_secs(90), || {
        let current = assignments(&[&members[0], &members[1], &members[2]])?;
        Ok(if balanced(&current, &[2, 2, 2]) {
            Ok(())
        } else {
            Err(current)
        })
    })
    .await?;

    // Close member 2 cleanly: stop polling it, leave the group, drop it.
    let leaving = members.pop().context("three members")?;
    let leaving_pump = pumps.pop().context("three pumps")?;
    leaving_pump.abort();
    let _ = leaving_pump.await;
    leaving.unsubscribe();
    match Arc::try_unwrap(leaving) {
        Ok(consumer) => drop(consumer),
        Err(_) => bail!("member 2 still referenced after its pump stopped"),
    }

    wait_for("3/3 assignment", Duration::from_secs(90), || {
        let current = assignments(&[&members[0], &members[1]])?;
        Ok(if balanced(&current, &[3, 3]) {
            Ok(())
        } else {
            Err(current)
        })
    })
    .await?;
    let owner: HashMap<i32, usize> = assignments(&[&members[0], &members[1]])?
        .into_iter()
        .enumerate()
        .flat_map(|(member, parts)| parts.into_iter().map(move |p| (p, member)))
        .collect();

    let producer = producer(&bootstrap, &[("acks", "all")])?;
    let outs = (0..PARTITIONS).flat_map(|p| {
        (0..PER_PARTITION).map(move |i| Out {
            partition: Some(p),
            key: format!("p{p}"),
            value: format!("after-rebalance:{p}:{i}"),
            ..Out::default()
        })
    });
    produce_all(&producer, TOPIC, outs).await?;

    let total = PARTITIONS as usize * PER_PARTITION;
    let mut got: Vec<(usize, Rec)> = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    while got.len() < total {
        match tokio::time::timeout_at(deadline, records.recv()).await {
            Ok(Some(item)) => got.push(item),
            Ok(None) => bail!("all consumer pumps ended"),
            Err(_) => bail!("received {} of {total} records", got.len()),
        }
    }
    // Anything extra (duplicates) shows up within a few seconds.
    while let Ok(Some(item)) = tokio::time::timeout(Duration::from_secs(3), records.recv()).await {
        got.push(item);
    }
    for pump in pumps {
        pump.abort();
    }

    ensure!(
        got.len() == total,
        "got {} records, expected {total}",
        got.len()
    );
    let mut seen = BTreeSet::new();
    for (member, rec) in &got {
        ensure!(
            owner.get(&rec.partition) == Some(member),
            "partition {} consumed by member {member}, owner is {:?}",
            rec.partition,
            owner.get(&rec.partition)
        );
        ensure!(seen.insert(rec.value.clone()), "duplicate {}", rec.value);
    }
    let recs: Vec<Rec> = got.into_iter().map(|(_, r)| r).collect();
    check_dense(&recs, |_| 0)?;
    Ok(())
}
