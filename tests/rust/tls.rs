//! TLS listeners (issue 14): librdkafka over `SSL` beside a `PLAINTEXT`
//! listener, each told its own listener's addresses; client certificates
//! (mTLS) required; the wrong protocol on either port refused at once
//! without disturbing other clients; a rotated certificate served to new
//! connections without a restart. Brokers run in-process
//! ([`tributary_cli::Node`]) so the test knows every bound port.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::common::*;
use anyhow::{bail, ensure, Context, Result};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::ClientConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tributary_cli::config::Settings;
use tributary_cli::node::{Launch, Node};
use tributary_testkit::{CertFiles, Pki};

async fn start(dir: &Path, pki: &Pki, extra: &[&str]) -> Result<Node> {
    let server = pki.server_files();
    let mut flags = vec![
        "--listeners",
        "PLAINTEXT://127.0.0.1:0,SSL://127.0.0.1:0",
        "--data-dir",
        dir.to_str().context("utf-8 dir")?,
        "--flush-interval-ms",
        "10",
        "--tls-cert",
        server.cert.to_str().context("utf-8")?,
        "--tls-key",
        server.key.to_str().context("utf-8")?,
    ];
    flags.extend_from_slice(extra);
    Node::start(Settings::from_flags(flags)?, Launch::default()).await
}

/// librdkafka settings for the SSL listener.
fn ssl_config(bootstrap: &str, pki: &Pki, client: Option<&CertFiles>) -> ClientConfig {
    let mut config = client_config(bootstrap);
    config
        .set("security.protocol", "ssl")
        .set("ssl.ca.location", pki.ca().to_string_lossy().as_ref());
    if let Some(c) = client {
        config
            .set(
                "ssl.certificate.location",
                c.cert.to_string_lossy().as_ref(),
            )
            .set("ssl.key.location", c.key.to_string_lossy().as_ref());
    }
    config
}

/// The port of every broker Metadata lists, asked through `config`.
fn advertised_ports(config: &ClientConfig) -> Result<Vec<u16>> {
    let consumer: BaseConsumer = config.create().context("metadata client")?;
    let metadata = consumer
        .fetch_metadata(None, Duration::from_secs(20))
        .context("metadata")?;
    Ok(metadata.brokers().iter().map(|b| b.port() as u16).collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ssl_beside_plaintext_each_advertising_its_own_listener() -> Result<()> {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let pki = Pki::new()?;
        let dir = tempfile::tempdir()?;
        let node = start(dir.path(), &pki, &[]).await?;
        let plain = node.listener_addr("PLAINTEXT").context("plaintext")?;
        let ssl = node.listener_addr("SSL").context("ssl")?;
        let ssl_config = ssl_config(&ssl.to_string(), &pki, None);
        let plain_config = client_config(&plain.to_string());
        ensure!(
            advertised_ports(&ssl_config)? == vec![ssl.port()],
            "an SSL client is told the SSL listener"
        );
        ensure!(
            advertised_ports(&plain_config)? == vec![plain.port()],
            "a plaintext client is told the plaintext listener"
        );
        round_trip(&ssl_config, "over-ssl", 100).await?;
        round_trip(&plain_config, "over-plaintext", 100).await?;
        let failed = node.shutdown().await;
        ensure!(failed.is_empty(), "tasks failed: {failed:?}");
        Ok(())
    })
    .await
    .context("timed out")?
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn client_certificates_required() -> Result<()> {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let pki = Pki::new()?;
        let dir = tempfile::tempdir()?;
        let ca = pki.ca();
        let ca = ca.to_str().context("utf-8")?;
        let node = start(dir.path(), &pki, &["--tls-client-ca", ca]).await?;
        let ssl = node.listener_addr("SSL").context("ssl")?.to_string();
        let alice = pki.client("alice")?;
        round_trip(&ssl_config(&ssl, &pki, Some(&alice)), "alice", 20).await?;

        // Without a certificate the handshake fails: an error, promptly.
        let mut anonymous = ssl_config(&ssl, &pki, None);
        anonymous.set("socket.timeout.ms", "5000");
        let consumer: BaseConsumer = anonymous.create()?;
        let started = std::time::Instant::now();
        let refused = tokio::task::spawn_blocking(move || {
            consumer.fetch_metadata(None, Duration::from_secs(10))
        })
        .await?;
        ensure!(
            refused.is_err(),
            "a client without a certificate was served"
        );
        ensure!(
            started.elapsed() < Duration::from_secs(60),
            "the refusal took {:?}",
            started.elapsed()
        );

        // A certificate from another CA is refused too.
        let other = Pki::new()?;
        let mallory = other.client("mallory")?;
        let consumer: BaseConsumer = ssl_config(&ssl, &pki, Some(&mallory)).create()?;
        let refused = tokio::task::spawn_blocking(move || {
            consumer.fetch_metadata(None, Duration::from_secs(10))
        })
        .await?;
        ensure!(
            refused.is_err(),
            "a certificate of an unknown CA was accepted"
        );

        // Alice is still served.
        round_trip(&ssl_config(&ssl, &pki, Some(&alice)), "alice-again", 10).await?;
        node.shutdown().await;
        Ok(())
    })
    .await
    .context("timed out")?
}

