//! Issue #15, acceptance 3: three brokers on one PostgreSQL; the broker
//! coordinating a transactional id is SIGKILLed while it ends a
//! transaction (the transaction is `PrepareCommit` in the metadata store,
//! its markers not yet written: a PUT ceiling of one seal every 2 s holds
//! them, since group commit would otherwise seal them at once). The
//! producer's commit carries on against the broker that takes the id over
//! (or that broker's reaper finishes it): the transaction ends committed —
//! on every partition — exactly once. A new producer instance with the same
//! transactional id gets a newer epoch and commits; the old instance, a
//! zombie now, is fenced.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::*;
use anyhow::{bail, ensure, Context, Result};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Message, Offset, TopicPartitionList};
use tributary_broker::cluster::coordinator_among;
use tributary_meta::{BrokerInfo, TxnState};
use tributary_testkit::PgServer;

const TOPIC: &str = "orders";
const PARTITIONS: i32 = 3;

#[tokio::test(flavor = "multi_thread")]
async fn coordinator_killed_during_end_txn() -> Result<()> {
    let pg = PgServer::start()?;
    let objects = tempfile::tempdir()?;
    let url = format!("{}?schema=txn", pg.url());
    let objects_url = format!("file://{}", objects.path().display());
    let mut brokers = (1..=3)
        .map(|id| {
            BrokerProcess::builder(broker_bin())
                .args([
                    "--metadata",
                    &url,
                    "--object-store",
                    &objects_url,
                    "--node-id",
                    &id.to_string(),
                    // Markers wait for their segment (one seal every 2 s
                    // after the data's): EndTxn is slow enough to be
                    // interrupted.
                    "--flush-interval-ms",
                    "1500",
                    "--max-puts-per-second",
                    "0.5",
                    "--transaction-abort-interval-ms",
                    "500",
                ])
                .start()
        })
        .collect::<Result<Vec<_>>>()?;
    let bootstrap = brokers
        .iter()
        .map(|b| b.bootstrap())
        .collect::<Vec<_>>()
        .join(",");
    let store = tributary_meta::open_metadata(&url)
        .await
        .context("open the metadata store")?;
    let result = body(&bootstrap, &mut brokers, store).await;
    if result.is_err() {
        for b in &brokers {
            eprintln!(
                "----- broker log {} -----\n{}",
                b.data_dir().display(),
                b.logs_tail(80)
            );
        }
    }
    result
}

/// A transactional id broker `node_id` coordinates while 1..=3 are live.
fn id_coordinated_by(node_id: i32) -> String {
    let brokers: Vec<BrokerInfo> = (1..=3)
        .map(|node_id| BrokerInfo {
            node_id,
            ..BrokerInfo::default()
        })
        .collect();
    (0..)
        .map(|i| format!("payments-{i}"))
        .find(|id| coordinator_among(&brokers, id).map(|b| b.node_id) == Some(node_id))
        .expect("some id hashes to the broker")
}

fn transactional(bootstrap: &str, id: &str) -> Result<BaseProducer> {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("broker.address.family", "v4")
        .set("transactional.id", id)
        .set("transaction.timeout.ms", "120000")
        .create()?;
    producer.init_transactions(OP_TIMEOUT)?;
    Ok(producer)
}

/// Send `values[i]` to partition `i % PARTITIONS` and wait until all are
/// acknowledged.
fn send(producer: &BaseProducer, values: &[String]) -> Result<()> {
    for (i, v) in values.iter().enumerate() {
        let partition = i32::try_from(i)? % PARTITIONS;
        producer
            .send(
                BaseRecord::<(), _>::to(TOPIC)
                    .payload(v)
                    .partition(partition),
            )
            .map_err(|(e, _)| e)?;
    }
    producer.flush(OP_TIMEOUT)?;
    Ok(())
}

/// Every value in the topic by partition, read from the beginning to the
/// end (the last stable offset for `read_committed`).
fn read_all(bootstrap: &str, isolation: &str) -> Result<BTreeMap<i32, Vec<String>>> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("broker.address.family", "v4")
        .set("group.id", "checker")
        .set("enable.partition.eof", "true")
        .set("isolation.level", isolation)
        .create()?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition_offset(TOPIC, p, Offset::Beginning)?;
    }
    consumer.assign(&tpl)?;
    let mut out: BTreeMap<i32, Vec<String>> = BTreeMap::new();
    let mut at_end = std::collections::BTreeSet::new();
    let deadline = Instant::now() + OP_TIMEOUT;
    while at_end.len() < PARTITIONS as usize {
        ensure!(
            Instant::now() < deadline,
            "read {isolation}: no end of every partition"
        );
        match consumer.poll(Duration::from_millis(200)) {
            None => {}
            Some(Err(KafkaError::PartitionEOF(p))) => {
                at_end.insert(p);
            }
            // The killed broker is in the bootstrap list.
            Some(Err(KafkaError::MessageConsumption(
                RDKafkaErrorCode::BrokerTransportFailure | RDKafkaErrorCode::AllBrokersDown,
            ))) => {}
            Some(Err(e)) => bail!("read {isolation}: {e}"),
            Some(Ok(m)) => {
                at_end.remove(&m.partition());
                let v = String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned();
                out.entry(m.partition()).or_default().push(v);
            }
        }
    }
    Ok(out)
}

