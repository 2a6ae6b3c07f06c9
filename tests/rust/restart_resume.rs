//! Committed group offsets (with their metadata) survive a clean broker
//! restart: a new member of the group resumes exactly at the committed
//! offsets, and records produced after the restart follow densely. And a
//! stable group survives its coordinator's SIGKILL and restart without a
//! rebalance.

use std::collections::HashMap;
use std::time::Duration;

use crate::common::*;
use anyhow::{ensure, Context, Result};
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::{Offset, TopicPartitionList};

const TOPIC: &str = "restart-resume";
const GROUP: &str = "restart-resume-group";
const PARTITIONS: i32 = 3;
const BEFORE: i64 = 100;
const COMMITTED: i64 = 40;
const AFTER: i64 = 10;

#[tokio::test(flavor = "multi_thread")]
async fn restart_resume() -> Result<()> {
    let mut broker = start_broker(&[])?;
    let result = body(&mut broker).await;
    // Borrow split: the body needs `&mut` to restart, the reporter `&`.
    run_test(&broker, async { result }).await
}

fn outs(phase: &'static str, count: i64) -> impl Iterator<Item = Out> {
    (0..PARTITIONS).flat_map(move |p| {
        (0..count).map(move |i| Out {
            partition: Some(p),
            key: format!("p{p}"),
            value: format!("{phase}:{p}:{i}"),
            ..Out::default()
        })
    })
}

fn commit_metadata(partition: i32) -> String {
    format!("resume-here-p{partition}")
}

async fn body(broker: &mut BrokerProcess) -> Result<()> {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let bootstrap = broker.bootstrap();
        create_topic(&bootstrap, TOPIC, PARTITIONS).await?;
        let writer = producer(&bootstrap, &[("acks", "all")])?;
        produce_all(&writer, TOPIC, outs("before", BEFORE)).await?;
        drop(writer);

        // Read everything, then commit offset COMMITTED (next record to read)
        // on every partition, with metadata.
        {
            let consumer = consumer(&bootstrap, GROUP, &[])?;
            consumer.subscribe(&[TOPIC]).context("subscribe")?;
            let total = (PARTITIONS as i64 * BEFORE) as usize;
            let records = consume_n(&consumer, total, Duration::from_secs(90)).await?;
            check_dense(&records, |_| 0)?;
            let mut tpl = TopicPartitionList::new();
            for p in 0..PARTITIONS {
                let mut elem = tpl.add_partition(TOPIC, p);
                elem.set_offset(Offset::Offset(COMMITTED))
                    .context("set offset")?;
                elem.set_metadata(commit_metadata(p));
            }
            consumer
                .commit(&tpl, CommitMode::Sync)
                .context("commit offsets")?;
            let committed = consumer
                .committed(OP_TIMEOUT)
                .context("read back committed offsets")?;
            check_committed(&committed)?;
            consumer.unsubscribe();
        }

        let status = tokio::task::block_in_place(|| broker.stop())?;
        ensure!(status.success(), "broker exited with {status} on SIGTERM");
        tokio::task::block_in_place(|| broker.restart())?;
        let bootstrap = broker.bootstrap();

        let writer = producer(&bootstrap, &[("acks", "all")])?;
        produce_all(&writer, TOPIC, outs("after", AFTER)).await?;

        let consumer = consumer(&bootstrap, GROUP, &[])?;
        consumer
            .subscribe(&[TOPIC])
            .context("subscribe after restart")?;
        let expected = (PARTITIONS as i64 * (BEFORE - COMMITTED + AFTER)) as usize;
        let mut records = consume_n(&consumer, expected, Duration::from_secs(90)).await?;
        records.extend(drain_quiet(&consumer, Duration::from_secs(3)).await?);
        ensure!(
            records.len() == expected,
            "consumed {} records after restart, expected {expected}",
            records.len()
        );
        check_dense(&records, |_| COMMITTED)?;
        let mut last: HashMap<i32, &Rec> = HashMap::new();
        for rec in &records {
            last.insert(rec.partition, rec);
        }
        for p in 0..PARTITIONS {
            let rec = last
                .get(&p)
                .with_context(|| format!("nothing from partition {p}"))?;
            ensure!(
                rec.offset == BEFORE + AFTER - 1 && rec.value == format!("after:{p}:{}", AFTER - 1),
                "last record of partition {p} is {rec:?}"
            );
        }

        let mut query = TopicPartitionList::new();
        for p in 0..PARTITIONS {
            query.add_partition(TOPIC, p);
        }
        let committed = consumer
            .committed_offsets(query, OP_TIMEOUT)
            .context("committed offsets after restart")?;
        check_committed(&committed)?;
        Ok(())
    })
    .await
    .context("restart_resume timed out")?
}

