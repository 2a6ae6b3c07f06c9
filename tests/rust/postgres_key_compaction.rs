//! Issue #16, acceptance 1 on PostgreSQL and S3 (moto): a `compact` topic
//! written with updates and tombstones is cleaned by the maintenance pass
//! to the latest value of every live key, each at the offset it was
//! written at, and no deleted key; reads during the cleaning are a
//! consistent log (what is read at an offset is what was written there).
//! The same checks on SQLite and a local directory are in
//! `tests/python/test_semantics.py`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::common::*;
use anyhow::{ensure, Context, Result};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use tributary_testkit::{PgServer, S3Server};

const TOPIC: &str = "compacted";
const KEYS: usize = 500;
const ROUNDS: usize = 40;

#[tokio::test(flavor = "multi_thread")]
async fn key_compaction_on_postgres_and_s3() -> Result<()> {
    let pg = PgServer::start()?;
    let s3 = S3Server::start()?;
    let url = format!("{}?schema=keycompaction", pg.url());
    let objects = s3.url("tributary-keycompaction", "t");
    let mut builder = BrokerProcess::builder(broker_bin()).args([
        "--metadata",
        &url,
        "--object-store",
        &objects,
        "--create-bucket",
        "--maintenance-interval-ms",
        "300",
        "--compaction-min-age-ms",
        "0",
        "--segment-grace-ms",
        "2000",
        "--segment-commit-deadline-ms",
        "1000",
    ]);
    for (key, value) in tributary_testkit::S3_TEST_ENV {
        builder = builder.env(*key, *value);
    }
    let broker = builder.start()?;
    run_test(&broker, body(&broker)).await
}

/// (key, value) written at each offset of partition 0.
type Log = BTreeMap<i64, (String, Option<String>)>;

async fn body(broker: &BrokerProcess) -> Result<()> {
    let bootstrap = broker.bootstrap();
    let admin: AdminClient<DefaultClientContext> =
        client_config(&bootstrap).create().context("admin")?;
    let topic = NewTopic::new(TOPIC, 1, TopicReplication::Fixed(1))
        .set("cleanup.policy", "compact")
        .set("delete.retention.ms", "2000")
        // Clean whenever anything is dirty (the default waits for half).
        .set("min.cleanable.dirty.ratio", "0.01");
    for r in admin
        .create_topics(
            [&topic],
            &AdminOptions::new().operation_timeout(Some(OP_TIMEOUT)),
        )
        .await?
    {
        r.map_err(|(t, e)| anyhow::anyhow!("create {t}: {e:?}"))?;
    }

    let producer: FutureProducer = client_config(&bootstrap)
        .set("linger.ms", "5")
        .set("compression.type", "zstd")
        .create()
        .context("producer")?;
    let mut written: Log = BTreeMap::new();
    for round in 0..ROUNDS {
        let mut pending = Vec::new();
        for k in 0..KEYS {
            let key = format!("key-{k}");
            // Every fifth key ends deleted.
            let value = (!(round == ROUNDS - 1 && k % 5 == 0)).then(|| format!("{k}:{round}"));
            let record = FutureRecord::to(TOPIC).key(&key).partition(0);
            let record = match &value {
                Some(v) => record.payload(v),
                None => record,
            };
            let delivery = producer
                .send_result(record)
                .map_err(|(e, _)| anyhow::anyhow!("enqueue: {e}"))?;
            pending.push((key, value, delivery));
        }
        for (key, value, delivery) in pending {
            let delivered = delivery
                .await
                .context("delivery dropped")?
                .map_err(|(e, _)| anyhow::anyhow!("delivery: {e}"))?;
            written.insert(delivered.offset, (key, value));
        }
    }
    let mut live: BTreeMap<String, (i64, String)> = BTreeMap::new();
    for (offset, (key, value)) in &written {
        match value {
            Some(v) => live.insert(key.clone(), (*offset, v.clone())),
            None => live.remove(key),
        };
    }
    ensure!(live.len() == KEYS - KEYS / 5);

    let deadline = Instant::now() + Duration::from_secs(120);
    let mut reads = 0;
    loop {
        let got = tokio::task::block_in_place(|| read_partition(&bootstrap, written.len()))?;
        reads += 1;
        // Consistent: every record is the one written at its offset, and
        // replaying the log gives the table.
        let mut table: BTreeMap<String, (i64, String)> = BTreeMap::new();
        for (offset, record) in &got {
            ensure!(
                written.get(offset) == Some(record),
                "offset {offset} reads {record:?}, was {:?}",
                written.get(offset)
            );
            match &record.1 {
                Some(v) => table.insert(record.0.clone(), (*offset, v.clone())),
                None => table.remove(&record.0),
            };
        }
        ensure!(
            table == live,
            "replaying read {reads} does not give the table"
        );
        if got.len() == live.len() {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "not compacted after {reads} reads: {} records for {} live keys",
            got.len(),
            live.len()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Ok(())
}

/// Partition 0 from the beginning up to its high watermark.
fn read_partition(bootstrap: &str, end_hint: usize) -> Result<Log> {
    let consumer: BaseConsumer = client_config(bootstrap)
        .set("group.id", "reader")
        .create()
        .context("consumer")?;
    let (_, high) = consumer.fetch_watermarks(TOPIC, 0, OP_TIMEOUT)?;
    ensure!(
        high as usize == end_hint,
        "high watermark {high}, wrote {end_hint}"
    );
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(TOPIC, 0, Offset::Beginning)?;
    consumer.assign(&tpl)?;
    let mut got = Log::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut position = 0;
    while position < high {
        ensure!(
            Instant::now() < deadline,
            "stuck at offset {position} of {high}"
        );
        let Some(m) = consumer.poll(Duration::from_millis(500)) else {
            // The last records may be gone: the position still moves past
            // them once the client has stepped over the gap.
            if let Ok(p) = consumer.position() {
                if let Some(Offset::Offset(o)) = p.find_partition(TOPIC, 0).map(|e| e.offset()) {
                    position = position.max(o);
                }
            }
            continue;
        };
        let m = m?;
        let key = String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned();
        let value = m.payload().map(|v| String::from_utf8_lossy(v).into_owned());
        got.insert(m.offset(), (key, value));
        position = m.offset() + 1;
    }
    Ok(got)
}
