//! SASL re-authentication (issue 14, KIP-368): with
//! `--connections-max-reauth-ms`, SaslAuthenticate tells the client how long
//! its login lasts; the client logs in again on the same connection (as
//! the same principal) and carries on; a connection that does not is
//! closed when the session ends; a re-authentication as someone else is
//! refused. librdkafka keeps producing across several re-authentications.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::acls::blocking;
use crate::common::raw::Raw;
use crate::common::*;
use anyhow::{ensure, Context, Result};
use kafka_protocol::messages::MetadataRequest;
use rdkafka::producer::{FutureProducer, FutureRecord};
use tributary_cli::config::Settings;
use tributary_cli::node::{Launch, Node};

const LIFETIME_MS: i64 = 1500;

fn metadata_ok(conn: &mut Raw) -> Result<()> {
    let answer = conn.call(&MetadataRequest::default().with_topics(Some(vec![])), 9)?;
    ensure!(answer.error_code == 0);
    Ok(())
}

/// Whether the broker closes `conn` within `within` (reads EOF).
fn closed_within(conn: &mut Raw, within: Duration) -> bool {
    let started = Instant::now();
    while started.elapsed() < within {
        if conn
            .call(&MetadataRequest::default().with_topics(Some(vec![])), 9)
            .is_err()
        {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sessions_end_unless_the_client_logs_in_again() -> Result<()> {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let dir = tempfile::tempdir()?;
        add_user(dir.path(), "alice", "alice-secret", &[])?;
        add_user(dir.path(), "bob", "bob-secret", &[])?;
        let lifetime = LIFETIME_MS.to_string();
        let flags = [
            "--listeners",
            "SASL_PLAINTEXT://127.0.0.1:0",
            "--sasl-mechanisms",
            "PLAIN,SCRAM-SHA-512",
            "--connections-max-reauth-ms",
            &lifetime,
            "--metrics-listen",
            "127.0.0.1:0",
            "--flush-interval-ms",
            "10",
            "--data-dir",
            dir.path().to_str().context("utf-8")?,
        ];
        let node = Node::start(Settings::from_flags(flags)?, Launch::default()).await?;
        let result = body(&node).await;
        node.shutdown().await;
        result
    })
    .await
    .context("test timed out")?
}

async fn body(node: &Node) -> Result<()> {
    let addr: SocketAddr = node.kafka_addr();
    blocking(|| {
        // The login says how long it lasts; logging in again renews it.
        let mut conn = Raw::connect(addr)?;
        let login = conn.plain_login("alice", "alice-secret")?;
        ensure!(login.error_code == 0);
        ensure!(
            login.session_lifetime_ms == LIFETIME_MS,
            "session lifetime {}",
            login.session_lifetime_ms
        );
        for _ in 0..3 {
            std::thread::sleep(Duration::from_millis(1000));
            metadata_ok(&mut conn)?;
            let again = conn.plain_login("alice", "alice-secret")?;
            ensure!(again.error_code == 0 && again.session_lifetime_ms == LIFETIME_MS);
        }
        metadata_ok(&mut conn).context("after three re-authentications")?;

        // Re-authenticating as someone else is refused, and closes.
        let other = conn.plain_login("bob", "bob-secret")?;
        ensure!(
            other.error_code == 58,
            "re-login as bob: {}",
            other.error_code
        );
        ensure!(closed_within(&mut conn, Duration::from_secs(5)));

        // A connection that does not log in again is closed at expiry.
        let mut idle = Raw::connect(addr)?;
        ensure!(idle.plain_login("alice", "alice-secret")?.error_code == 0);
        metadata_ok(&mut idle)?;
        std::thread::sleep(Duration::from_millis(LIFETIME_MS as u64 + 500));
        ensure!(
            closed_within(&mut idle, Duration::from_secs(5)),
            "an expired session still served"
        );
        Ok(())
    })?;

    // librdkafka re-authenticates on its own and keeps producing.
    let config = sasl_config(&addr.to_string(), "SCRAM-SHA-512", "alice", "alice-secret");
    let producer: FutureProducer = config.clone().set("linger.ms", "0").create()?;
    let started = Instant::now();
    let mut sent = 0;
    while started.elapsed() < Duration::from_secs(6) {
        producer
            .send(
                FutureRecord::to("reauth").key("k").payload("v"),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| e)
            .context("produce across re-authentications")?;
        sent += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let port = node.admin_addr().context("admin endpoint")?.port();
    let (_, metrics) = http_get(port, "/metrics")?;
    let reauths: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("tributary_reauthentications_total{mechanism=\"SCRAM-SHA-512\"}"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    eprintln!("{sent} records produced across {reauths} librdkafka re-authentications");
    ensure!(
        reauths >= 2.0,
        "librdkafka re-authenticated {reauths} times in 6 s"
    );
    Ok(())
}