fn check_committed(tpl: &TopicPartitionList) -> Result<()> {
    for p in 0..PARTITIONS {
        let elem = tpl
            .find_partition(TOPIC, p)
            .with_context(|| format!("no committed offset for partition {p}"))?;
        ensure!(
            elem.offset() == Offset::Offset(COMMITTED),
            "partition {p} committed offset {:?}, expected {COMMITTED}",
            elem.offset()
        );
        ensure!(
            elem.metadata() == commit_metadata(p),
            "partition {p} commit metadata {:?} (OffsetFetch must return what OffsetCommit stored)",
            elem.metadata()
        );
    }
    Ok(())
}

const MOVE_TOPIC: &str = "group-survives-restart";
const MOVE_GROUP: &str = "group-survives-restart-group";

/// Issue 12, defect 12: a stable group outlives its coordinator. The broker
/// is killed (SIGKILL) and restarted under a consumer that keeps its
/// session: the consumer's heartbeats and commits of its generation go on
/// working, and it is never revoked or reassigned. (Before membership was
/// saved, the restarted coordinator answered UNKNOWN_MEMBER_ID and
/// ILLEGAL_GENERATION and the group rebalanced.)
#[tokio::test(flavor = "multi_thread")]
async fn stable_group_survives_a_coordinator_restart() -> Result<()> {
    let mut broker = start_broker(&[])?;
    let result = group_survives(&mut broker).await;
    run_test(&broker, async { result }).await
}

async fn group_survives(broker: &mut BrokerProcess) -> Result<()> {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let bootstrap = broker.bootstrap();
        create_topic(&bootstrap, MOVE_TOPIC, 2).await?;
        let writer = producer(&bootstrap, &[("acks", "all")])?;
        produce_all(&writer, MOVE_TOPIC, ten_per_partition("before", 2)).await?;
        drop(writer);

        let consumer = counting_consumer(&bootstrap, MOVE_GROUP)?;
        consumer.subscribe(&[MOVE_TOPIC]).context("subscribe")?;
        let first = consume_n(&consumer, 20, Duration::from_secs(90)).await?;
        check_dense(&first, |_| 0)?;
        consumer
            .commit_consumer_state(CommitMode::Sync)
            .context("commit before the restart")?;
        ensure!(consumer.context().counts() == (1, 0));

        tokio::task::block_in_place(|| broker.kill_9())?;
        tokio::task::block_in_place(|| broker.restart())?;
        let bootstrap = broker.bootstrap();
        let writer = producer(&bootstrap, &[("acks", "all")])?;
        produce_all(&writer, MOVE_TOPIC, ten_per_partition("after", 2)).await?;

        let second = consume_n(&consumer, 20, Duration::from_secs(90)).await?;
        check_dense(&second, |_| 10)?;
        consumer
            .commit_consumer_state(CommitMode::Sync)
            .context("commit of the same generation after the restart")?;
        ensure_no_rebalance(&consumer, "across the restart").await?;
        let mut query = TopicPartitionList::new();
        for p in 0..2 {
            query.add_partition(MOVE_TOPIC, p);
        }
        let committed = consumer
            .committed_offsets(query, OP_TIMEOUT)
            .context("committed offsets")?;
        for p in 0..2 {
            let offset = committed.find_partition(MOVE_TOPIC, p).map(|e| e.offset());
            ensure!(
                offset == Some(Offset::Offset(20)),
                "partition {p} committed {offset:?}, expected 20"
            );
        }
        Ok(())
    })
    .await
    .context("stable_group_survives_a_coordinator_restart timed out")?
}
