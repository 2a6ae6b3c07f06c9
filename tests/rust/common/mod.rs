//! Helpers shared by the end-to-end tests in `tests/rust/`: start a
//! `tributary` broker process, build rdkafka clients against it, produce and
//! consume with bounded waits, and print the broker's log when a test fails.
//!
//! Each test file includes this with `mod common;` and uses a subset of it.
#![allow(dead_code)]

pub(crate) mod raw;

use std::collections::VecDeque;
use std::future::Future;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Headers, OwnedHeaders};
use rdkafka::producer::future_producer::Delivery;
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use rdkafka::ClientContext;
use rdkafka::Message;
use std::sync::atomic::{AtomicUsize, Ordering};
pub(crate) use tributary_testkit::BrokerProcess;

/// Upper bound for one whole test body; a hang becomes a failure with logs.
pub(crate) const TEST_TIMEOUT: Duration = Duration::from_secs(300);

/// Bound for waits on a single client operation (admin call, commit, ...).
pub(crate) const OP_TIMEOUT: Duration = Duration::from_secs(30);

/// Flags every test broker gets. A short flush interval keeps tests that
/// produce one record at a time fast; it changes no semantics.
const DEFAULT_ARGS: &[&str] = &["--flush-interval-ms", "10"];

pub(crate) fn broker_bin() -> &'static str {
    env!("CARGO_BIN_EXE_tributary")
}

/// Starts the broker under test on a free port with a fresh data dir.
///
/// With `TRIBUTARY_TEST_STORE=s3` in the environment the broker stores its
/// segments on its own moto S3 server instead of the local directory, so the
/// same suite runs against a real S3-compatible server (`scripts/test.sh`
/// runs it both ways).
pub(crate) fn start_broker(extra_args: &[&str]) -> Result<BrokerProcess> {
    if std::env::var("TRIBUTARY_TEST_STORE").as_deref() == Ok("s3") {
        let s3 = tributary_testkit::S3Server::start()?;
        let url = s3.url("tributary-suite", "t");
        eprintln!("test broker stores segments on S3: {url}");
        let mut builder = BrokerProcess::builder(broker_bin())
            .args(DEFAULT_ARGS.iter().copied())
            .args(["--object-store", url.as_str(), "--create-bucket"])
            .args(extra_args.iter().copied());
        for (key, value) in tributary_testkit::S3_TEST_ENV {
            builder = builder.env(*key, *value);
        }
        let mut broker = builder.start()?;
        broker.keep_alive(s3);
        return Ok(broker);
    }
    start_broker_local(extra_args)
}

/// Starts a broker on the local-directory store whatever the environment
/// says (for tests that inspect or plant objects in the data directory).
pub(crate) fn start_broker_local(extra_args: &[&str]) -> Result<BrokerProcess> {
    BrokerProcess::builder(broker_bin())
        .args(DEFAULT_ARGS.iter().copied())
        .args(extra_args.iter().copied())
        .start()
}

/// Runs a test body under [`TEST_TIMEOUT`]; on failure or timeout prints the
/// tail of the broker log to stderr (shown by the test harness) and fails.
pub(crate) async fn run_test<'a, F>(broker: &BrokerProcess, body: F) -> Result<()>
where
    F: Future<Output = Result<()>> + 'a,
{
    let outcome = match tokio::time::timeout(TEST_TIMEOUT, body).await {
        Ok(result) => result,
        Err(_) => Err(anyhow!("test timed out after {TEST_TIMEOUT:?}")),
    };
    if outcome.is_err() {
        eprintln!(
            "----- broker log (tail) {} -----\n{}\n----- end of broker log -----",
            broker.data_dir().display(),
            broker.logs_tail(200)
        );
    }
    outcome
}

/// Base client config: bootstrap plus settings that make failures quick.
pub(crate) fn client_config(bootstrap: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap)
        .set("client.id", "tributary-e2e")
        .set("broker.address.family", "v4");
    config
}

fn apply(config: &mut ClientConfig, extra: &[(&str, &str)]) {
    for (key, value) in extra {
        config.set(*key, *value);
    }
}

pub(crate) fn producer(bootstrap: &str, extra: &[(&str, &str)]) -> Result<FutureProducer> {
    let mut config = client_config(bootstrap);
    config
        .set("message.timeout.ms", "60000")
        .set("linger.ms", "5");
    apply(&mut config, extra);
    config.create().context("create producer")
}

