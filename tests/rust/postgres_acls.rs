//! ACLs across brokers (issue 14, acceptance 1): three brokers on one
//! PostgreSQL. A grant made through one broker applies on all three, and
//! when it is deleted access goes away on every broker within a few
//! seconds (each polls the ACL version every 2 s).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::acls::*;
use crate::common::raw::Raw;
use crate::common::*;
use anyhow::{bail, ensure, Context, Result};
use tributary_cli::config::Settings;
use tributary_cli::node::{Launch, Node};
use tributary_testkit::PgServer;

/// How long a change may take to reach every broker.
const PROPAGATION: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deleting_an_acl_takes_access_away_on_every_broker() -> Result<()> {
    let pg = PgServer::start()?;
    let url = format!("{}?schema=acls", pg.url());
    let objects = tempfile::tempdir()?;
    let objects_url = format!("file://{}", objects.path().display());
    let users = tempfile::tempdir()?;
    for (name, password) in [ADMIN, ALICE] {
        add_user(users.path(), name, password, &["--metadata", &url])?;
    }
    let mut nodes = Vec::new();
    let mut dirs = Vec::new();
    for id in 1..=3 {
        let dir = tempfile::tempdir()?;
        let id = id.to_string();
        let flags = [
            "--listeners",
            "SASL_PLAINTEXT://127.0.0.1:0",
            "--sasl-mechanisms",
            "PLAIN",
            "--authorizer",
            "acl",
            "--super-users",
            "User:admin",
            "--metadata",
            &url,
            "--object-store",
            &objects_url,
            "--node-id",
            &id,
            "--data-dir",
            dir.path().to_str().context("utf-8")?,
        ];
        nodes.push(Node::start(Settings::from_flags(flags)?, Launch::default()).await?);
        dirs.push(dir);
    }
    let addrs: Vec<SocketAddr> = nodes.iter().map(|n| n.kafka_addr()).collect();
    let result = tokio::time::timeout(TEST_TIMEOUT, body(&addrs)).await;
    for node in nodes {
        node.shutdown().await;
    }
    result.context("test timed out")?
}

/// Until alice's ListOffsets on every broker answers `code`; how long
/// that took.
fn everywhere(addrs: &[SocketAddr], code: i16) -> Result<Duration> {
    let started = Instant::now();
    for &addr in addrs {
        let mut alice = Raw::login(addr, ALICE.0, ALICE.1)?;
        loop {
            let got = list_offsets_code(&mut alice, "shared")?;
            if got == code {
                break;
            }
            if started.elapsed() > PROPAGATION {
                bail!("broker {addr} still answers {got}, not {code}, after {PROPAGATION:?}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    Ok(started.elapsed())
}

async fn body(addrs: &[SocketAddr]) -> Result<()> {
    blocking(|| {
        let mut admin = Raw::login(addrs[0], ADMIN.0, ADMIN.1)?;
        create_topic_raw(&mut admin, "shared", 1)?;
        everywhere(addrs, 29).context("before the grant")?;
        let codes = create_acls(
            &mut admin,
            vec![grant(TOPIC, "shared", LITERAL, "User:alice", DESCRIBE)],
        )?;
        ensure!(codes == [0], "CreateAcls: {codes:?}");
        let took = everywhere(addrs, 0).context("after the grant")?;
        eprintln!("the grant reached all three brokers in {took:?}");
        ensure!(delete_acls_of(&mut admin, "User:alice")? == 1);
        let took = everywhere(addrs, 29).context("after the deletion")?;
        eprintln!("the deletion reached all three brokers in {took:?}");
        Ok(())
    })
}
