//! Faults (DESIGN.md invariants 1-4 under a misbehaving store): the broker
//! runs with its fault-injecting wrapper failing 20% of PUTs and GETs,
//! "losing" the response of 10% of successful PUTs (the object lands, the
//! broker sees an error), losing the answer of 30% of metadata commits (the
//! commit lands, the writer sees an error and must resolve it from the index
//! rather than commit twice) and adding latency. An acks=all producer writes
//! 20k numbered records; every one is acknowledged, and after a restart
//! (empty read cache, so reads go through the faulty GETs) a consumer reads
//! each acknowledged record exactly once, at its acknowledged offset, in
//! order per key. Run for an idempotent and a plain producer on the local
//! store, and for an idempotent producer on a real S3 server (moto).

use std::collections::HashMap;
use std::time::Duration;

use crate::common::*;
use anyhow::{bail, ensure, Context, Result};
use rdkafka::consumer::Consumer;
use rdkafka::TopicPartitionList;

const TOPIC: &str = "faults";
const PARTITIONS: i32 = 4;
const RECORDS: usize = 20_000;
const KEYS: usize = 40;
/// Makes the 20k records ~4 MB, so they span many batches and segments.
const PADDING: &str = "................................................................................................................................................................................................";
const FAULTS: &str =
    "put_fail=0.2,get_fail=0.2,put_lost=0.1,commit_lost=0.3,latency_ms=0-20,seed=42";

#[tokio::test(flavor = "multi_thread")]
async fn idempotent_producer_survives_faults() -> Result<()> {
    let mut broker = start_broker_local(&["--inject-faults", FAULTS, "--cache-bytes", "0"])?;
    let result = tokio::time::timeout(TEST_TIMEOUT, body(&mut broker, true))
        .await
        .unwrap_or_else(|_| Err(anyhow::anyhow!("timed out")));
    run_test(&broker, async { result }).await
}

/// Without idempotence, only the broker's own care (create-only PUTs checked
/// after a lost answer, lost commit answers resolved from the index) keeps
/// retries from duplicating records.
#[tokio::test(flavor = "multi_thread")]
async fn plain_producer_gets_no_duplicates_under_faults() -> Result<()> {
    let mut broker = start_broker_local(&["--inject-faults", FAULTS, "--cache-bytes", "0"])?;
    let result = tokio::time::timeout(TEST_TIMEOUT, body(&mut broker, false))
        .await
        .unwrap_or_else(|_| Err(anyhow::anyhow!("timed out")));
    run_test(&broker, async { result }).await
}

#[tokio::test(flavor = "multi_thread")]
async fn faults_on_a_real_s3_server() -> Result<()> {
    let s3 = tributary_testkit::S3Server::start()?;
    let url = s3.url("tributary-faults", "f");
    let mut builder = BrokerProcess::builder(broker_bin()).args([
        "--object-store",
        url.as_str(),
        "--create-bucket",
        "--flush-interval-ms",
        "50",
        "--inject-faults",
        FAULTS,
        "--cache-bytes",
        "0",
    ]);
    for (key, value) in tributary_testkit::S3_TEST_ENV {
        builder = builder.env(*key, *value);
    }
    let mut broker = builder.start()?;
    let result = tokio::time::timeout(TEST_TIMEOUT, body(&mut broker, true))
        .await
        .unwrap_or_else(|_| Err(anyhow::anyhow!("timed out")));
    let keys = s3.list_keys("tributary-faults", "f/segments/")?;
    let result = result.and_then(|()| {
        ensure!(!keys.is_empty(), "no segment objects in the bucket");
        Ok(())
    });
    run_test(&broker, async { result }).await
}

async fn body(broker: &mut BrokerProcess, idempotent: bool) -> Result<()> {
    let bootstrap = broker.bootstrap();
    create_topic(&bootstrap, TOPIC, PARTITIONS).await?;
    let producer = producer(
        &bootstrap,
        &[
            ("acks", "all"),
            (
                "enable.idempotence",
                if idempotent { "true" } else { "false" },
            ),
            // Keep per-key order for the plain producer too.
            (
                "max.in.flight.requests.per.connection",
                if idempotent { "5" } else { "1" },
            ),
            ("linger.ms", "5"),
            ("batch.size", "16384"),
        ],
    )?;
    let records = (0..RECORDS).map(|n| Out {
        key: format!("k{}", n % KEYS),
        value: format!("{}:{}:{}", n % KEYS, n / KEYS, PADDING),
        ..Out::default()
    });
    let deliveries = produce_all(&producer, TOPIC, records).await?;
    ensure!(
        deliveries.len() == RECORDS,
        "{} deliveries",
        deliveries.len()
    );
    let acked: HashMap<String, (i32, i64)> = deliveries
        .iter()
        .enumerate()
        .map(|(n, d)| {
            (
                format!("{}:{}:{}", n % KEYS, n / KEYS, PADDING),
                (d.partition, d.offset),
            )
        })
        .collect();
    drop(producer);

    let logs = broker.logs();
    ensure!(
        logs.contains("injected fault: put"),
        "the broker log shows no injected object-store fault; is fault injection on?"
    );
    ensure!(
        logs.contains("injected fault: commit answer lost"),
        "the broker log shows no lost commit answer"
    );

    // A restart empties the read cache: every read below is a faulty GET.
    tokio::task::block_in_place(|| broker.restart())?;
    let bootstrap = broker.bootstrap();
    let reader = consumer(&bootstrap, "faults-audit", &[])?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition_offset(TOPIC, p, rdkafka::Offset::Beginning)
            .context("assign")?;
    }
    reader.assign(&tpl).context("assign")?;
    let mut got = consume_n(&reader, RECORDS, Duration::from_secs(180)).await?;
    got.extend(drain_quiet(&reader, Duration::from_secs(2)).await?);
    ensure!(
        got.len() == RECORDS,
        "read {} records, wanted {RECORDS}",
        got.len()
    );
    got.sort_by_key(|r| (r.partition, r.offset));
    check_dense(&got, |_| 0)?;

    let mut last_seq: HashMap<String, i64> = HashMap::new();
    let mut seen = 0usize;
    for rec in &got {
        let Some(&(partition, offset)) = acked.get(&rec.value) else {
            bail!("read {} which was never acknowledged", rec.value);
        };
        ensure!(
            (partition, offset) == (rec.partition, rec.offset),
            "{} acknowledged at {partition}/{offset} but read at {}/{}",
            rec.value,
            rec.partition,
            rec.offset
        );
        let mut parts = rec.value.split(':');
        let (key, seq) = parts.next().zip(parts.next()).context("value format")?;
        let seq: i64 = seq.parse()?;
        let prev = last_seq.insert(key.to_string(), seq);
        ensure!(
            prev.map_or(seq == 0, |p| seq == p + 1),
            "key {key}: seq {seq} after {prev:?}"
        );
        seen += 1;
    }
    ensure!(seen == RECORDS);
    Ok(())
}
