//! Issue 12, defect 4: PostgreSQL had no statement, lock or
//! idle-in-transaction timeout and a commit had no deadline, so a session
//! holding a partition's row lock (a broker frozen mid-commit) stalled every
//! produce on every broker until TCP keepalive noticed (~2 h). Now a commit
//! that cannot get its locks fails within the segment's commit deadline
//! (the produce gets a retriable error and the client retries), and produces
//! succeed again once the lock is released.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use crate::common::*;
use anyhow::{ensure, Context, Result};
use rdkafka::consumer::Consumer;
use tributary_testkit::{pg_bin_dir, PgServer};

fn psql() -> std::path::PathBuf {
    pg_bin_dir()
        .map(|d| d.join("psql"))
        .ok()
        .filter(|p| p.is_file())
        .unwrap_or_else(|| "psql".into())
}

#[tokio::test(flavor = "multi_thread")]
async fn row_lock_fails_commits_within_the_deadline_then_recovers() -> Result<()> {
    let pg = PgServer::start()?;
    let url = format!("{}?schema=locks", pg.url());
    let broker = start_broker_local(&[
        "--metadata",
        &url,
        "--segment-commit-deadline-ms",
        "4000",
        "--segment-grace-ms",
        "8000",
    ])?;
    run_test(&broker, async {
        let bootstrap = broker.bootstrap();
        create_topic(&bootstrap, "locked", 1).await?;
        let p = producer(&bootstrap, &[("acks", "all"), ("message.timeout.ms", "90000")])?;
        let one = |v: &str| Out {
            partition: Some(0),
            key: "k".into(),
            value: v.into(),
            ..Out::default()
        };
        produce_all(&p, "locked", [one("before")]).await?;

        // Another session takes the partition's row lock and keeps it.
        let mut holder = Command::new(psql())
            .args([pg.url().as_str(), "-X", "-q", "-v", "ON_ERROR_STOP=1"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("spawn psql")?;
        let mut stdin = holder.stdin.take().context("psql stdin")?;
        let stdout = holder.stdout.take().context("psql stdout")?;
        let (lines_tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = lines_tx.send(line);
            }
        });
        writeln!(
            stdin,
            "SET search_path = locks; BEGIN; SELECT 'locked ' || partition_index FROM partitions FOR UPDATE;"
        )?;
        stdin.flush()?;
        loop {
            let line = lines
                .recv_timeout(Duration::from_secs(30))
                .context("psql did not take the lock")?;
            if line.contains("locked 0") {
                break;
            }
        }

        let during = {
            let p = p.clone();
            tokio::spawn(async move { produce_all(&p, "locked", [one("during")]).await })
        };
        let failed = wait_for(
            "a commit to fail while the row lock is held",
            Duration::from_secs(30),
            || {
                let logs = broker.logs();
                Ok(if logs.contains("segment commit failed") {
                    Ok(())
                } else {
                    Err("no commit failure yet")
                })
            },
        )
        .await;
        writeln!(stdin, "COMMIT;")?;
        drop(stdin);
        let _ = tokio::task::block_in_place(|| holder.wait());
        failed?;

        let sent = tokio::time::timeout(Duration::from_secs(90), during)
            .await
            .context("the produce did not complete after the lock was released")??;
        ensure!(sent?.len() == 1);
        let c = consumer(&bootstrap, "lock-reader", &[])?;
        c.subscribe(&["locked"])?;
        let got = consume_n(&c, 2, Duration::from_secs(30)).await?;
        let values: Vec<&str> = got.iter().map(|r| r.value.as_str()).collect();
        ensure!(values == ["before", "during"], "{values:?}");
        let extra = drain_quiet(&c, Duration::from_secs(2)).await?;
        ensure!(extra.is_empty(), "duplicates: {extra:?}");
        Ok(())
    })
    .await
}
