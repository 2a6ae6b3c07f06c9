//! Issue #4, acceptance 4: two brokers sharing one PostgreSQL metadata store
//! and one object store commit to the same partitions at the same time for
//! a minute (`TRIBUTARY_SOAK_SECS` to change it): the index in PostgreSQL
//! tiles every partition with no gap or overlap, no two records were
//! acknowledged at one offset, and a consumer reads every acknowledged record
//! exactly once at its acknowledged offset. Also: zone-aware Metadata, and a
//! fetch parked on one broker woken by a commit on the other (LISTEN/NOTIFY).

use std::collections::HashMap;
use std::time::Duration;

use crate::common::*;
use anyhow::{ensure, Context, Result};
use rdkafka::consumer::Consumer;
use rdkafka::TopicPartitionList;
use tributary_meta::{LogStore, MaintenanceStore, PostgresStore, TopicStore};
use tributary_testkit::PgServer;

const TOPIC: &str = "shared";
const PARTITIONS: i32 = 3;
/// Records per producer per second, and per `produce_all` call.
const RATE: usize = 2_000;
const CHUNK: usize = 500;

/// How long both brokers commit concurrently: a minute, or
/// `TRIBUTARY_SOAK_SECS` seconds.
fn soak_duration() -> Duration {
    let secs = std::env::var("TRIBUTARY_SOAK_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60);
    Duration::from_secs(secs)
}

/// One of the brokers holds the maintenance lease (a lease that someone
/// else holds is refused).
async fn check_maintenance_lease(url: &str) -> Result<()> {
    let store = PostgresStore::connect(url).await?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as i64;
    ensure!(
        !store
            .acquire_lease("maintenance", "the-test", now, 0)
            .await?,
        "no broker holds the maintenance lease"
    );
    Ok(())
}

/// Reads the index straight from PostgreSQL: each partition's entries start
/// at 0 and follow each other with no gap or overlap up to the partition's
/// next offset, and the offsets add up to the acknowledged records.
async fn check_index_dense(url: &str, acked: &HashMap<String, (i32, i64)>) -> Result<()> {
    let store = PostgresStore::connect(url).await?;
    let topic = store.get_topic(TOPIC).await?.context("topic in metadata")?;
    let mut total = 0i64;
    for p in 0..PARTITIONS {
        let offsets = store.partition_offsets(topic.id, p).await?;
        let mut next = 0i64;
        let mut entries = 0usize;
        loop {
            let page = store.index_entries(topic.id, p, next, 1000).await?;
            if page.is_empty() {
                break;
            }
            for e in page {
                ensure!(
                    e.base_offset == next && e.last_offset >= e.base_offset,
                    "partition {p}: entry [{}, {}] after offset {}",
                    e.base_offset,
                    e.last_offset,
                    next - 1
                );
                next = e.last_offset + 1;
                entries += 1;
            }
        }
        ensure!(
            offsets.log_start_offset == 0 && next == offsets.next_offset,
            "partition {p}: entries end at {next}, offsets {offsets:?}"
        );
        eprintln!("partition {p}: {next} offsets in {entries} index entries");
        total += next;
    }
    ensure!(
        total == acked.len() as i64,
        "{total} offsets in the index, {} acknowledged",
        acked.len()
    );
    Ok(())
}

fn shared_broker(pg_url: &str, objects: &str, node_id: &str) -> Result<BrokerProcess> {
    start_broker_local(&[
        "--metadata",
        pg_url,
        "--object-store",
        objects,
        "--node-id",
        node_id,
        "--rack",
        &format!("zone-{node_id}"),
        "--maintenance-interval-ms",
        "500",
    ])
}

#[tokio::test(flavor = "multi_thread")]
async fn two_brokers_one_postgres_dense_offsets() -> Result<()> {
    let pg = PgServer::start()?;
    let url = format!("{}?schema=brokers", pg.url());
    let objects = tempfile::tempdir()?;
    let objects_url = format!("file://{}", objects.path().display());
    let a = shared_broker(&url, &objects_url, "1")?;
    let b = shared_broker(&url, &objects_url, "2")?;
    run_test(&a, async {
        create_topic(&a.bootstrap(), TOPIC, PARTITIONS).await?;
        let soak = soak_duration();
        let mut tasks = Vec::new();
        for (name, bootstrap) in [("a", a.bootstrap()), ("b", b.bootstrap())] {
            let producer = producer(&bootstrap, &[("acks", "all"), ("linger.ms", "2")])?;
            tasks.push(tokio::spawn(async move {
                // Chunks of records at about RATE per second, until `soak`
                // has passed.
                let start = std::time::Instant::now();
                let mut acked = Vec::new();
                let mut sent = 0usize;
                while start.elapsed() < soak {
                    let records: Vec<Out> = (sent..sent + CHUNK)
                        .map(|i| Out {
                            key: format!("{name}-{}", i % 30),
                            value: format!("{name}:{i}"),
                            ..Out::default()
                        })
                        .collect();
                    let deliveries = produce_all(&producer, TOPIC, records).await?;
                    acked.extend(
                        deliveries.into_iter().enumerate().map(|(i, d)| {
                            (format!("{name}:{}", sent + i), (d.partition, d.offset))
                        }),
                    );
                    sent += CHUNK;
                    let due = Duration::from_secs_f64(sent as f64 / RATE as f64);
                    if let Some(rest) = due.checked_sub(start.elapsed()) {
                        tokio::time::sleep(rest).await;
                    }
                }
                Ok::<_, anyhow::Error>(acked)
            }));
        }
        let mut acked: HashMap<String, (i32, i64)> = HashMap::new();
        let mut per_broker = Vec::new();
        for t in tasks {
            let got = t.await.context("producer task")??;
            per_broker.push(got.len());
            acked.extend(got);
        }
        eprintln!("acknowledged per broker over {soak:?}: {per_broker:?}");
        ensure!(acked.len() == per_broker.iter().sum::<usize>());
        let mut places: Vec<(i32, i64)> = acked.values().copied().collect();
        places.sort_unstable();
        places.dedup();
        ensure!(
            places.len() == acked.len(),
            "two records acknowledged at the same offset"
        );

        // The metadata: per partition, index entries tile [0, next) with no
        // gap and no overlap.
        check_index_dense(&url, &acked).await?;
        check_maintenance_lease(&url).await?;

        // Read everything back through broker b.
        audit_acked(&b.bootstrap(), TOPIC, PARTITIONS, &acked).await?;

        // A client that names its zone in client.id sees only that zone's
        // broker; one that does not sees both.
        let zoned = {
            let mut c = client_config(&a.bootstrap());
            c.set("client.id", "audit,tributary_az=zone-2")
                .set("group.id", "z");
            c.create::<rdkafka::consumer::BaseConsumer>()?
        };
        // (Broker a learns about b through heartbeats, every 2 s.)
        let md = wait_for(
            "a zone-2 answer from broker a",
            Duration::from_secs(20),
            || {
                let md =
                    tokio::task::block_in_place(|| zoned.fetch_metadata(Some(TOPIC), OP_TIMEOUT))?;
                let ids: Vec<i32> = md.brokers().iter().map(|b| b.id()).collect();
                Ok(if ids == vec![2] { Ok(md) } else { Err(ids) })
            },
        )
        .await?;
        ensure!(
            md.topics()[0].partitions().iter().all(|p| p.leader() == 2),
            "zone-2 client must be sent to broker 2 for every partition"
        );
        let plain = consumer(&b.bootstrap(), "plain", &[])?;
        let md = tokio::task::block_in_place(|| plain.fetch_metadata(Some(TOPIC), OP_TIMEOUT))?;
        ensure!(
            md.brokers().len() == 2,
            "unzoned client sees {} brokers",
            md.brokers().len()
        );

        // A consumer parked on a, at the end, sees a record produced via b.
        let tail = consumer(&a.bootstrap(), "tail", &[("fetch.wait.max.ms", "5000")])?;
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(TOPIC, 0, rdkafka::Offset::End)?;
        tail.assign(&tpl)?;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let late = producer(&b.bootstrap(), &[("acks", "all")])?;
        produce_all(
            &late,
            TOPIC,
            [Out {
                partition: Some(0),
                key: "late".into(),
                value: "late".into(),
                ..Out::default()
            }],
        )
        .await?;
        let rec = recv(&tail, Duration::from_secs(20))
            .await?
            .context("the record committed via broker b never reached the consumer on a")?;
        ensure!(rec.value == "late");
        ensure!(
            a.logs().contains("listening for other brokers' commits"),
            "broker a should hear commits by LISTEN/NOTIFY, not only by polling"
        );
        Ok(())
    })
    .await
}
