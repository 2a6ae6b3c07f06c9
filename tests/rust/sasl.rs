//! SASL listeners (issue 14): users made with `tributary users add` log in
//! with librdkafka over SASL_PLAINTEXT and SASL_SSL with SCRAM-SHA-512,
//! SCRAM-SHA-256 and PLAIN; a wrong password, an unknown user and a
//! request before authentication are refused promptly and the connection
//! closed; others are served meanwhile.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::common::*;
use anyhow::{ensure, Context, Result};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::ClientConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tributary_cli::config::Settings;
use tributary_cli::node::{Launch, Node};
use tributary_testkit::Pki;

async fn start(dir: &Path, pki: &Pki) -> Result<Node> {
    let server = pki.server_files();
    let flags = vec![
        "--listeners",
        "PLAINTEXT://127.0.0.1:0,SASL_PLAINTEXT://127.0.0.1:0,SASL_SSL://127.0.0.1:0",
        "--sasl-mechanisms",
        "SCRAM-SHA-512,SCRAM-SHA-256,PLAIN",
        "--data-dir",
        dir.to_str().context("utf-8 dir")?,
        "--flush-interval-ms",
        "10",
        "--tls-cert",
        server.cert.to_str().context("utf-8")?,
        "--tls-key",
        server.key.to_str().context("utf-8")?,
    ];
    Node::start(Settings::from_flags(flags)?, Launch::default()).await
}

/// Metadata through `config` fails, and within `within`.
async fn refused(config: &ClientConfig, within: Duration) -> Result<()> {
    let consumer: BaseConsumer = config.create().context("client")?;
    let started = Instant::now();
    let result =
        tokio::task::spawn_blocking(move || consumer.fetch_metadata(None, Duration::from_secs(10)))
            .await?;
    ensure!(result.is_err(), "the client was served");
    ensure!(
        started.elapsed() < within,
        "the refusal took {:?}",
        started.elapsed()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scram_and_plain_over_sasl_listeners() -> Result<()> {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let pki = Pki::new()?;
        let dir = tempfile::tempdir()?;
        add_user(dir.path(), "alice", "alice-secret", &[])?;
        add_user(
            dir.path(),
            "bob",
            "bob-secret-256",
            &["--mechanism", "SCRAM-SHA-256"],
        )?;
        let node = start(dir.path(), &pki).await?;
        let sasl = node
            .listener_addr("SASL_PLAINTEXT")
            .context("sasl")?
            .to_string();
        let sasl_ssl = node
            .listener_addr("SASL_SSL")
            .context("sasl_ssl")?
            .to_string();

        round_trip(
            &sasl_config(&sasl, "SCRAM-SHA-512", "alice", "alice-secret"),
            "scram512",
            50,
        )
        .await?;
        round_trip(
            &sasl_config(&sasl, "SCRAM-SHA-256", "bob", "bob-secret-256"),
            "scram256",
            50,
        )
        .await?;
        round_trip(
            &sasl_config(&sasl, "PLAIN", "alice", "alice-secret"),
            "plain",
            50,
        )
        .await?;
        let mut over_tls = sasl_config(&sasl_ssl, "SCRAM-SHA-512", "alice", "alice-secret");
        over_tls
            .set("security.protocol", "sasl_ssl")
            .set("ssl.ca.location", pki.ca().to_string_lossy().as_ref());
        round_trip(&over_tls, "sasl-ssl", 50).await?;

        // Refusals: prompt (the broker answers after its 100 ms delay and
        // closes; librdkafka reports it at once).
        let within = Duration::from_secs(30);
        refused(
            &sasl_config(&sasl, "SCRAM-SHA-512", "alice", "wrong"),
            within,
        )
        .await?;
        refused(&sasl_config(&sasl, "PLAIN", "alice", "wrong"), within).await?;
        refused(
            &sasl_config(&sasl, "SCRAM-SHA-512", "mallory", "whatever"),
            within,
        )
        .await?;
        // bob has no SHA-512 credential.
        refused(
            &sasl_config(&sasl, "SCRAM-SHA-512", "bob", "bob-secret-256"),
            within,
        )
        .await?;

        // A user removed cannot log in any more.
        let out = std::process::Command::new(broker_bin())
            .args(["users", "remove", "bob", "--data-dir"])
            .arg(dir.path())
            .output()?;
        ensure!(out.status.success(), "users remove failed");
        refused(
            &sasl_config(&sasl, "SCRAM-SHA-256", "bob", "bob-secret-256"),
            within,
        )
        .await?;

        // Alice is still served.
        round_trip(
            &sasl_config(&sasl, "SCRAM-SHA-512", "alice", "alice-secret"),
            "still",
            10,
        )
        .await?;
        let failed = node.shutdown().await;
        ensure!(failed.is_empty(), "tasks failed: {failed:?}");
        Ok(())
    })
    .await
    .context("timed out")?
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn requests_before_authentication_close_the_connection() -> Result<()> {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let pki = Pki::new()?;
        let dir = tempfile::tempdir()?;
        let node = start(dir.path(), &pki).await?;
        let sasl = node.listener_addr("SASL_PLAINTEXT").context("sasl")?;
        // Metadata v1 for all topics, without a SASL handshake.
        let mut s = tokio::net::TcpStream::connect(sasl).await?;
        s.write_all(&frame(3, 1, &(-1i32).to_be_bytes())).await?;
        let mut buf = [0u8; 64];
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
            .await
            .context("the connection was kept open")??;
        ensure!(n == 0, "got {n} bytes before authenticating");
        // The plaintext listener of the same broker serves as before.
        let plain = node
            .listener_addr("PLAINTEXT")
            .context("plain")?
            .to_string();
        round_trip(&client_config(&plain), "plaintext-beside", 10).await?;
        node.shutdown().await;
        Ok(())
    })
    .await
    .context("timed out")?
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_exchange_that_never_finishes_is_cut_off() -> Result<()> {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let pki = Pki::new()?;
        let dir = tempfile::tempdir()?;
        let node = start(dir.path(), &pki).await?;
        let sasl = node.listener_addr("SASL_PLAINTEXT").context("sasl")?;
        // ApiVersions v0 (allowed before authenticating), then silence.
        let mut s = tokio::net::TcpStream::connect(sasl).await?;
        let started = Instant::now();
        s.write_all(&frame(18, 0, &[])).await?;
        let mut answer = vec![0u8; 4096];
        let n = s.read(&mut answer).await?;
        ensure!(n > 0, "ApiVersions was not answered before authentication");
        let limit = tributary_broker::connection::AUTHENTICATION_TIMEOUT + Duration::from_secs(15);
        loop {
            match tokio::time::timeout(limit, s.read(&mut answer)).await {
                Ok(Ok(0)) | Ok(Err(_)) => break,
                Ok(Ok(_)) => continue,
                Err(_) => anyhow::bail!("an unauthenticated connection was kept past {limit:?}"),
            }
        }
        ensure!(
            started.elapsed() >= Duration::from_secs(25),
            "closed too early"
        );
        node.shutdown().await;
        Ok(())
    })
    .await
    .context("timed out")?
}

