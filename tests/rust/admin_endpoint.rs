//! Issue #6: the admin endpoint (`--metrics-listen`) answers `/healthz`,
//! `/readyz` and `/metrics`; `/readyz` is 503 while the metadata store is
//! down and 200 again once it is back; `--node-id auto` gives brokers that
//! share a metadata store distinct ids.

use std::time::Duration;

use crate::common::*;
use anyhow::{Context, Result};
use rdkafka::consumer::Consumer;
use tributary_testkit::{free_port, PgServer};

fn get(port: u16, path: &str) -> Result<(u16, String)> {
    http_get(port, path)
}

#[tokio::test(flavor = "multi_thread")]
async fn health_readiness_metrics_and_auto_node_ids() -> Result<()> {
    let mut pg = PgServer::start()?;
    let url = format!("{}?schema=admin", pg.url());
    let objects = tempfile::tempdir()?;
    let objects_url = format!("file://{}", objects.path().display());
    let admin = free_port()?;
    let admin_arg = format!("127.0.0.1:{admin}");
    let start = |admin: &str| {
        start_broker_local(&[
            "--metadata",
            &url,
            "--object-store",
            &objects_url,
            "--node-id",
            "auto",
            "--metrics-listen",
            admin,
        ])
    };
    let a = start(&admin_arg)?;
    let b_admin = format!("127.0.0.1:{}", free_port()?);
    let b = start(&b_admin)?;
    run_test(&a, async {
        assert_eq!(get(admin, "/healthz")?, (200, "ok\n".to_owned()));
        assert_eq!(get(admin, "/readyz")?.0, 200);
        assert_eq!(get(admin, "/nope")?.0, 404);
        // The publisher copies counters every second.
        wait_for("object-store metrics", Duration::from_secs(10), || {
            let (status, body) = get(admin, "/metrics")?;
            Ok(
                if status == 200 && body.contains("tributary_object_store_requests_total") {
                    Ok(())
                } else {
                    Err(status)
                },
            )
        })
        .await?;

        // Two brokers with --node-id auto took different ids.
        let probe = consumer(&a.bootstrap(), "probe", &[])?;
        let ids = wait_for("both brokers in Metadata", Duration::from_secs(20), || {
            let md = tokio::task::block_in_place(|| probe.fetch_metadata(None, OP_TIMEOUT))?;
            let mut ids: Vec<i32> = md.brokers().iter().map(|b| b.id()).collect();
            ids.sort_unstable();
            Ok(if ids.len() == 2 { Ok(ids) } else { Err(ids) })
        })
        .await?;
        anyhow::ensure!(ids == vec![0, 1], "auto node ids {ids:?}");

        // Metadata store down: not ready (with the reason), still alive.
        tokio::task::block_in_place(|| pg.stop())?;
        let why = wait_for("/readyz to fail", Duration::from_secs(20), || {
            let (status, body) = get(admin, "/readyz")?;
            Ok(if status == 503 { Ok(body) } else { Err(status) })
        })
        .await?;
        anyhow::ensure!(why.contains("metadata store"), "{why}");
        assert_eq!(get(admin, "/healthz")?.0, 200);
        tokio::task::block_in_place(|| pg.resume())?;
        wait_for("/readyz to recover", Duration::from_secs(30), || {
            let (status, _) = get(admin, "/readyz")?;
            Ok(if status == 200 { Ok(()) } else { Err(status) })
        })
        .await?;
        drop(b);
        Ok(())
    })
    .await
}