/// A group consumer that starts at the earliest offset and commits nothing
/// automatically unless `extra` says so.
pub(crate) fn consumer(
    bootstrap: &str,
    group: &str,
    extra: &[(&str, &str)],
) -> Result<StreamConsumer> {
    let mut config = group_config(bootstrap, group);
    apply(&mut config, extra);
    config.create().context("create consumer")
}

/// A member of a KIP-848 consumer group (`group.protocol=consumer`): the
/// session and heartbeat settings are the broker's then, and librdkafka
/// refuses them.
pub(crate) fn consumer_protocol_member(
    bootstrap: &str,
    group: &str,
    extra: &[(&str, &str)],
) -> Result<StreamConsumer> {
    let mut config = group_config(bootstrap, group);
    config.remove("session.timeout.ms");
    config.remove("heartbeat.interval.ms");
    config.set("group.protocol", "consumer");
    apply(&mut config, extra);
    config.create().context("create consumer")
}

/// What every test consumer of `group` starts from: earliest, no automatic
/// commits, a 10 s session with 1 s heartbeats.
fn group_config(bootstrap: &str, group: &str) -> ClientConfig {
    let mut config = client_config(bootstrap);
    config
        .set("group.id", group)
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .set("session.timeout.ms", "10000")
        .set("heartbeat.interval.ms", "1000");
    config
}

pub(crate) async fn create_topic(bootstrap: &str, name: &str, partitions: i32) -> Result<()> {
    let admin: AdminClient<DefaultClientContext> = client_config(bootstrap)
        .create()
        .context("create admin client")?;
    let topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
    let opts = AdminOptions::new().operation_timeout(Some(OP_TIMEOUT));
    let results = tokio::time::timeout(OP_TIMEOUT, admin.create_topics([&topic], &opts))
        .await
        .context("create_topics timed out")?
        .context("create_topics")?;
    for result in results {
        if let Err((topic, code)) = result {
            bail!("create topic {topic} failed: {code:?}");
        }
    }
    Ok(())
}

/// A record to produce.
#[derive(Clone, Debug, Default)]
pub(crate) struct Out {
    pub partition: Option<i32>,
    pub key: String,
    pub value: String,
    pub headers: Vec<(String, String)>,
    pub timestamp: Option<i64>,
}

/// A consumed record, copied out of the client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Rec {
    pub partition: i32,
    pub offset: i64,
    pub key: String,
    pub value: String,
    pub headers: Vec<(String, String)>,
    pub timestamp: Option<i64>,
}

impl Rec {
    pub(crate) fn from_message<M: Message>(msg: &M) -> Self {
        let text = |b: Option<&[u8]>| String::from_utf8_lossy(b.unwrap_or_default()).into_owned();
        let headers = msg
            .headers()
            .map(|hs| {
                hs.iter()
                    .map(|h| (h.key.to_owned(), text(h.value)))
                    .collect()
            })
            .unwrap_or_default();
        Rec {
            partition: msg.partition(),
            offset: msg.offset(),
            key: text(msg.key()),
            value: text(msg.payload()),
            headers,
            timestamp: msg.timestamp().to_millis(),
        }
    }

