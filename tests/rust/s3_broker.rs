//! The broker on an S3 object store (a local `moto_server`, see
//! `tributary_testkit::S3Server`): `tributary init --create-bucket` prepares the
//! bucket; records round-trip through rdkafka in order with a consumer group;
//! segment objects land in the bucket; committed offsets and every
//! acknowledged record survive a SIGKILL + restart on the same data dir (the
//! SQLite metadata lives there). And misconfiguration fails fast with one line
//! naming the bucket and the cause: closed endpoint port, missing bucket,
//! rejected credentials.
//!
//! moto_server comes from the venv scripts/test.sh builds (`TRIBUTARY_VENV`);
//! without it these tests fail, saying how to get it.

use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;
use anyhow::{bail, ensure, Context, Result};
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use tributary_testkit::{S3Server, S3_TEST_ENV};

const TOPIC: &str = "s3-orders";
const PARTITIONS: i32 = 3;
/// Divisible by PARTITIONS, so every partition gets FIRST / PARTITIONS.
const FIRST: usize = 21_000;
const SECOND: usize = 3_000;
const GROUP: &str = "s3-group";
/// Every misconfiguration must be reported within this.
const FAIL_FAST: Duration = Duration::from_secs(15);

/// Broker flags for S3: a flush interval between the test default (10 ms,
/// too many tiny PUTs on moto) and the S3 default (250 ms, slow tests).
fn s3_broker(url: &str, data_dir: &Path) -> tributary_testkit::BrokerBuilder {
    let mut builder = BrokerProcess::builder(broker_bin())
        .data_dir(data_dir)
        .args(["--object-store", url, "--flush-interval-ms", "50"]);
    for (key, value) in S3_TEST_ENV {
        builder = builder.env(*key, *value);
    }
    builder
}

/// Output of one `tributary` run that must end by itself.
struct Run {
    status: ExitStatus,
    stderr: String,
    elapsed: Duration,
}

impl Run {
    fn last_line(&self) -> &str {
        self.stderr.trim_end().lines().last().unwrap_or_default()
    }
}

/// Runs `tributary <args>` with the test credentials (plus `envs`) and fails
/// if it is still running after [`FAIL_FAST`] (then it is killed).
fn run_cli(args: &[&str], envs: &[(&str, &str)]) -> Result<Run> {
    let dir = tempfile::tempdir()?;
    let err_path = dir.path().join("stderr");
    let err_file = std::fs::File::create(&err_path)?;
    let mut cmd = Command::new(broker_bin());
    cmd.args(args)
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(err_file)
        .env("RUST_LOG", "info");
    for (key, value) in S3_TEST_ENV.iter().chain(envs) {
        cmd.env(key, value);
    }
    let start = Instant::now();
    let mut child = cmd.spawn().context("spawn tributary")?;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if start.elapsed() > FAIL_FAST {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "tributary {args:?} still running after {FAIL_FAST:?}; stderr:\n{}",
                std::fs::read_to_string(&err_path).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Ok(Run {
        status,
        stderr: std::fs::read_to_string(&err_path)?,
        elapsed: start.elapsed(),
    })
}

/// Asserts a run failed with exit code 1 and a last stderr line naming the
/// bucket and containing every one of `causes`.
fn expect_one_line_failure(run: &Run, bucket: &str, causes: &[&str]) -> Result<()> {
    let line = run.last_line();
    eprintln!("({:?}) {line}", run.elapsed);
    ensure!(
        run.status.code() == Some(1),
        "expected exit code 1, got {}; stderr:\n{}",
        run.status,
        run.stderr
    );
    ensure!(
        line.starts_with("error: ") && line.contains(&format!("bucket={bucket}")),
        "last stderr line does not name bucket {bucket}: {line:?}\n{}",
        run.stderr
    );
    for cause in causes {
        ensure!(line.contains(cause), "last line lacks {cause:?}: {line:?}");
    }
    ensure!(
        !run.stderr.contains("panicked"),
        "panic in stderr:\n{}",
        run.stderr
    );
    Ok(())
}

fn outs(phase: &str, n: usize) -> impl Iterator<Item = Out> + '_ {
    (0..n).map(move |i| Out {
        partition: Some((i % PARTITIONS as usize) as i32),
        key: format!("k{i}"),
        value: format!(
            "{phase}:{}:{}",
            i % PARTITIONS as usize,
            i / PARTITIONS as usize
        ),
        ..Out::default()
    })
}

