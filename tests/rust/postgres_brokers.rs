//! Two brokers sharing one PostgreSQL metadata store and one object store
//! commit to the same partitions at the same time: offsets stay dense and
//! unique, and a consumer on either broker reads every acknowledged record
//! exactly once at its acknowledged offset (issue #4, acceptance 4, short
//! form). Also: a fetch parked on one broker sees data committed by the
//! other (polling fallback).

mod common;

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use common::*;
use rdkafka::consumer::Consumer;
use rdkafka::TopicPartitionList;
use tributary_testkit::PgServer;

const TOPIC: &str = "shared";
const PARTITIONS: i32 = 3;
const PER_BROKER: usize = 6_000;

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
        let mut tasks = Vec::new();
        for (name, bootstrap) in [("a", a.bootstrap()), ("b", b.bootstrap())] {
            let producer = producer(&bootstrap, &[("acks", "all"), ("linger.ms", "2")])?;
            tasks.push(tokio::spawn(async move {
                let records = (0..PER_BROKER).map(|i| Out {
                    key: format!("{name}-{}", i % 30),
                    value: format!("{name}:{i}"),
                    ..Out::default()
                });
                let deliveries = produce_all(&producer, TOPIC, records).await?;
                Ok::<_, anyhow::Error>(
                    deliveries
                        .into_iter()
                        .enumerate()
                        .map(|(i, d)| (format!("{name}:{i}"), (d.partition, d.offset)))
                        .collect::<Vec<_>>(),
                )
            }));
        }
        let mut acked: HashMap<String, (i32, i64)> = HashMap::new();
        for t in tasks {
            acked.extend(t.await.context("producer task")??);
        }
        ensure!(acked.len() == 2 * PER_BROKER);
        let mut places: Vec<(i32, i64)> = acked.values().copied().collect();
        places.sort_unstable();
        places.dedup();
        ensure!(
            places.len() == acked.len(),
            "two records acknowledged at the same offset"
        );

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