    pub(crate) fn header(&self, key: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

fn headers_of(out: &Out) -> OwnedHeaders {
    out.headers
        .iter()
        .fold(OwnedHeaders::new(), |hs, (key, value)| {
            hs.insert(Header {
                key,
                value: Some(value.as_str()),
            })
        })
}

async fn settle(future: DeliveryFuture, index: usize) -> Result<Delivery> {
    match future.await {
        Ok(Ok(delivery)) => Ok(delivery),
        Ok(Err((err, _msg))) => Err(anyhow!("record {index} not delivered: {err}")),
        Err(_canceled) => Err(anyhow!("record {index}: delivery future canceled")),
    }
}

/// Enqueues `records` strictly in order (so per-partition order is the
/// iteration order) with at most `MAX_IN_FLIGHT` awaiting acknowledgement,
/// and returns every delivery in input order. Any failed delivery fails.
pub(crate) async fn produce_all(
    producer: &FutureProducer,
    topic: &str,
    records: impl IntoIterator<Item = Out>,
) -> Result<Vec<Delivery>> {
    const MAX_IN_FLIGHT: usize = 20_000;
    let mut pending: VecDeque<(usize, DeliveryFuture)> = VecDeque::new();
    let mut done = Vec::new();
    for (index, out) in records.into_iter().enumerate() {
        let headers = headers_of(&out);
        loop {
            let mut record = FutureRecord::to(topic)
                .key(&out.key)
                .payload(&out.value)
                .headers(headers.clone());
            if let Some(partition) = out.partition {
                record = record.partition(partition);
            }
            if let Some(ts) = out.timestamp {
                record = record.timestamp(ts);
            }
            match producer.send_result(record) {
                Ok(future) => {
                    pending.push_back((index, future));
                    break;
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    let Some((i, future)) = pending.pop_front() else {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    };
                    done.push(settle(future, i).await?);
                }
                Err((err, _)) => bail!("enqueue record {index}: {err}"),
            }
        }
        while pending.len() > MAX_IN_FLIGHT {
            if let Some((i, future)) = pending.pop_front() {
                done.push(settle(future, i).await?);
            }
        }
    }
    while let Some((i, future)) = pending.pop_front() {
        done.push(settle(future, i).await?);
    }
    Ok(done)
}

/// Receives one record, or `None` if nothing arrives within `wait`.
/// Client-reported errors are returned as `Err` so callers can decide.
pub(crate) async fn recv<C: ConsumerContext + 'static>(
    consumer: &StreamConsumer<C>,
    wait: Duration,
) -> Result<Option<Rec>> {
    match tokio::time::timeout(wait, consumer.recv()).await {
        Err(_) => Ok(None),
        Ok(Ok(msg)) => Ok(Some(Rec::from_message(&msg))),
        Ok(Err(err)) => Err(anyhow!(err)),
    }
}

/// Receives until `n` records arrived (then returns them) or `deadline`
/// passes (then fails, saying how many came). Up to 50 transient client
/// errors are tolerated and printed.
pub(crate) async fn consume_n<C: ConsumerContext + 'static>(
    consumer: &StreamConsumer<C>,
    n: usize,
    deadline: Duration,
) -> Result<Vec<Rec>> {
    let end = Instant::now() + deadline;
    let mut out = Vec::with_capacity(n);
    let mut errors = 0;
    while out.len() < n {
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            bail!("consumed {} of {n} records within {deadline:?}", out.len());
        }
        match recv(consumer, left.min(Duration::from_secs(1))).await {
            Ok(Some(rec)) => out.push(rec),
            Ok(None) => {}
            Err(err) => {
                errors += 1;
                eprintln!("consumer error (tolerated {errors}/50): {err:#}");
                if errors > 50 {
                    bail!("too many consumer errors, last: {err:#}");
                }
            }
        }
    }
    Ok(out)
}

/// Receives whatever else arrives until the consumer has been quiet for
/// `quiet` (bounded by 10 × `quiet` overall). Used to catch duplicates after
/// the expected records were all seen.
pub(crate) async fn drain_quiet(consumer: &StreamConsumer, quiet: Duration) -> Result<Vec<Rec>> {
    let end = Instant::now() + quiet * 10;
    let mut out = Vec::new();
    while Instant::now() < end {
        match recv(consumer, quiet).await {
            Ok(Some(rec)) => out.push(rec),
            Ok(None) => break,
            Err(err) => eprintln!("consumer error while draining: {err:#}"),
        }
    }
    Ok(out)
}