/// Per partition, values are `phase:p:0..` in offset order.
fn check_values(records: &[Rec], phase: &str, first_seq: usize) -> Result<()> {
    let mut next: HashMap<i32, usize> = HashMap::new();
    for rec in records {
        let seq = next.entry(rec.partition).or_insert(first_seq);
        let expected = format!("{phase}:{}:{seq}", rec.partition);
        ensure!(
            rec.value == expected,
            "partition {} offset {}: {:?}, expected {expected:?}",
            rec.partition,
            rec.offset,
            rec.value
        );
        *seq += 1;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn s3_round_trip_and_sigkill_restart() -> Result<()> {
    let s3 = S3Server::start()?;
    let url = s3.url("tributary-e2e", "cluster-a");

    // A missing bucket is created by init, and init is idempotent.
    let run = run_cli(&["init", "--object-store", &url, "--create-bucket"], &[])?;
    ensure!(run.status.success(), "init failed:\n{}", run.stderr);
    ensure!(run.stderr.contains("bucket created"), "{}", run.stderr);
    let run = run_cli(&["init", "--object-store", &url], &[])?;
    ensure!(run.status.success(), "second init failed:\n{}", run.stderr);
    // The conditional-write probe cleans up after itself.
    ensure!(s3.list_keys("tributary-e2e", "")?.is_empty());

    let data = tempfile::tempdir()?;
    let mut broker = s3_broker(&url, data.path()).start()?;
    let outcome = {
        let broker_ref = &mut broker;
        let s3_ref = &s3;
        tokio::time::timeout(TEST_TIMEOUT, body(broker_ref, s3_ref))
            .await
            .unwrap_or_else(|_| Err(anyhow::anyhow!("timed out")))
    };
    if outcome.is_err() {
        eprintln!("----- moto log (tail) -----\n{}", tail(&s3.logs(), 40));
    }
    run_test(&broker, async { outcome }).await
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

async fn body(broker: &mut BrokerProcess, s3: &S3Server) -> Result<()> {
    let bootstrap = broker.bootstrap();
    create_topic(&bootstrap, TOPIC, PARTITIONS).await?;
    let writer = producer(&bootstrap, &[("acks", "all")])?;
    let acked = produce_all(&writer, TOPIC, outs("first", FIRST)).await?;
    ensure!(acked.len() == FIRST);
    drop(writer);

    // Segment objects are in the bucket, under the URL's prefix.
    let keys = s3.list_keys("tributary-e2e", "cluster-a/")?;
    let segments = keys
        .iter()
        .filter(|k| k.starts_with("cluster-a/segments/"))
        .count();
    eprintln!(
        "{} objects, {segments} segments after {FIRST} records",
        keys.len()
    );
    ensure!(segments > 0, "no segment objects in the bucket: {keys:?}");

    // A group reads everything in order, then commits.
    {
        let reader = consumer(&bootstrap, GROUP, &[])?;
        reader.subscribe(&[TOPIC]).context("subscribe")?;
        let records = consume_n(&reader, FIRST, Duration::from_secs(120)).await?;
        check_dense(&records, |_| 0)?;
        check_values(&records, "first", 0)?;
        tokio::task::block_in_place(|| reader.commit_consumer_state(CommitMode::Sync))
            .context("commit")?;
        let committed = tokio::task::block_in_place(|| reader.committed(OP_TIMEOUT))
            .context("read back committed offsets")?;
        check_committed(&committed, (FIRST / PARTITIONS as usize) as i64)?;
        reader.unsubscribe();
    }

    // More acknowledged records, then a crash.
    let writer = producer(&bootstrap, &[("acks", "all")])?;
    let acked = produce_all(&writer, TOPIC, outs("second", SECOND)).await?;
    ensure!(acked.len() == SECOND);
    drop(writer);
    tokio::task::block_in_place(|| broker.kill_9())?;
    tokio::task::block_in_place(|| broker.restart())?;
    let bootstrap = broker.bootstrap();

    // The group resumes at its committed offsets: exactly the second phase,
    // each record once.
    let per_partition = (FIRST / PARTITIONS as usize) as i64;
    let reader = consumer(&bootstrap, GROUP, &[])?;
    reader
        .subscribe(&[TOPIC])
        .context("subscribe after restart")?;
    let mut records = consume_n(&reader, SECOND, Duration::from_secs(120)).await?;
    records.extend(drain_quiet(&reader, Duration::from_secs(3)).await?);
    ensure!(
        records.len() == SECOND,
        "read {} records after restart, expected {SECOND}",
        records.len()
    );
    check_dense(&records, |_| per_partition)?;
    check_values(&records, "second", 0)?;

    // And from the beginning, every acknowledged record is there once.
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition_offset(TOPIC, p, Offset::Beginning)
            .context("assign")?;
    }
    let audit = consumer(&bootstrap, "s3-audit", &[])?;
    audit.assign(&tpl).context("assign")?;
    let total = FIRST + SECOND;
    let mut all = consume_n(&audit, total, Duration::from_secs(120)).await?;
    all.extend(drain_quiet(&audit, Duration::from_secs(3)).await?);
    ensure!(all.len() == total, "read {} of {total}", all.len());
    check_dense(&all, |_| 0)?;
    let (first, second): (Vec<Rec>, Vec<Rec>) =
        all.into_iter().partition(|r| r.value.starts_with("first:"));
    check_values(&first, "first", 0)?;
    check_values(&second, "second", 0)?;
    Ok(())
}

fn check_committed(tpl: &TopicPartitionList, expected: i64) -> Result<()> {
    for p in 0..PARTITIONS {
        let elem = tpl
            .find_partition(TOPIC, p)
            .with_context(|| format!("no committed offset for partition {p}"))?;
        ensure!(
            elem.offset() == Offset::Offset(expected),
            "partition {p} committed {:?}, expected {expected}",
            elem.offset()
        );
    }
    Ok(())
}

#[test]
fn closed_endpoint_port_fails_fast() -> Result<()> {
    let port = tributary_testkit::free_port()?;
    let url =
        format!("s3://nowhere/p?endpoint=http://127.0.0.1:{port}&path_style=true&region=us-east-1");
    let run = run_cli(&["init", "--object-store", &url, "--create-bucket"], &[])?;
    expect_one_line_failure(
        &run,
        "nowhere",
        &["endpoint unreachable", &format!("127.0.0.1:{port}")],
    )?;
    let data = tempfile::tempdir()?;
    let data_dir = data.path().display().to_string();
    let run = run_cli(
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            &data_dir,
            "--object-store",
            &url,
        ],
        &[],
    )?;
    expect_one_line_failure(&run, "nowhere", &["endpoint unreachable", "refused"])
}

#[test]
fn missing_bucket_fails_fast_unless_created() -> Result<()> {
    let s3 = S3Server::start()?;
    let url = s3.url("not-there", "x");
    let run = run_cli(&["init", "--object-store", &url], &[])?;
    expect_one_line_failure(
        &run,
        "not-there",
        &["bucket does not exist", &s3.endpoint()],
    )?;
    let data = tempfile::tempdir()?;
    let data_dir = data.path().display().to_string();
    let serve = [
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        &data_dir,
        "--object-store",
        &url,
    ];
    let run = run_cli(&serve, &[])?;
    expect_one_line_failure(&run, "not-there", &["bucket does not exist"])?;
    // The env var spelling of the flag works too, and nothing was created.
    let run = run_cli(&["init"], &[("TRIBUTARY_OBJECT_STORE", url.as_str())])?;
    expect_one_line_failure(&run, "not-there", &["bucket does not exist"])?;

    // `serve --create-bucket` creates it and starts.
    let mut broker = s3_broker(&url, data.path())
        .arg("--create-bucket")
        .ready_timeout(FAIL_FAST)
        .start()?;
    ensure!(broker.is_running());
    ensure!(
        broker.logs().contains("bucket created"),
        "{}",
        broker.logs_tail(20)
    );
    broker.kill_9()?;
    Ok(())
}

#[test]
fn rejected_credentials_fail_fast() -> Result<()> {
    // With IAM auth on, moto accepts only keys made through its IAM API, so
    // the test key `test` is unknown: InvalidAccessKeyId (403).
    let s3 = S3Server::start_with_env(&[("INITIAL_NO_AUTH_ACTION_COUNT", "0")])?;
    let url = s3.url("locked", "x");
    let run = run_cli(&["init", "--object-store", &url, "--create-bucket"], &[])?;
    expect_one_line_failure(
        &run,
        "locked",
        &["credentials rejected", "InvalidAccessKeyId", &s3.endpoint()],
    )?;
    let data = tempfile::tempdir()?;
    let data_dir = data.path().display().to_string();
    let run = run_cli(
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            &data_dir,
            "--object-store",
            &url,
        ],
        &[],
    )?;
    expect_one_line_failure(&run, "locked", &["credentials rejected"])
}