async fn wait_for_state(
    store: &Arc<dyn tributary_meta::MetadataStore>,
    id: &str,
    what: &str,
    done: impl Fn(TxnState) -> bool,
) -> Result<TxnState> {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        if let Some(rec) = store.transaction(id).await? {
            if done(rec.state) {
                return Ok(rec.state);
            }
        }
        ensure!(Instant::now() < deadline, "transaction {id}: never {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn body(
    bootstrap: &str,
    brokers: &mut [BrokerProcess],
    store: Arc<dyn tributary_meta::MetadataStore>,
) -> Result<()> {
    create_topic(bootstrap, TOPIC, PARTITIONS).await?;
    // Broker 2 coordinates the id (index 1).
    let id = id_coordinated_by(2);
    let values: Vec<String> = (0..30).map(|i| format!("first-{i}")).collect();
    let producer = Arc::new(tokio::task::block_in_place(|| {
        transactional(bootstrap, &id)
    })?);
    tokio::task::block_in_place(|| -> Result<()> {
        producer.begin_transaction()?;
        send(&producer, &values)
    })?;
    let before = store.transaction(&id).await?.context("the id is stored")?;

    // Commit in the background; kill the coordinator once the commit is
    // under way (PrepareCommit stored, markers not yet durable).
    let committing = {
        let producer = producer.clone();
        tokio::task::spawn_blocking(move || producer.commit_transaction(Duration::from_secs(90)))
    };
    let state = wait_for_state(&store, &id, "ending", |s| s != TxnState::Ongoing).await?;
    ensure!(
        state == TxnState::PrepareCommit,
        "the commit finished before the coordinator could be killed ({state:?}); the PUT ceiling did not hold the markers"
    );
    brokers[1].kill_9()?;

    // The producer's retries reach the id's new coordinator (or its reaper
    // finishes the commit first): committed, not lost, not doubled.
    let commit = committing.await?;
    eprintln!("commit after the coordinator was killed: {commit:?}");
    let state = wait_for_state(&store, &id, "complete", |s| {
        matches!(s, TxnState::CompleteCommit | TxnState::CompleteAbort)
    })
    .await?;
    ensure!(
        state == TxnState::CompleteCommit,
        "a transaction whose commit was under way ended {state:?}"
    );
    let committed = tokio::task::block_in_place(|| read_all(bootstrap, "read_committed"))?;
    for p in 0..PARTITIONS {
        let want: Vec<String> = values
            .iter()
            .enumerate()
            .filter(|(i, _)| i32::try_from(*i).unwrap_or(0) % PARTITIONS == p)
            .map(|(_, v)| v.clone())
            .collect();
        ensure!(
            committed.get(&p).cloned().unwrap_or_default() == want,
            "partition {p} after the commit: {:?}",
            committed.get(&p)
        );
    }

    // A new instance takes over with a newer epoch; the old one is fenced.
    let successor = tokio::task::block_in_place(|| transactional(bootstrap, &id))?;
    let after = store.transaction(&id).await?.context("still stored")?;
    ensure!(
        (after.producer_id, after.producer_epoch) != (before.producer_id, before.producer_epoch)
            && (after.producer_id != before.producer_id
                || after.producer_epoch > before.producer_epoch),
        "the successor did not get a newer epoch: {before:?} -> {after:?}"
    );
    let zombie = tokio::task::block_in_place(|| -> Result<()> {
        producer.begin_transaction()?;
        send(&producer, &["zombie".to_owned()])?;
        producer.commit_transaction(OP_TIMEOUT)?;
        Ok(())
    });
    ensure!(zombie.is_err(), "the zombie committed with its old epoch");
    eprintln!("zombie: {zombie:?}");
    let more: Vec<String> = (0..6).map(|i| format!("second-{i}")).collect();
    tokio::task::block_in_place(|| -> Result<()> {
        successor.begin_transaction()?;
        send(&successor, &more)?;
        successor.commit_transaction(OP_TIMEOUT)?;
        Ok(())
    })?;
    let committed = tokio::task::block_in_place(|| read_all(bootstrap, "read_committed"))?;
    let all: Vec<&String> = committed.values().flatten().collect();
    ensure!(
        all.iter().filter(|v| v.starts_with("second-")).count() == more.len(),
        "the successor's records: {all:?}"
    );
    ensure!(
        !all.iter().any(|v| v.as_str() == "zombie"),
        "the zombie's record is visible: {all:?}"
    );
    ensure!(
        all.len() == values.len() + more.len(),
        "committed records: {all:?}"
    );
    Ok(())
}
