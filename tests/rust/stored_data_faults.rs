//! Issue 12, defects 2 and 21: what a fetch does when stored data is missing
//! or corrupt. Objects are removed or damaged in the broker's local store
//! and the broker restarted (so nothing is served from what it uploaded and
//! still caches); a default librdkafka consumer then reads the partition.
//!
//! - A missing object no longer makes the whole partition unreadable: the
//!   records before it are served.
//! - A flipped byte in a stored batch is never handed to a client (librdkafka
//!   checks CRCs only with `check.crcs=true`); it is counted on `/metrics`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::common::*;
use anyhow::{ensure, Context, Result};
use rdkafka::consumer::Consumer;
use tributary_testkit::free_port;

const TOPIC: &str = "stored";

fn segment_files(data_dir: &Path) -> Result<BTreeSet<PathBuf>> {
    let dir = data_dir.join("objects").join("segments");
    Ok(std::fs::read_dir(&dir)
        .with_context(|| format!("read {}", dir.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .collect())
}

fn outs(phase: &'static str, n: usize) -> impl Iterator<Item = Out> {
    (0..n).map(move |i| Out {
        partition: Some(0),
        key: format!("{phase}-{i}"),
        value: format!("value-{phase}-{i:04}-{}", "x".repeat(40)),
        ..Out::default()
    })
}

/// Produces phase `a`, then phase `b`, and returns the objects holding `b`
/// only.
async fn two_phases(broker: &BrokerProcess) -> Result<BTreeSet<PathBuf>> {
    let bootstrap = broker.bootstrap();
    create_topic(&bootstrap, TOPIC, 1).await?;
    let p = producer(&bootstrap, &[("acks", "all")])?;
    produce_all(&p, TOPIC, outs("a", 50)).await?;
    let after_a = segment_files(broker.data_dir())?;
    produce_all(&p, TOPIC, outs("b", 50)).await?;
    let b_only: BTreeSet<PathBuf> = segment_files(broker.data_dir())?
        .difference(&after_a)
        .cloned()
        .collect();
    ensure!(!b_only.is_empty(), "phase b made no new object");
    Ok(b_only)
}

/// Everything the consumer receives until it has been quiet for a while.
async fn read_all(bootstrap: &str, group: &str, want: usize) -> Result<Vec<Rec>> {
    let c = consumer(bootstrap, group, &[])?;
    c.subscribe(&[TOPIC])?;
    let mut got = Vec::new();
    let end = std::time::Instant::now() + Duration::from_secs(60);
    while got.len() < want && std::time::Instant::now() < end {
        match recv(&c, Duration::from_secs(1)).await {
            Ok(Some(rec)) => got.push(rec),
            Ok(None) => {}
            Err(e) => eprintln!("consumer error: {e:#}"),
        }
    }
    got.extend(drain_quiet(&c, Duration::from_secs(3)).await?);
    Ok(got)
}

/// Defect 2: one missing object made every fetch of the partition fail, so
/// the records before it could not be read either.
#[tokio::test(flavor = "multi_thread")]
async fn missing_object_serves_what_precedes_it() -> Result<()> {
    let mut broker = start_broker_local(&["--compaction", "false"])?;
    let b_objects = two_phases(&broker).await?;
    broker.stop()?;
    for path in &b_objects {
        std::fs::remove_file(path)?;
    }
    broker.restart()?;
    run_test(&broker, async {
        let got = read_all(&broker.bootstrap(), "gap-reader", 50).await?;
        let values: Vec<&str> = got.iter().map(|r| r.value.as_str()).collect();
        ensure!(got.len() == 50, "read {} records: {values:?}", got.len());
        for (i, rec) in got.iter().enumerate() {
            ensure!(
                rec.offset == i as i64,
                "record {i} at offset {}",
                rec.offset
            );
            ensure!(rec.key == format!("a-{i}"), "record {i} is {}", rec.key);
        }
        Ok(())
    })
    .await
}

fn metric(port: u16, name: &str) -> Result<f64> {
    let (_, page) = http_get(port, "/metrics")?;
    Ok(page
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0.0))
}

/// Defect 21: one flipped byte in a stored segment reached a default
/// consumer as a record with a changed value.
#[tokio::test(flavor = "multi_thread")]
async fn corrupt_stored_batch_is_not_served() -> Result<()> {
    let admin = free_port()?;
    let admin_arg = format!("127.0.0.1:{admin}");
    let mut broker =
        start_broker_local(&["--compaction", "false", "--metrics-listen", &admin_arg])?;
    let b_objects = two_phases(&broker).await?;
    broker.stop()?;
    // Damage one record value of phase b (values are stored uncompressed).
    let needle = b"value-b-0025";
    let mut damaged = false;
    for path in &b_objects {
        let mut bytes = std::fs::read(path)?;
        if let Some(at) = bytes.windows(needle.len()).position(|w| w == needle) {
            bytes[at + 6] = b'Z';
            std::fs::write(path, &bytes)?;
            damaged = true;
        }
    }
    ensure!(damaged, "record b-25 not found in phase b's objects");
    broker.restart()?;
    run_test(&broker, async {
        let got = read_all(&broker.bootstrap(), "crc-reader", 50).await?;
        let expected: BTreeSet<String> = outs("a", 50)
            .chain(outs("b", 50))
            .map(|o| o.value)
            .collect();
        for rec in &got {
            ensure!(
                expected.contains(&rec.value),
                "a corrupt record was served at offset {}: {}",
                rec.offset,
                rec.value
            );
        }
        ensure!(
            got.iter().filter(|r| r.key.starts_with("a-")).count() == 50,
            "the intact records before the damage are served: got {}",
            got.len()
        );
        let corrupt = wait_for(
            "the corruption to be counted",
            Duration::from_secs(30),
            || {
                let v = metric(admin, "tributary_corrupt_batches_total")?;
                Ok(if v > 0.0 { Ok(v) } else { Err(v) })
            },
        )
        .await?;
        ensure!(corrupt >= 1.0);
        Ok(())
    })
    .await
}