#[test]
fn silent_endpoint_times_out() -> Result<()> {
    // Accepts TCP connections (into the backlog) and never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0")?;
    let port = silent.local_addr()?.port();
    let url =
        format!("s3://quiet/p?endpoint=http://127.0.0.1:{port}&path_style=true&region=us-east-1");
    let run = run_cli(&["init", "--object-store", &url], &[])?;
    expect_one_line_failure(&run, "quiet", &["endpoint unreachable"])?;
    drop(silent);
    Ok(())
}

/// Defect 13: the endpoint given the standard AWS way (`AWS_ENDPOINT_URL`,
/// `AWS_REGION`, a plain `s3://bucket/prefix`) passed the start-up check
/// (the AWS SDK reads the variable) while every segment PUT failed
/// (`HTTP error: builder error`) and producers hung. The data path and the
/// check now resolve the same settings, and the check makes a round trip
/// through the data path's own client.
#[tokio::test(flavor = "multi_thread")]
async fn endpoint_from_aws_environment_serves_produce_and_fetch() -> Result<()> {
    let s3 = S3Server::start()?;
    s3.create_bucket("env-bucket")?;
    let dir = tempfile::tempdir()?;
    let mut builder = BrokerProcess::builder(broker_bin())
        .data_dir(dir.path())
        .args([
            "--object-store",
            "s3://env-bucket/pre",
            "--flush-interval-ms",
            "50",
        ]);
    for (key, value) in S3_TEST_ENV {
        builder = builder.env(*key, *value);
    }
    let broker = builder.env("AWS_ENDPOINT_URL", s3.endpoint()).start()?;
    run_test(&broker, async {
        let bootstrap = broker.bootstrap();
        create_topic(&bootstrap, "env", PARTITIONS).await?;
        let p = producer(
            &bootstrap,
            &[("acks", "all"), ("message.timeout.ms", "20000")],
        )?;
        produce_all(&p, "env", outs("env", 30)).await?;
        let c = consumer(&bootstrap, "env-group", &[])?;
        c.subscribe(&["env"])?;
        let got = consume_n(&c, 30, Duration::from_secs(60)).await?;
        check_values(&got, "env", 0)?;
        let keys = s3.list_keys("env-bucket", "pre/segments/")?;
        ensure!(
            keys.iter().any(|k| k.starts_with("pre/segments/")),
            "no segment object under the prefix: {keys:?}"
        );
        Ok(())
    })
    .await
}

