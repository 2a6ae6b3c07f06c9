//! Three brokers on one PostgreSQL and one object store act as one cluster
//! (issue #4): Metadata lists all live brokers and spreads partition leaders
//! over them; a consumer group of three members bootstrapped with all three
//! brokers is coordinated by one of them; a SIGKILLed broker drops out of
//! Metadata after the registry TTL and producers and consumers carry on
//! through the others; every acknowledged record is consumed, and offsets
//! stay dense.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use common::*;
use rdkafka::consumer::Consumer;
use tributary_testkit::PgServer;

const TOPIC: &str = "cluster";
const PARTITIONS: i32 = 6;

#[tokio::test(flavor = "multi_thread")]
async fn three_brokers_share_postgres_and_survive_a_kill() -> Result<()> {
    let pg = PgServer::start()?;
    let url = format!("{}?schema=cluster", pg.url());
    let objects = tempfile::tempdir()?;
    let objects_url = format!("file://{}", objects.path().display());
    let mut brokers = Vec::new();
    for id in 1..=3 {
        brokers.push(start_broker_local(&[
            "--metadata",
            &url,
            "--object-store",
            &objects_url,
            "--node-id",
            &id.to_string(),
        ])?);
    }
    let bootstrap = brokers
        .iter()
        .map(|b| b.bootstrap())
        .collect::<Vec<_>>()
        .join(",");
    let first = brokers.remove(0);
    let result = body(&bootstrap, &mut brokers).await;
    run_test(&first, async { result }).await
}

async fn body(bootstrap: &str, others: &mut [BrokerProcess]) -> Result<()> {
    create_topic(bootstrap, TOPIC, PARTITIONS).await?;
    // Brokers learn about each other through heartbeats (every 2 s).
    let probe = consumer(bootstrap, "probe", &[])?;
    let brokers_listed = |want: usize| {
        let probe = &probe;
        move || -> Result<std::result::Result<(), usize>> {
            let md = tokio::task::block_in_place(|| probe.fetch_metadata(Some(TOPIC), OP_TIMEOUT))?;
            let n = md.brokers().len();
            Ok(if n == want { Ok(()) } else { Err(n) })
        }
    };
    // Every broker must know the other two (any of them may answer), and
    // the answer must use each broker as a leader.
    wait_for(
        "metadata listing 3 brokers, each leading partitions",
        Duration::from_secs(20),
        || {
            let md = tokio::task::block_in_place(|| probe.fetch_metadata(Some(TOPIC), OP_TIMEOUT))?;
            let leaders: HashSet<i32> = md.topics()[0]
                .partitions()
                .iter()
                .map(|p| p.leader())
                .collect();
            let n = md.brokers().len();
            Ok(if n == 3 && leaders.len() == 3 {
                Ok(())
            } else {
                Err((n, leaders))
            })
        },
    )
    .await?;

    let producer = producer(
        bootstrap,
        &[
            ("acks", "all"),
            ("enable.idempotence", "true"),
            ("message.timeout.ms", "60000"),
        ],
    )?;
    let first = (0..5_000).map(|i| Out {
        key: format!("k{}", i % 60),
        value: format!("a{i}"),
        ..Out::default()
    });
    let mut acked: HashMap<String, (i32, i64)> = produce_all(&producer, TOPIC, first)
        .await?
        .into_iter()
        .enumerate()
        .map(|(i, d)| (format!("a{i}"), (d.partition, d.offset)))
        .collect();

    eprintln!("phase 1: {} acknowledged", acked.len());
    // Kill one broker; keep producing through the cluster.
    tokio::task::block_in_place(|| others[1].kill_9())?;
    let second = (0..5_000).map(|i| Out {
        key: format!("k{}", i % 60),
        value: format!("b{i}"),
        ..Out::default()
    });
    acked.extend(
        produce_all(&producer, TOPIC, second)
            .await?
            .into_iter()
            .enumerate()
            .map(|(i, d)| (format!("b{i}"), (d.partition, d.offset))),
    );
    eprintln!("phase 2: {} acknowledged", acked.len());
    // The dead broker leaves Metadata once its registry entry expires (10 s).
    wait_for(
        "metadata to drop the dead broker",
        Duration::from_secs(30),
        brokers_listed(2),
    )
    .await?;

    // A group of three members reads everything exactly once.
    let members: Vec<_> = (0..3)
        .map(|_| {
            consumer(
                bootstrap,
                "cluster-group",
                &[
                    ("enable.auto.commit", "true"),
                    ("auto.commit.interval.ms", "200"),
                ],
            )
        })
        .collect::<Result<_>>()?;
    for m in &members {
        m.subscribe(&[TOPIC]).context("subscribe")?;
    }
    // Members join one after another, so a partition may be read again from
    // its committed offset after a rebalance (at-least-once, as in Kafka):
    // count each (partition, offset) once.
    let mut got = Vec::new();
    let mut seen: HashSet<(i32, i64)> = HashSet::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while seen.len() < acked.len() && std::time::Instant::now() < deadline {
        for m in &members {
            // A member connected to the killed broker may report transport
            // errors while it reconnects; those are not failures.
            match recv(m, Duration::from_millis(100)).await {
                Ok(Some(r)) => {
                    if seen.insert((r.partition, r.offset)) {
                        got.push(r);
                    }
                }
                Ok(None) => {}
                Err(e) => eprintln!("consumer: {e}"),
            }
        }
    }
    ensure!(
        got.len() == acked.len(),
        "consumed {} of {}",
        got.len(),
        acked.len()
    );
    got.sort_by_key(|r| (r.partition, r.offset));
    check_dense(&got, |_| 0)?;
    for r in &got {
        ensure!(
            acked.get(&r.value) == Some(&(r.partition, r.offset)),
            "{} at {}/{} acknowledged at {:?}",
            r.value,
            r.partition,
            r.offset,
            acked.get(&r.value)
        );
    }
    Ok(())
}