/// Polls `check` every 200 ms until it returns `Some`, failing after
/// `deadline` with `what` and the last state seen.
pub(crate) async fn wait_for<T, S: std::fmt::Debug>(
    what: &str,
    deadline: Duration,
    mut check: impl FnMut() -> Result<std::result::Result<T, S>>,
) -> Result<T> {
    let end = Instant::now() + deadline;
    loop {
        let last = match check()? {
            Ok(value) => return Ok(value),
            Err(state) => state,
        };
        if Instant::now() >= end {
            bail!("timed out after {deadline:?} waiting for {what}; last state: {last:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Partitions of `topic` currently assigned to `consumer`, sorted.
pub(crate) fn assigned(consumer: &StreamConsumer, topic: &str) -> Result<Vec<i32>> {
    let tpl = consumer.assignment().context("assignment")?;
    let mut parts: Vec<i32> = tpl
        .elements_for_topic(topic)
        .iter()
        .map(|e| e.partition())
        .collect();
    parts.sort_unstable();
    Ok(parts)
}

/// Checks that, per partition, offsets are dense and strictly increasing by
/// one starting at `first(partition)`.
pub(crate) fn check_dense(records: &[Rec], first: impl Fn(i32) -> i64) -> Result<()> {
    let mut next: std::collections::HashMap<i32, i64> = Default::default();
    for rec in records {
        let expected = *next
            .entry(rec.partition)
            .or_insert_with(|| first(rec.partition));
        if rec.offset != expected {
            bail!(
                "partition {} offset {} but expected {expected} (key={} value={})",
                rec.partition,
                rec.offset,
                rec.key,
                rec.value
            );
        }
        next.insert(rec.partition, expected + 1);
    }
    Ok(())
}

/// Reads partitions `0..partitions` of `topic` from the beginning through
/// `bootstrap` and checks that exactly the acknowledged records are there,
/// each once, at the (partition, offset) it was acknowledged with, with
/// dense offsets from 0. `acked` maps record value to (partition, offset).
pub(crate) async fn audit_acked(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    acked: &std::collections::HashMap<String, (i32, i64)>,
) -> Result<()> {
    let reader = consumer(bootstrap, &format!("audit-{topic}"), &[])?;
    let mut tpl = rdkafka::TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, rdkafka::Offset::Beginning)?;
    }
    reader.assign(&tpl)?;
    let mut got = consume_n(&reader, acked.len(), Duration::from_secs(60)).await?;
    got.extend(drain_quiet(&reader, Duration::from_secs(1)).await?);
    got.sort_by_key(|r| (r.partition, r.offset));
    check_dense(&got, |_| 0)?;
    if got.len() != acked.len() {
        bail!(
            "read {} records, {} were acknowledged",
            got.len(),
            acked.len()
        );
    }
    for r in &got {
        if acked.get(&r.value) != Some(&(r.partition, r.offset)) {
            bail!(
                "{} read at {}/{} but acknowledged at {:?}",
                r.value,
                r.partition,
                r.offset,
                acked.get(&r.value)
            );
        }
    }
    Ok(())
}

/// `GET path` over HTTP/1.0 on 127.0.0.1:`port` (the admin endpoint):
/// (status, body).
pub(crate) fn http_get(port: u16, path: &str) -> Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", port))?;
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(conn, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
    let mut text = String::new();
    conn.read_to_string(&mut text)?;
    let status = text
        .split_whitespace()
        .nth(1)
        .context("status line")?
        .parse()?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    Ok((status, body.to_owned()))
}

/// A request's header and body as version `version` (no length prefix), for
/// tests that speak raw Kafka frames.
pub(crate) fn encode_request<R: kafka_protocol::protocol::Request>(
    request: &R,
    version: i16,
    correlation: i32,
    client_id: &'static str,
) -> Result<bytes::BytesMut> {
    use kafka_protocol::protocol::{Encodable, StrBytes};
    let mut frame = bytes::BytesMut::new();
    kafka_protocol::messages::RequestHeader::default()
        .with_request_api_key(R::KEY)
        .with_request_api_version(version)
        .with_correlation_id(correlation)
        .with_client_id(Some(StrBytes::from_static_str(client_id)))
        .encode(&mut frame, R::header_version(version))?;
    request.encode(&mut frame, version)?;
    Ok(frame)
}

/// Counts the rebalances one consumer goes through.
#[derive(Default)]
pub(crate) struct CountRebalances {
    assigns: AtomicUsize,
    revokes: AtomicUsize,
}

impl CountRebalances {
    /// (assignments, revocations) so far.
    pub(crate) fn counts(&self) -> (usize, usize) {
        (
            self.assigns.load(Ordering::SeqCst),
            self.revokes.load(Ordering::SeqCst),
        )
    }
}

impl ClientContext for CountRebalances {}

impl ConsumerContext for CountRebalances {
    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(_) => self.assigns.fetch_add(1, Ordering::SeqCst),
            Rebalance::Revoke(_) => self.revokes.fetch_add(1, Ordering::SeqCst),
            Rebalance::Error(_) => 0,
        };
    }
}

/// A group consumer (earliest, manual commits) that counts its rebalances,
/// with a session long enough (45 s) to outlast a broker restart or a
/// coordinator move.
pub(crate) fn counting_consumer(
    bootstrap: &str,
    group: &str,
) -> Result<StreamConsumer<CountRebalances>> {
    let mut config = group_config(bootstrap, group);
    config
        .set("session.timeout.ms", "45000")
        .set("heartbeat.interval.ms", "500");
    config
        .create_with_context(CountRebalances::default())
        .context("create consumer")
}