/// The value of one series (exact name and labels) in a Prometheus page.
fn series(page: &str, name: &str) -> Option<f64> {
    page.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Traffic moves the counters: records produced to a topic are counted
/// exactly; requests, connections, flushes, commit latency and fetched bytes
/// show up.
#[tokio::test(flavor = "multi_thread")]
async fn metrics_move_with_traffic() -> Result<()> {
    let admin = free_port()?;
    let admin_arg = format!("127.0.0.1:{admin}");
    let broker = start_broker_local(&["--metrics-listen", &admin_arg])?;
    run_test(&broker, async {
        let bootstrap = broker.bootstrap();
        create_topic(&bootstrap, "metered", 3).await?;
        let p = producer(&bootstrap, &[("acks", "all")])?;
        let records = (0..500).map(|i| Out {
            key: format!("k{i}"),
            value: format!("v{i}"),
            ..Out::default()
        });
        produce_all(&p, "metered", records).await?;
        let (_, page) = get(admin, "/metrics")?;
        assert_eq!(
            series(&page, r#"tributary_produce_records_total{topic="metered"}"#),
            Some(500.0),
            "{page}"
        );
        for name in [
            r#"tributary_requests_total{api="Produce"}"#,
            r#"tributary_produce_bytes_total{topic="metered"}"#,
            "tributary_connections",
            // Group commit: at this load segments are sealed as soon as
            // the previous one is committed.
            r#"tributary_segment_flushes_total{reason="idle"}"#,
            "tributary_segment_flush_bytes_count",
            "tributary_metadata_commit_duration_seconds_count",
            r#"tributary_request_duration_seconds_count{api="Produce"}"#,
            r#"tributary_object_store_request_duration_seconds_count{op="put"}"#,
        ] {
            let v = series(&page, name).with_context(|| format!("{name} missing"))?;
            anyhow::ensure!(v > 0.0, "{name} = {v}");
        }
        anyhow::ensure!(page.contains("tributary_request_duration_seconds_bucket{"));

        let c = consumer(&bootstrap, "metered-reader", &[])?;
        c.subscribe(&["metered"])?;
        consume_n(&c, 500, Duration::from_secs(30)).await?;
        let (_, page) = get(admin, "/metrics")?;
        let fetched = series(&page, r#"tributary_fetch_bytes_total{topic="metered"}"#)
            .context("fetch bytes missing")?;
        let produced = series(&page, r#"tributary_produce_bytes_total{topic="metered"}"#)
            .context("produce bytes missing")?;
        anyhow::ensure!(fetched >= produced, "fetched {fetched} of {produced} bytes");
        let fetched = series(&page, r#"tributary_fetch_records_total{topic="metered"}"#)
            .context("fetch records missing")?;
        anyhow::ensure!(fetched >= 500.0, "fetched {fetched} records");

        // A group that committed offset 1 on every partition lags by all
        // but 3 of the records (the reporter measures every 10 s).
        let lagging = consumer(&bootstrap, "metered-lagging", &[])?;
        let mut tpl = rdkafka::TopicPartitionList::new();
        for p in 0..3 {
            tpl.add_partition_offset("metered", p, rdkafka::Offset::Offset(1))?;
        }
        tokio::task::block_in_place(|| lagging.commit(&tpl, rdkafka::consumer::CommitMode::Sync))?;
        let lag = wait_for("consumer-group lag", Duration::from_secs(30), || {
            let (_, page) = get(admin, "/metrics")?;
            let parts: Vec<f64> = (0..3)
                .filter_map(|p| {
                    let labels =
                        format!(r#"group="metered-lagging",topic="metered",partition="{p}""#);
                    series(&page, &format!("tributary_consumer_group_lag{{{labels}}}"))
                })
                .collect();
            Ok(if parts.len() == 3 {
                Ok(parts.iter().sum::<f64>())
            } else {
                Err(page.len())
            })
        })
        .await?;
        anyhow::ensure!(lag == 497.0, "lag {lag}, expected 497");

        // A second flush gives the interval between flushes; memory and the
        // cache are reported.
        produce_all(
            &p,
            "metered",
            (0..10).map(|i| Out {
                key: format!("late{i}"),
                value: "v".into(),
                ..Out::default()
            }),
        )
        .await?;
        // Gauges (cache size, RSS) are published by a 1 s task: wait for
        // them rather than assume it has run (a busy machine delays it).
        wait_for(
            "gauges and histograms to be published",
            Duration::from_secs(30),
            || {
                let (_, page) = get(admin, "/metrics")?;
                let missing: Vec<String> = [
                    "tributary_segment_flush_interval_seconds_count",
                    "process_resident_memory_bytes",
                    "tributary_process_peak_resident_memory_bytes",
                    "process_cpu_seconds_total",
                    "tributary_read_cache_size_bytes",
                ]
                .into_iter()
                .filter_map(|name| match series(&page, name) {
                    Some(v) if v > 0.0 => None,
                    v => Some(format!("{name} = {v:?}")),
                })
                .collect();
                Ok(if missing.is_empty() {
                    Ok(())
                } else {
                    Err(missing)
                })
            },
        )
        .await?;
        Ok(())
    })
    .await
}

/// `--log-format json`: every log line is one JSON object with a level and
/// the message.
#[tokio::test(flavor = "multi_thread")]
async fn json_logs() -> Result<()> {
    let broker = start_broker_local(&["--log-format", "json"])?;
    run_test(&broker, async {
        let logs = broker.logs();
        let lines: Vec<&str> = logs.lines().filter(|l| !l.starts_with("=====")).collect();
        anyhow::ensure!(!lines.is_empty(), "no log lines");
        for line in &lines {
            let v: serde_json::Value =
                serde_json::from_str(line).with_context(|| format!("not JSON: {line}"))?;
            anyhow::ensure!(v["level"].is_string(), "{line}");
        }
        anyhow::ensure!(
            lines
                .iter()
                .any(|l| l.contains("\"message\":\"tributary broker started\"")),
            "{logs}"
        );
        Ok(())
    })
    .await
}

/// Issue 12, defect 15: per-topic series never left `/metrics`, so every
/// topic ever written (and deleted) stayed on the page forever. Series not
/// updated within `--metrics-idle-timeout-ms` are dropped.
#[tokio::test(flavor = "multi_thread")]
async fn deleted_topic_leaves_metrics() -> Result<()> {
    use rdkafka::admin::{AdminClient, AdminOptions};
    use rdkafka::client::DefaultClientContext;
    let admin = free_port()?;
    let admin_arg = format!("127.0.0.1:{admin}");
    let broker = start_broker_local(&[
        "--metrics-listen",
        &admin_arg,
        "--metrics-idle-timeout-ms",
        "2000",
    ])?;
    run_test(&broker, async {
        let bootstrap = broker.bootstrap();
        create_topic(&bootstrap, "ephemeral", 1).await?;
        let p = producer(&bootstrap, &[("acks", "all")])?;
        produce_all(
            &p,
            "ephemeral",
            (0..10).map(|i| Out {
                key: format!("k{i}"),
                value: "v".into(),
                ..Out::default()
            }),
        )
        .await?;
        let name = r#"tributary_produce_records_total{topic="ephemeral"}"#;
        let (_, page) = get(admin, "/metrics")?;
        anyhow::ensure!(series(&page, name) == Some(10.0), "{page}");
        let client: AdminClient<DefaultClientContext> =
            client_config(&bootstrap).create().context("admin client")?;
        let deleted = client
            .delete_topics(&["ephemeral"], &AdminOptions::new())
            .await?;
        anyhow::ensure!(deleted.iter().all(|r| r.is_ok()), "{deleted:?}");
        wait_for(
            "the deleted topic's series to leave /metrics",
            Duration::from_secs(30),
            || {
                let (_, page) = get(admin, "/metrics")?;
                Ok(match series(&page, name) {
                    None => Ok(()),
                    Some(v) => Err(v),
                })
            },
        )
        .await?;
        // Series that are still updated stay.
        let (_, page) = get(admin, "/metrics")?;
        anyhow::ensure!(series(&page, "process_resident_memory_bytes").is_some());
        Ok(())
    })
    .await
}
