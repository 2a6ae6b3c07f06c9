//! A whole broker inside the test's process ([`tributary_cli::Node`], what
//! `tributary serve` runs): it serves a real client, counts its object-store
//! traffic on `/metrics` as it happens, shuts down with every background
//! task joined cleanly, and a second node on the same directory serves
//! everything the first acknowledged.

use std::time::Duration;

use crate::common::*;
use anyhow::{ensure, Context, Result};
use rdkafka::consumer::Consumer;
use tributary_cli::config::Settings;
use tributary_cli::node::Launch;
use tributary_cli::Node;

const TOPIC: &str = "in-process";
const RECORDS: i64 = 200;

fn outs() -> impl Iterator<Item = Out> {
    (0..RECORDS).map(|i| Out {
        partition: Some((i % 2) as i32),
        key: format!("k{i}"),
        value: format!("v{i}"),
        ..Out::default()
    })
}

async fn start(dir: &std::path::Path) -> Result<Node> {
    let dir = dir.to_str().context("utf-8 temp dir")?;
    let settings = Settings::from_flags([
        "--listen",
        "127.0.0.1:0",
        "--metrics-listen",
        "127.0.0.1:0",
        "--data-dir",
        dir,
    ])?;
    Node::start(settings, Launch::default()).await
}

/// The value of an unlabelled-or-labelled sample line starting with `series`.
fn sample(page: &str, series: &str) -> Option<f64> {
    page.lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

async fn scrape(node: &Node) -> Result<String> {
    let port = node.admin_addr().context("admin endpoint on")?.port();
    let (status, body) = tokio::task::spawn_blocking(move || http_get(port, "/metrics")).await??;
    ensure!(status == 200, "/metrics answered {status}");
    Ok(body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn start_serve_shutdown_restart() -> Result<()> {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let dir = tempfile::tempdir()?;
        let node = start(dir.path()).await?;
        let bootstrap = node.kafka_addr().to_string();
        create_topic(&bootstrap, TOPIC, 2).await?;
        let writer = producer(&bootstrap, &[("acks", "all")])?;
        produce_all(&writer, TOPIC, outs()).await?;
        drop(writer);
        // Recorded where they happen, not copied from a second registry.
        let page = scrape(&node).await?;
        let puts = sample(&page, "tributary_object_store_requests_total{op=\"put\"}");
        ensure!(puts.unwrap_or(0.0) >= 1.0, "PUTs on /metrics: {puts:?}");
        ensure!(
            sample(&page, "process_resident_memory_bytes").unwrap_or(0.0) > 0.0,
            "resident memory sampled at scrape"
        );
        // Counters that have not moved are on the page too (dashboards
        // query them).
        for series in [
            "tributary_object_store_errors_total{op=\"put\"}",
            "tributary_read_cache_misses_total",
            "tributary_read_cache_gets_total",
        ] {
            ensure!(
                sample(&page, series).is_some(),
                "{series} missing from /metrics"
            );
        }
        let failed = node.shutdown().await;
        ensure!(failed.is_empty(), "tasks failed at shutdown: {failed:?}");

        let node = start(dir.path()).await?;
        let bootstrap = node.kafka_addr().to_string();
        let consumer = consumer(&bootstrap, "in-process-group", &[])?;
        consumer.subscribe(&[TOPIC]).context("subscribe")?;
        let records = consume_n(&consumer, RECORDS as usize, Duration::from_secs(60)).await?;
        check_dense(&records, |_| 0)?;
        drop(consumer);
        let failed = node.shutdown().await;
        ensure!(failed.is_empty(), "tasks failed at shutdown: {failed:?}");
        Ok(())
    })
    .await
    .context("test timed out")?
}
