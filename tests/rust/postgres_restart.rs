//! PostgreSQL restarts while two brokers are taking produces (issue #4,
//! acceptance 3): produces during the outage fail with retriable errors or
//! wait, the brokers recover by themselves once the database is back, and
//! every acknowledged record is readable exactly once at its acknowledged
//! offset.

use std::collections::HashMap;
use std::time::Duration;

use crate::common::*;
use anyhow::{ensure, Context, Result};
use tributary_testkit::PgServer;

const TOPIC: &str = "pg-restart";
const PARTITIONS: i32 = 3;

#[tokio::test(flavor = "multi_thread")]
async fn brokers_recover_from_a_postgres_restart() -> Result<()> {
    let mut pg = PgServer::start()?;
    let url = format!("{}?schema=restart", pg.url());
    let objects = tempfile::tempdir()?;
    let objects_url = format!("file://{}", objects.path().display());
    let a = start_broker_local(&[
        "--metadata",
        &url,
        "--object-store",
        &objects_url,
        "--node-id",
        "1",
    ])?;
    let b = start_broker_local(&[
        "--metadata",
        &url,
        "--object-store",
        &objects_url,
        "--node-id",
        "2",
    ])?;
    let bootstrap = format!("{},{}", a.bootstrap(), b.bootstrap());
    let result = async {
        create_topic(&bootstrap, TOPIC, PARTITIONS).await?;
        let producer = producer(
            &bootstrap,
            &[
                ("acks", "all"),
                ("enable.idempotence", "true"),
                ("message.timeout.ms", "120000"),
            ],
        )?;
        let batch = |tag: &'static str| {
            (0..3_000).map(move |i| Out {
                key: format!("k{}", i % 30),
                value: format!("{tag}{i}"),
                ..Out::default()
            })
        };
        let mut acked: HashMap<String, (i32, i64)> = HashMap::new();
        let mut record = |tag: &str, ds: Vec<rdkafka::producer::future_producer::Delivery>| {
            for (i, d) in ds.into_iter().enumerate() {
                acked.insert(format!("{tag}{i}"), (d.partition, d.offset));
            }
        };
        record("a", produce_all(&producer, TOPIC, batch("a")).await?);
        // Restart the database while the next batch is in flight.
        let send = produce_all(&producer, TOPIC, batch("b"));
        let restart = async {
            tokio::time::sleep(Duration::from_millis(20)).await;
            tokio::task::block_in_place(|| pg.restart())
        };
        let (sent, restarted) = tokio::join!(send, restart);
        restarted?;
        record("b", sent.context("produce across the PostgreSQL restart")?);
        record("c", produce_all(&producer, TOPIC, batch("c")).await?);
        ensure!(acked.len() == 9_000);
        let outage_seen = a.logs().contains("metadata backend failed")
            || b.logs().contains("metadata backend failed");
        eprintln!("brokers saw the database outage: {outage_seen}");

        audit_acked(&bootstrap, TOPIC, PARTITIONS, &acked).await?;
        Ok(())
    }
    .await;
    run_test(&a, async { result }).await
}