/// A request frame: api key, version, correlation id, null client id, body.
fn frame(api_key: i16, version: i16, body: &[u8]) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(&api_key.to_be_bytes());
    b.extend_from_slice(&version.to_be_bytes());
    b.extend_from_slice(&5i32.to_be_bytes());
    b.extend_from_slice(&(-1i16).to_be_bytes());
    b.extend_from_slice(body);
    let mut out = (b.len() as i32).to_be_bytes().to_vec();
    out.extend_from_slice(&b);
    out
}

async fn read_frame(s: &mut tokio::net::TcpStream) -> Result<Vec<u8>> {
    let mut len = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut len)).await??;
    let mut body = vec![0u8; i32::from_be_bytes(len) as usize];
    tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut body)).await??;
    Ok(body)
}

/// SaslHandshake v0 (older clients): the exchange follows as raw tokens.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn handshake_v0_with_raw_tokens() -> Result<()> {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let pki = Pki::new()?;
        let dir = tempfile::tempdir()?;
        add_user(dir.path(), "alice", "alice-secret", &[])?;
        let node = start(dir.path(), &pki).await?;
        let sasl = node.listener_addr("SASL_PLAINTEXT").context("sasl")?;
        let handshake = {
            let mut body = (5i16).to_be_bytes().to_vec();
            body.extend_from_slice(b"PLAIN");
            frame(17, 0, &body)
        };
        let raw = |token: &[u8]| {
            let mut out = (token.len() as i32).to_be_bytes().to_vec();
            out.extend_from_slice(token);
            out
        };

        // Right password: an empty token back, then requests are served.
        let mut s = tokio::net::TcpStream::connect(sasl).await?;
        s.write_all(&handshake).await?;
        let answer = read_frame(&mut s).await?;
        ensure!(answer[4..6] == [0, 0], "handshake v0 refused: {answer:?}");
        s.write_all(&raw(b"\0alice\0alice-secret")).await?;
        ensure!(
            read_frame(&mut s).await?.is_empty(),
            "PLAIN answers an empty token"
        );
        // Metadata v1, all topics.
        s.write_all(&frame(3, 1, &(-1i32).to_be_bytes())).await?;
        let metadata = read_frame(&mut s).await?;
        ensure!(
            metadata[..4] == 5i32.to_be_bytes(),
            "Metadata answered after raw login"
        );

        // Wrong password: the connection closes without a Kafka answer.
        let mut s = tokio::net::TcpStream::connect(sasl).await?;
        s.write_all(&handshake).await?;
        read_frame(&mut s).await?;
        s.write_all(&raw(b"\0alice\0wrong")).await?;
        let mut buf = [0u8; 16];
        let n = tokio::time::timeout(Duration::from_secs(15), s.read(&mut buf)).await??;
        ensure!(n == 0, "a wrong raw password got {n} bytes back");
        node.shutdown().await;
        Ok(())
    })
    .await
    .context("timed out")?
}