/// Defects 14 and 20: a bucket that disappears under a running broker is a
/// permanent error. The writer retried it for minutes while producers got
/// no answer and `/readyz` stayed green (its HEAD probe reads a 404 as
/// "fine"). Now the upload fails at once with one clear log line, `/readyz`
/// turns red naming the write path, and it turns green again once a probe
/// write succeeds.
#[tokio::test(flavor = "multi_thread")]
async fn vanished_bucket_fails_fast_and_turns_readyz_red() -> Result<()> {
    let s3 = S3Server::start()?;
    s3.create_bucket("vanishing")?;
    let dir = tempfile::tempdir()?;
    let admin = tributary_testkit::free_port()?;
    let admin_arg = format!("127.0.0.1:{admin}");
    let url = s3.url("vanishing", "p");
    let broker = s3_broker(&url, dir.path())
        .args(["--metrics-listen", admin_arg.as_str()])
        .start()?;
    run_test(&broker, async {
        let bootstrap = broker.bootstrap();
        create_topic(&bootstrap, "vanish", 1).await?;
        ensure!(http_get(admin, "/readyz")?.0 == 200);
        s3.delete_bucket("vanishing")?;
        let p = producer(
            &bootstrap,
            &[("acks", "all"), ("message.timeout.ms", "5000")],
        )?;
        let sent = produce_all(
            &p,
            "vanish",
            [Out {
                key: "k".into(),
                value: "v".into(),
                ..Out::default()
            }],
        )
        .await;
        ensure!(sent.is_err(), "a produce into a deleted bucket succeeded");
        let why = wait_for("/readyz to turn red", Duration::from_secs(20), || {
            let (status, body) = http_get(admin, "/readyz")?;
            Ok(if status == 503 {
                Ok(body)
            } else {
                Err((status, body))
            })
        })
        .await?;
        ensure!(
            why.contains("write path") && why.contains("upload"),
            "{why}"
        );
        ensure!(
            broker.logs().contains("segment upload failed permanently"),
            "no clear log line for the permanent failure"
        );
        s3.create_bucket("vanishing")?;
        wait_for("/readyz to recover", Duration::from_secs(30), || {
            let (status, body) = http_get(admin, "/readyz")?;
            Ok(if status == 200 {
                Ok(())
            } else {
                Err((status, body))
            })
        })
        .await?;
        let p = producer(&bootstrap, &[("acks", "all")])?;
        produce_all(
            &p,
            "vanish",
            [Out {
                key: "k".into(),
                value: "back".into(),
                ..Out::default()
            }],
        )
        .await?;
        Ok(())
    })
    .await
}