/// Ten records for each of `partitions` partitions, valued
/// `{phase}:{partition}:{i}` and keyed by partition.
pub(crate) fn ten_per_partition(phase: &'static str, partitions: i32) -> impl Iterator<Item = Out> {
    (0..partitions).flat_map(move |p| {
        (0..10).map(move |i| Out {
            partition: Some(p),
            key: format!("p{p}"),
            value: format!("{phase}:{p}:{i}"),
            ..Out::default()
        })
    })
}

/// Fails if `consumer` was revoked or reassigned since its first
/// assignment, after a few heartbeats' worth of waiting (a rebalance
/// started by the coordinator shows up within them).
pub(crate) async fn ensure_no_rebalance(
    consumer: &StreamConsumer<CountRebalances>,
    when: &str,
) -> Result<()> {
    tokio::time::sleep(Duration::from_secs(3)).await;
    let _ = tokio::time::timeout(Duration::from_millis(500), consumer.recv()).await;
    let (assigns, revokes) = consumer.context().counts();
    if (assigns, revokes) != (1, 0) {
        bail!("the group rebalanced {when}: {assigns} assigns, {revokes} revokes");
    }
    Ok(())
}

/// A v2 record batch, uncompressed, one record per value (keys `key-{i}`,
/// timestamps now), always exactly one batch.
pub(crate) fn record_batch<V: AsRef<[u8]>>(values: &[V]) -> Result<bytes::Bytes> {
    use kafka_protocol::records::{
        Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
    };
    let now = i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_millis(),
    )?;
    let records: Vec<Record> = values
        .iter()
        .enumerate()
        .map(|(i, value)| Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: -1,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            offset: i as i64,
            // kafka-protocol starts a new batch wherever offset - sequence
            // changes; this keeps one batch with base sequence -1.
            sequence: i as i32 - 1,
            timestamp: now,
            key: Some(bytes::Bytes::from(format!("key-{i}"))),
            value: Some(bytes::Bytes::copy_from_slice(value.as_ref())),
            headers: Default::default(),
        })
        .collect();
    let mut buf = bytes::BytesMut::new();
    RecordBatchEncoder::encode(
        &mut buf,
        &records,
        &RecordEncodeOptions {
            version: 2,
            compression: Compression::None,
        },
    )
    .context("encode record batch")?;
    let length = i32::from_be_bytes(buf[8..12].try_into()?);
    if usize::try_from(length)? + 12 != buf.len() {
        bail!(
            "{} values were encoded as more than one batch",
            values.len()
        );
    }
    Ok(buf.freeze())
}

/// Produce `n` records to topic `name` (auto-created) through `config` and
/// read them back, densely, in group `name` (the TLS and SASL tests run it
/// over each listener and mechanism).
pub(crate) async fn round_trip(config: &ClientConfig, name: &str, n: i64) -> Result<()> {
    let mut producer_config = config.clone();
    producer_config.set("acks", "all").set("linger.ms", "5");
    let producer: FutureProducer = producer_config.create().context("producer")?;
    let out = (0..n).map(|i| Out {
        partition: Some(0),
        key: format!("k{i}"),
        value: format!("{name}-{i}"),
        ..Out::default()
    });
    produce_all(&producer, name, out).await?;
    let mut consumer_config = config.clone();
    consumer_config
        .set("group.id", name)
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false");
    let consumer: StreamConsumer = consumer_config.create().context("consumer")?;
    consumer.subscribe(&[name]).context("subscribe")?;
    let got = consume_n(&consumer, n as usize, Duration::from_secs(60)).await?;
    check_dense(&got, |_| 0)
}

/// `tributary users add` with the password in the environment.
pub(crate) fn add_user(
    dir: &std::path::Path,
    name: &str,
    password: &str,
    extra: &[&str],
) -> Result<()> {
    let out = std::process::Command::new(broker_bin())
        .args(["users", "add", name, "--data-dir"])
        .arg(dir)
        .args(extra)
        .env("TRIBUTARY_USER_PASSWORD", password)
        .output()
        .context("run tributary users add")?;
    ensure!(
        out.status.success(),
        "users add failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// librdkafka over SASL_PLAINTEXT as `user`.
pub(crate) fn sasl_config(
    bootstrap: &str,
    mechanism: &str,
    user: &str,
    password: &str,
) -> ClientConfig {
    let mut config = client_config(bootstrap);
    config
        .set("security.protocol", "sasl_plaintext")
        .set("sasl.mechanisms", mechanism)
        .set("sasl.username", user)
        .set("sasl.password", password);
    config
}