/// A Kafka ApiVersions v0 request frame.
fn api_versions_frame() -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&18i16.to_be_bytes()); // ApiVersions
    body.extend_from_slice(&0i16.to_be_bytes()); // v0
    body.extend_from_slice(&7i32.to_be_bytes()); // correlation id
    body.extend_from_slice(&(-1i16).to_be_bytes()); // null client id
    let mut frame = (body.len() as i32).to_be_bytes().to_vec();
    frame.extend_from_slice(&body);
    frame
}

/// Whether the broker closes the connection after `bytes` (reading
/// nothing back that is a Kafka answer) within `within`.
async fn closes_after(addr: std::net::SocketAddr, bytes: &[u8], within: Duration) -> Result<bool> {
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(bytes).await?;
    let mut buf = vec![0u8; 4096];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => return Ok(false),
            Ok(Ok(0)) | Ok(Err(_)) => return Ok(true),
            // A TLS alert may come first; keep reading until the close.
            Ok(Ok(_)) => continue,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn wrong_protocol_on_either_port_is_refused() -> Result<()> {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let pki = Pki::new()?;
        let dir = tempfile::tempdir()?;
        let node = start(dir.path(), &pki, &[]).await?;
        let plain = node.listener_addr("PLAINTEXT").context("plain")?;
        let ssl = node.listener_addr("SSL").context("ssl")?;
        let quick = Duration::from_secs(5);
        ensure!(
            closes_after(ssl, &api_versions_frame(), quick).await?,
            "a plaintext Kafka request on the TLS port was not refused"
        );
        // A TLS ClientHello's first bytes read as a frame length far over
        // the request limit.
        let hello = [
            0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
        ];
        ensure!(
            closes_after(plain, &hello, quick).await?,
            "a TLS handshake on the plaintext port was not refused"
        );
        ensure!(
            closes_after(ssl, b"\x16\x03\x01\x00\x05garbage-garbage", quick).await?,
            "garbage in the handshake was not refused"
        );
        // A client that opens the TLS port and says nothing is cut off
        // after the handshake timeout, not kept.
        let silent = tokio::net::TcpStream::connect(ssl).await?;
        // Others are served meanwhile.
        round_trip(&ssl_config(&ssl.to_string(), &pki, None), "meanwhile", 10).await?;
        let mut silent = silent;
        let mut buf = [0u8; 16];
        match tokio::time::timeout(Duration::from_secs(30), silent.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {}
            Ok(Ok(n)) => bail!("the silent client got {n} bytes"),
            Err(_) => bail!("a silent TLS client was kept past the handshake timeout"),
        }
        node.shutdown().await;
        Ok(())
    })
    .await
    .context("timed out")?
}

/// The subject common name of the certificate the SSL listener presents.
async fn served_certificate(addr: std::net::SocketAddr, pki: &Pki) -> Result<String> {
    let mut roots = rustls::RootCertStore::empty();
    let ca = std::fs::read(pki.ca())?;
    for cert in rustls_pemfile_certs(&ca)? {
        roots.add(cert)?;
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = rustls::pki_types::ServerName::try_from("localhost")?;
    let tls = connector.connect(name, tcp).await?;
    let leaf = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .context("no certificate")?
        .clone();
    use x509_cert::der::Decode;
    let cert = x509_cert::Certificate::from_der(leaf.as_ref())?;
    Ok(cert.tbs_certificate.subject.to_string())
}

fn rustls_pemfile_certs(pem: &[u8]) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>> {
    use rustls::pki_types::pem::PemObject;
    Ok(rustls::pki_types::CertificateDer::pem_slice_iter(pem).collect::<Result<Vec<_>, _>>()?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rotated_certificate_is_served_without_a_restart() -> Result<()> {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let pki = Pki::new()?;
        let dir = tempfile::tempdir()?;
        let node = start(dir.path(), &pki, &[]).await?;
        let ssl = node.listener_addr("SSL").context("ssl")?;
        ensure!(served_certificate(ssl, &pki).await? == "CN=server");
        // Rotate: a new certificate and key replace the files in place.
        let next = pki.server("rotated")?;
        let current = pki.server_files();
        std::fs::copy(&next.key, &current.key)?;
        std::fs::copy(&next.cert, &current.cert)?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            if served_certificate(ssl, &pki).await? == "CN=rotated" {
                break;
            }
            ensure!(
                tokio::time::Instant::now() < deadline,
                "the rotated certificate was not served within 60 s"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        // Clients keep working across the rotation.
        round_trip(&ssl_config(&ssl.to_string(), &pki, None), "rotated", 10).await?;
        node.shutdown().await;
        Ok(())
    })
    .await
    .context("timed out")?
}

/// The certificate and key given as PEM text (how a secret store hands
/// them to a container, e.g. ECS secrets in the Terraform module) work like
/// files.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn certificate_and_key_as_pem_text() -> Result<()> {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let pki = Pki::new()?;
        let dir = tempfile::tempdir()?;
        let server = pki.server_files();
        let cert = std::fs::read_to_string(&server.cert)?;
        let key = std::fs::read_to_string(&server.key)?;
        let flags = vec![
            "--listeners",
            "SSL://127.0.0.1:0",
            "--data-dir",
            dir.path().to_str().context("utf-8 dir")?,
            "--flush-interval-ms",
            "10",
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
        ];
        let node = Node::start(Settings::from_flags(flags)?, Launch::default()).await?;
        let ssl = node.listener_addr("SSL").context("ssl")?;
        let result = round_trip(&ssl_config(&ssl.to_string(), &pki, None), "inline-pem", 20).await;
        node.shutdown().await;
        result
    })
    .await
    .context("test timed out")?
}
