//! An idempotent producer (`enable.idempotence=true`, acks=all) sends 10k
//! records; a consumer reads exactly 10k, no duplicates, dense offsets.
//!
//! This is the happy path (InitProducerId, sequence numbers accepted in
//! order). Retries provoked by faults — lost acks, object-store errors,
//! broker restarts mid-request — belong to the fault-injection tests that
//! come with the fault-injecting object store (DESIGN.md invariant 4).

use std::collections::HashSet;
use std::time::Duration;

use crate::common::*;
use anyhow::{ensure, Context, Result};
use rdkafka::consumer::Consumer;

const TOPIC: &str = "idempotent";
const PARTITIONS: i32 = 3;
const COUNT: usize = 10_000;

#[tokio::test(flavor = "multi_thread")]
async fn idempotent() -> Result<()> {
    let broker = start_broker(&[])?;
    run_test(&broker, body(&broker)).await
}

async fn body(broker: &BrokerProcess) -> Result<()> {
    let bootstrap = broker.bootstrap();
    create_topic(&bootstrap, TOPIC, PARTITIONS).await?;

    let producer = producer(
        &bootstrap,
        &[
            ("enable.idempotence", "true"),
            ("acks", "all"),
            ("max.in.flight.requests.per.connection", "5"),
        ],
    )?;
    let outs = (0..COUNT).map(|i| Out {
        key: format!("k{}", i % 64),
        value: format!("idem-{i}"),
        ..Out::default()
    });
    let deliveries = produce_all(&producer, TOPIC, outs).await?;
    ensure!(deliveries.len() == COUNT, "{} deliveries", deliveries.len());
    let acked: HashSet<(i32, i64)> = deliveries.iter().map(|d| (d.partition, d.offset)).collect();
    ensure!(
        acked.len() == COUNT,
        "{} distinct acknowledged (partition, offset) pairs for {COUNT} records",
        acked.len()
    );

    let consumer = consumer(&bootstrap, "idempotent-group", &[])?;
    consumer.subscribe(&[TOPIC]).context("subscribe")?;
    let mut records = consume_n(&consumer, COUNT, Duration::from_secs(120)).await?;
    records.extend(drain_quiet(&consumer, Duration::from_secs(3)).await?);
    ensure!(
        records.len() == COUNT,
        "consumed {} records, expected exactly {COUNT}",
        records.len()
    );
    check_dense(&records, |_| 0)?;
    let values: HashSet<&str> = records.iter().map(|r| r.value.as_str()).collect();
    ensure!(values.len() == COUNT, "{} distinct values", values.len());
    for rec in &records {
        ensure!(
            acked.contains(&(rec.partition, rec.offset)),
            "record at {}/{} was never acknowledged there",
            rec.partition,
            rec.offset
        );
    }
    Ok(())
}
