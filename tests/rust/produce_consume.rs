//! 100k records with keys and headers from four producers (one per
//! compression codec) into a 6-partition topic, consumed by a group: every
//! record arrives exactly once, offsets are dense per partition and each key's
//! sequence numbers arrive in order (DESIGN.md invariants 2 and 3).

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use crate::common::*;
use anyhow::{ensure, Context, Result};
use rdkafka::consumer::Consumer;

const TOPIC: &str = "produce-consume";
const PARTITIONS: i32 = 6;
const CODECS: [&str; 4] = ["gzip", "snappy", "lz4", "zstd"];
const PER_PRODUCER: usize = 25_000;
const KEYS_PER_PRODUCER: usize = 50;

#[tokio::test(flavor = "multi_thread")]
async fn produce_consume() -> Result<()> {
    let broker = start_broker(&[])?;
    run_test(&broker, body(&broker)).await
}

/// Key `"<codec>-k<n>"`, value `"<codec>:k<n>:<seq>:<padding>"` where `seq`
/// counts that key's records from 0.
fn records_for(codec: &'static str) -> impl Iterator<Item = Out> {
    (0..PER_PRODUCER).map(move |i| {
        let key = format!("{codec}-k{}", i % KEYS_PER_PRODUCER);
        let seq = i / KEYS_PER_PRODUCER;
        Out {
            partition: None,
            value: format!("{codec}:{key}:{seq}:{}", "x".repeat(i % 97)),
            headers: vec![
                ("codec".to_owned(), codec.to_owned()),
                ("seq".to_owned(), seq.to_string()),
            ],
            key,
            timestamp: None,
        }
    })
}

async fn body(broker: &BrokerProcess) -> Result<()> {
    let bootstrap = broker.bootstrap();
    create_topic(&bootstrap, TOPIC, PARTITIONS).await?;

    let mut tasks = Vec::new();
    for codec in CODECS {
        let producer = producer(&bootstrap, &[("compression.type", codec), ("acks", "all")])?;
        tasks.push(tokio::spawn(async move {
            produce_all(&producer, TOPIC, records_for(codec))
                .await
                .with_context(|| format!("producer {codec}"))
        }));
    }
    let mut acked = 0;
    for task in tasks {
        let deliveries = task.await.context("producer task panicked")??;
        acked += deliveries.len();
    }
    let total = CODECS.len() * PER_PRODUCER;
    ensure!(acked == total, "acked {acked} of {total}");

    let consumer = consumer(&bootstrap, "produce-consume-group", &[])?;
    consumer.subscribe(&[TOPIC]).context("subscribe")?;
    let mut records = consume_n(&consumer, total, Duration::from_secs(180)).await?;
    records.extend(drain_quiet(&consumer, Duration::from_secs(3)).await?);

    // Every partition starts at 0 and is dense (no gaps, no repeats).
    check_dense(&records, |_| 0)?;

    // Exactly once, per-key order, headers intact.
    let mut seen = HashSet::new();
    let mut next_seq: HashMap<String, usize> = HashMap::new();
    let mut key_partition: HashMap<String, i32> = HashMap::new();
    for rec in &records {
        let mut parts = rec.value.splitn(4, ':');
        let (codec, key, seq) = (parts.next(), parts.next(), parts.next());
        let (Some(codec), Some(key), Some(seq)) = (codec, key, seq) else {
            anyhow::bail!("malformed value {:?}", rec.value);
        };
        let seq: usize = seq.parse().context("seq")?;
        ensure!(key == rec.key, "key {:?} but value says {key}", rec.key);
        ensure!(
            seen.insert((rec.key.clone(), seq)),
            "duplicate record key={} seq={seq} at {}/{}",
            rec.key,
            rec.partition,
            rec.offset
        );
        let expected = next_seq.entry(rec.key.clone()).or_insert(0);
        ensure!(
            seq == *expected,
            "key {} seq {seq} arrived (at {}/{}) when {} was expected: records of one \
             producer and key must keep their order in the partition",
            rec.key,
            rec.partition,
            rec.offset,
            expected
        );
        *expected += 1;
        let partition = *key_partition
            .entry(rec.key.clone())
            .or_insert(rec.partition);
        ensure!(
            partition == rec.partition,
            "key {} in partitions {partition} and {}",
            rec.key,
            rec.partition
        );
        ensure!(
            rec.header("codec") == Some(codec),
            "codec header of {rec:?}"
        );
        let seq_text = seq.to_string();
        ensure!(
            rec.header("seq") == Some(seq_text.as_str()),
            "seq header of {rec:?}"
        );
    }
    ensure!(
        records.len() == total && seen.len() == total,
        "consumed {} records, {} distinct, expected {total}",
        records.len(),
        seen.len()
    );
    let used: HashSet<i32> = records.iter().map(|r| r.partition).collect();
    ensure!(used.len() > 1, "all keys landed in one partition: {used:?}");
    Ok(())
}

/// A request-memory budget far smaller than one produce request
/// (`--max-inflight-request-bytes 1024`) serialises requests but loses or
/// blocks nothing: three producers pipelining 30k records in all, a consumer
/// reading alongside, every record arrives exactly once.
#[tokio::test(flavor = "multi_thread")]
async fn tiny_request_memory_budget_still_serves() -> Result<()> {
    let broker = start_broker(&["--max-inflight-request-bytes", "1024"])?;
    run_test(&broker, async {
        let bootstrap = broker.bootstrap();
        create_topic(&bootstrap, "budget", 3).await?;
        let c = consumer(&bootstrap, "budget-reader", &[])?;
        c.subscribe(&["budget"])?;
        let producers = (0..3)
            .map(|p| {
                let producer = producer(&bootstrap, &[("acks", "all"), ("linger.ms", "20")])?;
                Ok(async move {
                    let records = (0..10_000).map(|i| Out {
                        key: format!("p{p}-{i}"),
                        value: format!("{p}:{i}:{}", "v".repeat(200)),
                        ..Out::default()
                    });
                    produce_all(&producer, "budget", records).await
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let (acked, read) = tokio::join!(
            futures::future::try_join_all(producers),
            consume_n(&c, 30_000, Duration::from_secs(120))
        );
        ensure!(acked?.iter().map(Vec::len).sum::<usize>() == 30_000);
        let read = read?;
        let distinct: HashSet<(i32, i64)> = read.iter().map(|r| (r.partition, r.offset)).collect();
        ensure!(
            distinct.len() == 30_000,
            "{} distinct of {}",
            distinct.len(),
            read.len()
        );
        Ok(())
    })
    .await
}