/// Resident memory of this process (the broker runs in it), from /proc.
fn rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line["VmRSS:".len()..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

/// A thousand wrong passwords (SaslHandshake v1 + SaslAuthenticate, PLAIN,
/// over many connections): each is refused and its connection closed,
/// memory does not grow with them, and the right password still works.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_thousand_wrong_passwords() -> Result<()> {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let pki = Pki::new()?;
        let dir = tempfile::tempdir()?;
        add_user(dir.path(), "alice", "alice-secret", &[])?;
        let server = pki.server_files();
        let flags = vec![
            "--listeners".to_owned(),
            "SASL_PLAINTEXT://127.0.0.1:0".to_owned(),
            "--sasl-mechanisms".to_owned(),
            "PLAIN,SCRAM-SHA-512".to_owned(),
            // No delay, so a thousand tries take seconds, not minutes.
            "--failed-authentication-delay-ms".to_owned(),
            "0".to_owned(),
            "--data-dir".to_owned(),
            dir.path().to_string_lossy().into_owned(),
            "--tls-cert".to_owned(),
            server.cert.to_string_lossy().into_owned(),
            "--tls-key".to_owned(),
            server.key.to_string_lossy().into_owned(),
        ];
        let node = Node::start(
            Settings::from_flags(flags.iter().map(String::as_str))?,
            Launch::default(),
        )
        .await?;
        let sasl = node.listener_addr("SASL_PLAINTEXT").context("sasl")?;
        let handshake = {
            let mut body = (5i16).to_be_bytes().to_vec();
            body.extend_from_slice(b"PLAIN");
            frame(17, 1, &body)
        };
        let authenticate = |password: &str| {
            let token = format!("\0alice\0{password}");
            let mut body = (token.len() as i32).to_be_bytes().to_vec();
            body.extend_from_slice(token.as_bytes());
            frame(36, 0, &body)
        };
        let try_once = |password: String| {
            let (handshake, auth) = (handshake.clone(), authenticate(&password));
            async move {
                let mut s = tokio::net::TcpStream::connect(sasl).await?;
                s.write_all(&handshake).await?;
                read_frame(&mut s).await?;
                s.write_all(&auth).await?;
                let answer = read_frame(&mut s).await?;
                // correlation id (4) + error code (2)
                let code = i16::from_be_bytes([answer[4], answer[5]]);
                let mut rest = [0u8; 8];
                let closed = matches!(
                    tokio::time::timeout(Duration::from_secs(10), s.read(&mut rest)).await,
                    Ok(Ok(0)) | Ok(Err(_))
                );
                anyhow::Ok((code, closed))
            }
        };
        let (code, closed) = try_once("wrong".into()).await?;
        ensure!(
            code == 58 && closed,
            "a wrong password: code {code}, closed {closed}"
        );
        let before = rss_bytes().unwrap_or(0);
        for round in 0..50 {
            let tries = (0..20).map(|i| try_once(format!("wrong-{round}-{i}")));
            for outcome in futures::future::join_all(tries).await {
                let (code, closed) = outcome?;
                ensure!(code == 58 && closed, "code {code}, closed {closed}");
            }
        }
        let after = rss_bytes().unwrap_or(0);
        ensure!(
            after.saturating_sub(before) < 64 << 20,
            "memory grew by {} MiB over 1,000 failed logins",
            after.saturating_sub(before) >> 20
        );
        let (code, _) = try_once("alice-secret".into()).await?;
        ensure!(code == 0, "the right password after the flood: code {code}");
        node.shutdown().await;
        Ok(())
    })
    .await
    .context("timed out")?
}
