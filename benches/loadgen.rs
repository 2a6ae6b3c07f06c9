//! Load generator for Tributary (or any Kafka-compatible broker), using
//! librdkafka through the `rdkafka` crate.
//!
//! Three phases, each optional (`--phases`):
//! 1. `produce`: `--producers` clients send `--records` records of
//!    `--record-size` bytes (or for `--duration` seconds) as fast as the
//!    broker acknowledges them: throughput at saturation.
//! 2. `consume`: `--consumers` clients read the topic from the beginning
//!    (partitions split between them): catch-up read throughput.
//! 3. `latency`: the producers send `--rate` records/s for `--latency-secs`
//!    while the consumers tail the topic: produce-ack latency (send to
//!    acknowledgement) and end-to-end latency (send to receipt by a
//!    consumer; the send time travels in the first 8 bytes of each value).
//!
//! Latencies go into HDR histograms (p50/p90/p99/p99.9/max). The whole run
//! is also kept as a timeline (bytes acknowledged and consumed, latency
//! percentiles, in 250 ms slots) for charts: `--json FILE` writes all of it, and
//! `scripts/bench-report.py` turns one or more such files into a Markdown
//! table of medians and an SVG chart.
//!
//! With `--metrics-url` (a broker's Prometheus endpoint, once per broker)
//! the object-store PUTs and GETs per GiB, the read-cache hit ratio and the
//! brokers' peak RSS are read from the brokers. With `--objects-dir` (a
//! file:// store) the segment objects written are also counted directly.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use clap::Parser;
use hdrhistogram::Histogram;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use serde_json::{json, Value};

#[derive(Parser, Debug, Clone)]
#[command(about = "Produce/consume throughput and latency against a Kafka-compatible broker")]
struct Args {
    #[arg(long, default_value = "127.0.0.1:9092")]
    bootstrap: String,
    /// Topic to use (created with --partitions if missing).
    #[arg(long, default_value = "bench")]
    topic: String,
    #[arg(long, default_value_t = 6)]
    partitions: i32,
    /// Records in the produce phase (ignored with --duration).
    #[arg(long, default_value_t = 500_000)]
    records: u64,
    /// Run the produce phase for this many seconds instead of --records.
    #[arg(long)]
    duration: Option<f64>,
    /// Value size in bytes (at least 8: the send time is in the first 8).
    #[arg(long, default_value_t = 1024)]
    record_size: usize,
    /// Producer clients (each on its own thread and connections).
    #[arg(long, default_value_t = 1)]
    producers: usize,
    /// Consumer clients; the partitions are split between them.
    #[arg(long, default_value_t = 1)]
    consumers: usize,
    /// Producer `acks`: all, 1 or 0.
    #[arg(long, default_value = "all")]
    acks: String,
    /// Producer `compression.type`: none, gzip, snappy, lz4, zstd.
    #[arg(long, default_value = "none")]
    compression: String,
    /// Records per second in the latency phase (all producers together).
    #[arg(long, default_value_t = 20_000)]
    rate: u64,
    /// Length of the latency phase.
    #[arg(long, default_value_t = 20)]
    latency_secs: u64,
    /// Which phases to run, comma-separated.
    #[arg(long, default_value = "produce,consume,latency", value_delimiter = ',')]
    phases: Vec<String>,
    /// Extra librdkafka settings of every client (producers, consumers,
    /// admin), `key=value` (repeatable): e.g. `security.protocol=SASL_SSL`.
    #[arg(long = "client-config")]
    client_config: Vec<String>,
    /// Produce in transactions of this many records per producer (a
    /// `transactional.id` each; commit latency is measured); 0: no
    /// transactions.
    #[arg(long, default_value_t = 0)]
    transaction_records: u64,
    /// Extra librdkafka producer settings, `key=value` (repeatable).
    #[arg(long = "producer-config")]
    producer_config: Vec<String>,
    /// Extra librdkafka consumer settings, `key=value` (repeatable).
    #[arg(long = "consumer-config")]
    consumer_config: Vec<String>,
    /// Directory holding the broker's segment objects (file:// store).
    #[arg(long)]
    objects_dir: Option<PathBuf>,
    /// A broker's Prometheus endpoint (e.g. http://127.0.0.1:9464/metrics);
    /// give it once per broker, the counters are summed.
    #[arg(long)]
    metrics_url: Vec<String>,
    /// Write the results, the settings and the per-second timeline here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// A name for this run in the JSON (e.g. "file://, run 2").
    #[arg(long, default_value = "")]
    label: String,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Microsecond latency histogram, 1 µs to 10 min, `sigfig` significant
/// digits.
fn histogram(sigfig: u8) -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, sigfig).expect("constant bounds within limits")
}

fn record(h: &mut Histogram<u64>, us: u64) {
    h.saturating_record(us.max(1));
}

/// p50/p90/p99/p99.9/max in milliseconds.
fn percentiles(h: &Histogram<u64>) -> Value {
    let ms = |us: u64| (us as f64 / 1000.0 * 100.0).round() / 100.0;
    if h.is_empty() {
        return Value::Null;
    }
    json!({
        "count": h.len(),
        "p50": ms(h.value_at_quantile(0.50)),
        "p90": ms(h.value_at_quantile(0.90)),
        "p99": ms(h.value_at_quantile(0.99)),
        "p99_9": ms(h.value_at_quantile(0.999)),
        "max": ms(h.max()),
    })
}

/// Width of one timeline slot.
const TICK: Duration = Duration::from_millis(250);

/// One [`TICK`] of the run.
struct Slot {
    acked_bytes: u64,
    consumed_bytes: u64,
    ack: Histogram<u64>,
    e2e: Histogram<u64>,
    /// Resident memory of the largest broker, sampled once a second.
    broker_rss: Option<f64>,
}

/// What happened in each [`TICK`] since the run started.
struct Timeline {
    start: Instant,
    seconds: Mutex<Vec<Slot>>,
}

impl Timeline {
    fn new() -> Self {
        Self {
            start: Instant::now(),
            seconds: Mutex::new(Vec::new()),
        }
    }

    fn with_second(&self, at: Instant, f: impl FnOnce(&mut Slot)) {
        let idx =
            (at.saturating_duration_since(self.start).as_micros() / TICK.as_micros()) as usize;
        let mut seconds = lock(&self.seconds);
        while seconds.len() <= idx {
            seconds.push(Slot {
                acked_bytes: 0,
                consumed_bytes: 0,
                ack: histogram(2),
                e2e: histogram(2),
                broker_rss: None,
            });
        }
        f(&mut seconds[idx]);
    }

    fn to_json(&self, phases: &[(String, f64, f64)]) -> Value {
        let seconds = lock(&self.seconds);
        let rows: Vec<Value> = seconds
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let q = |h: &Histogram<u64>, q: f64| {
                    (!h.is_empty()).then(|| h.value_at_quantile(q) as f64 / 1000.0)
                };
                let t = i as f64 * TICK.as_secs_f64();
                let phase = phases
                    .iter()
                    .find(|(_, from, to)| t + TICK.as_secs_f64() > *from && t < *to)
                    .map(|(name, _, _)| name.as_str());
                let mb_s = |bytes: u64| bytes as f64 / 1e6 / TICK.as_secs_f64();
                json!({
                    "t": t,
                    "width": TICK.as_secs_f64(),
                    "phase": phase,
                    "produce_mb_s": mb_s(s.acked_bytes),
                    "consume_mb_s": mb_s(s.consumed_bytes),
                    "ack_p50_ms": q(&s.ack, 0.5),
                    "ack_p99_ms": q(&s.ack, 0.99),
                    "e2e_p50_ms": q(&s.e2e, 0.5),
                    "e2e_p99_ms": q(&s.e2e, 0.99),
                    "broker_rss_mib": s.broker_rss.map(|b| (b / (1 << 20) as f64).round()),
                })
            })
            .collect();
        Value::Array(rows)
    }
}

/// Counters and latencies of one phase.
struct PhaseStats {
    acked: AtomicU64,
    acked_bytes: AtomicU64,
    errors: AtomicU64,
    first_error: Mutex<Option<String>>,
    ack: Mutex<Histogram<u64>>,
    consumed: AtomicU64,
    consumed_bytes: AtomicU64,
    e2e: Mutex<Histogram<u64>>,
    /// Transaction commit latency (`--transaction-records`).
    commit: Mutex<Histogram<u64>>,
    timeline: Arc<Timeline>,
}

impl PhaseStats {
    fn new(timeline: Arc<Timeline>) -> Arc<Self> {
        Arc::new(Self {
            acked: AtomicU64::new(0),
            acked_bytes: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            first_error: Mutex::new(None),
            ack: Mutex::new(histogram(3)),
            consumed: AtomicU64::new(0),
            consumed_bytes: AtomicU64::new(0),
            e2e: Mutex::new(histogram(3)),
            commit: Mutex::new(histogram(3)),
            timeline,
        })
    }

    fn error(&self, e: String) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        lock(&self.first_error).get_or_insert(e);
    }
}

struct DeliveryContext(Arc<PhaseStats>);

impl ClientContext for DeliveryContext {}

impl ProducerContext for DeliveryContext {
    /// The send time (`now_nanos`), as stamped into the value: no
    /// allocation per record.
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, sent: Self::DeliveryOpaque) {
        let stats = &self.0;
        match result {
            Ok(m) => {
                let now = Instant::now();
                let us = now_nanos().saturating_sub(sent as u64) / 1000;
                let bytes = m.payload().map_or(0, |p| p.len() as u64);
                stats.acked.fetch_add(1, Ordering::Relaxed);
                stats.acked_bytes.fetch_add(bytes, Ordering::Relaxed);
                record(&mut lock(&stats.ack), us);
                stats.timeline.with_second(now, |s| {
                    s.acked_bytes += bytes;
                    record(&mut s.ack, us);
                });
            }
            Err((e, _)) => stats.error(e.to_string()),
        }
    }
}

fn key_value(setting: &str) -> Result<(&str, &str)> {
    setting
        .split_once('=')
        .with_context(|| format!("expected key=value, got {setting:?}"))
}

fn producer(
    args: &Args,
    stats: Arc<PhaseStats>,
    index: u64,
) -> Result<ThreadedProducer<DeliveryContext>> {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &args.bootstrap)
        .set("acks", &args.acks)
        .set("compression.type", &args.compression);
    if args.transaction_records > 0 {
        let id = format!("loadgen-{}-{index}", std::process::id());
        config.set("transactional.id", id);
    }
    for setting in args.client_config.iter().chain(&args.producer_config) {
        let (k, v) = key_value(setting)?;
        config.set(k, v);
    }
    config
        .create_with_context(DeliveryContext(stats))
        .context("create producer")
}

fn consumer(args: &Args, group: &str) -> Result<BaseConsumer> {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &args.bootstrap)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest");
    for setting in args.client_config.iter().chain(&args.consumer_config) {
        let (k, v) = key_value(setting)?;
        config.set(k, v);
    }
    config.create().context("create consumer")
}

fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// Send one record (its value stamped with the send time), waiting while
/// the client's queue is full.
fn send(
    p: &ThreadedProducer<DeliveryContext>,
    topic: &str,
    key: &str,
    payload: &mut [u8],
) -> Result<()> {
    let sent = now_nanos();
    payload[..8].copy_from_slice(&sent.to_be_bytes());
    let mut record = BaseRecord::with_opaque_to(topic, sent as usize)
        .key(key)
        .payload(&*payload);
    loop {
        match p.send(record) {
            Ok(()) => return Ok(()),
            Err((e, r)) if e.rdkafka_error_code() == Some(RDKafkaErrorCode::QueueFull) => {
                record = r;
                std::thread::sleep(Duration::from_millis(1));
            }
            Err((e, _)) => bail!("produce failed: {e}"),
        }
    }
}

/// How the producers pace themselves.
#[derive(Clone, Copy)]
enum Pace {
    /// As fast as possible: `records` in all, or until `until`.
    Max {
        records: u64,
        until: Option<Instant>,
    },
    /// `rate` records/s in all, until `until`.
    Rate { rate: u64, until: Instant },
}

/// Run the producers; returns how long they took until every record was
/// acknowledged (or failed).
fn produce(args: &Args, stats: &Arc<PhaseStats>, pace: Pace) -> Result<f64> {
    let start = Instant::now();
    let n = args.producers.max(1) as u64;
    let threads: Vec<_> = (0..n)
        .map(|i| {
            let args = args.clone();
            let stats = stats.clone();
            std::thread::spawn(move || -> Result<u64> {
                let p = producer(&args, stats.clone(), i)?;
                let per_txn = args.transaction_records;
                if per_txn > 0 {
                    p.init_transactions(Duration::from_secs(30))
                        .context("init transactions")?;
                    p.begin_transaction().context("begin transaction")?;
                }
                // Commit the open transaction (which waits for its records)
                // and time it.
                let commit = |p: &ThreadedProducer<DeliveryContext>| -> Result<()> {
                    let t = Instant::now();
                    p.commit_transaction(Duration::from_secs(300))
                        .context("commit transaction")?;
                    let us = u64::try_from(t.elapsed().as_micros()).unwrap_or(u64::MAX);
                    let _ = lock(&stats.commit).record(us.max(1));
                    Ok(())
                };
                let mut payload = vec![b'x'; args.record_size.max(8)];
                // Keys made once: no allocation per record on the client.
                let keys: Vec<String> = (0..1024).map(|k: u64| k.to_string()).collect();
                let mut sent = 0u64;
                let interval = match pace {
                    Pace::Rate { rate, .. } => {
                        Duration::from_secs_f64(n as f64 / rate.max(1) as f64)
                    }
                    Pace::Max { .. } => Duration::ZERO,
                };
                let mut next = Instant::now();
                loop {
                    let more = match pace {
                        Pace::Max { records, until } => until
                            .map_or(sent < records / n + u64::from(i < records % n), |u| {
                                Instant::now() < u
                            }),
                        Pace::Rate { until, .. } => Instant::now() < until,
                    };
                    if !more {
                        break;
                    }
                    let key = &keys[((sent * n + i) % 1024) as usize];
                    send(&p, &args.topic, key, &mut payload)?;
                    sent += 1;
                    if per_txn > 0 && sent.is_multiple_of(per_txn) {
                        commit(&p)?;
                        p.begin_transaction().context("begin transaction")?;
                    }
                    if !interval.is_zero() {
                        next += interval;
                        if let Some(wait) = next.checked_duration_since(Instant::now()) {
                            std::thread::sleep(wait);
                        }
                    }
                }
                if per_txn > 0 {
                    commit(&p)?;
                } else {
                    p.flush(Duration::from_secs(300)).context("flush")?;
                }
                Ok(sent)
            })
        })
        .collect();
    for t in threads {
        t.join()
            .map_err(|_| anyhow::anyhow!("producer thread panicked"))??;
    }
    Ok(start.elapsed().as_secs_f64())
}

/// Partitions for consumer `i` of `n`. `Offset::End` is resolved here, to
/// each partition's high watermark, so a record produced after this call is
/// read even if the consumer's first fetch comes later.
fn share(
    args: &Args,
    c: &BaseConsumer,
    i: usize,
    n: usize,
    offset: Offset,
) -> Result<TopicPartitionList> {
    let mut tpl = TopicPartitionList::new();
    for part in (0..args.partitions).filter(|p| *p as usize % n == i) {
        let at = match offset {
            Offset::End => {
                let (_, high) = c
                    .fetch_watermarks(&args.topic, part, Duration::from_secs(30))
                    .context("high watermark")?;
                Offset::Offset(high)
            }
            other => other,
        };
        tpl.add_partition_offset(&args.topic, part, at)?;
    }
    Ok(tpl)
}

/// Consumers actually used: at most one per partition.
fn consumer_count(args: &Args) -> usize {
    args.consumers.max(1).min(args.partitions.max(1) as usize)
}

/// Run the consumers until `done` says so or nothing arrived for `idle`.
/// With `e2e`, each record's end-to-end latency is recorded.
fn consume(
    args: &Args,
    stats: &Arc<PhaseStats>,
    offset: Offset,
    e2e: bool,
    done: impl Fn(&PhaseStats) -> bool + Send + Sync + 'static,
    idle: Duration,
) -> Result<Vec<std::thread::JoinHandle<Result<()>>>> {
    let n = consumer_count(args);
    let done = Arc::new(done);
    let group = format!("bench-{}-{}", std::process::id(), now_nanos());
    let mut threads = Vec::new();
    for i in 0..n {
        let c = consumer(args, &group)?;
        c.assign(&share(args, &c, i, n, offset)?)?;
        let (stats, done) = (stats.clone(), done.clone());
        threads.push(std::thread::spawn(move || -> Result<()> {
            let mut last = Instant::now();
            while !done(&stats) && last.elapsed() < idle {
                let m = match c.poll(Duration::from_millis(100)) {
                    None => continue,
                    Some(Ok(m)) => m,
                    Some(Err(e)) => {
                        // Reported (errors, first_error); the client retries.
                        stats.error(format!("consume: {e}"));
                        continue;
                    }
                };
                let now = Instant::now();
                last = now;
                let payload = m.payload().unwrap_or_default();
                let bytes = payload.len() as u64;
                stats.consumed.fetch_add(1, Ordering::Relaxed);
                stats.consumed_bytes.fetch_add(bytes, Ordering::Relaxed);
                let latency = (e2e && payload.len() >= 8).then(|| {
                    let mut sent = [0u8; 8];
                    sent.copy_from_slice(&payload[..8]);
                    now_nanos().saturating_sub(u64::from_be_bytes(sent)) / 1000
                });
                if let Some(us) = latency {
                    record(&mut lock(&stats.e2e), us);
                }
                stats.timeline.with_second(now, |s| {
                    s.consumed_bytes += bytes;
                    if let Some(us) = latency {
                        record(&mut s.e2e, us);
                    }
                });
            }
            Ok(())
        }));
    }
    Ok(threads)
}

fn join_all(threads: Vec<std::thread::JoinHandle<Result<()>>>) -> Result<()> {
    for t in threads {
        t.join()
            .map_err(|_| anyhow::anyhow!("consumer thread panicked"))??;
    }
    Ok(())
}

/// Counters scraped from the brokers' /metrics, summed (peak RSS: the
/// largest broker's).
#[derive(Debug, Default, Clone, Copy)]
struct Scrape {
    puts: f64,
    gets: f64,
    get_bytes: f64,
    hits: f64,
    misses: f64,
    peak_rss: f64,
    rss: f64,
    /// CPU seconds the brokers used (summed).
    cpu: f64,
}

impl Scrape {
    fn minus(self, o: Scrape) -> Scrape {
        Scrape {
            puts: self.puts - o.puts,
            gets: self.gets - o.gets,
            get_bytes: self.get_bytes - o.get_bytes,
            hits: self.hits - o.hits,
            misses: self.misses - o.misses,
            peak_rss: self.peak_rss,
            rss: self.rss,
            cpu: self.cpu - o.cpu,
        }
    }

    fn hit_ratio(&self) -> f64 {
        self.hits / (self.hits + self.misses).max(1.0)
    }
}

/// The brokers' CPU time per GiB moved in a phase: what the broker costs,
/// whatever the client sharing the machine takes.
fn cpu_row(phase: &mut Value, table: &mut Vec<(String, String)>, cpu: f64, bytes: f64, what: &str) {
    let per_gib = cpu / (bytes / GIB).max(1e-9);
    phase["broker_cpu_secs_per_gib"] = json!((per_gib * 100.0).round() / 100.0);
    table.push((
        format!("broker CPU per GiB {what}"),
        format!("{per_gib:.2} s"),
    ));
}

/// The counters of every broker; `None` without endpoints.
fn scrape_all(urls: &[String]) -> Result<Option<Scrape>> {
    if urls.is_empty() {
        return Ok(None);
    }
    // Let the brokers' 1 s publishers catch up.
    std::thread::sleep(Duration::from_millis(1200));
    let mut sum = Scrape::default();
    for url in urls {
        let s = scrape(url)?;
        sum.puts += s.puts;
        sum.gets += s.gets;
        sum.get_bytes += s.get_bytes;
        sum.hits += s.hits;
        sum.misses += s.misses;
        sum.peak_rss = sum.peak_rss.max(s.peak_rss);
        sum.rss = sum.rss.max(s.rss);
        sum.cpu += s.cpu;
    }
    Ok(Some(sum))
}

/// GET a Prometheus text page with a plain HTTP/1.0 request.
fn scrape(url: &str) -> Result<Scrape> {
    use std::io::{Read, Write};
    let rest = url
        .strip_prefix("http://")
        .context("metrics url must be http://")?;
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    let addr = std::net::ToSocketAddrs::to_socket_addrs(host)?
        .next()
        .context("metrics endpoint address")?;
    let mut conn = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .context("connect to metrics endpoint")?;
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(conn, "GET /{path} HTTP/1.0\r\nHost: {host}\r\n\r\n")?;
    let mut body = String::new();
    conn.read_to_string(&mut body)?;
    let mut s = Scrape::default();
    for line in body.lines() {
        let Some((name, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(v) = value.parse::<f64>() else {
            continue;
        };
        match name {
            "tributary_object_store_requests_total{op=\"put\"}" => s.puts = v,
            "tributary_object_store_requests_total{op=\"get\"}" => s.gets = v,
            "tributary_object_store_bytes_total{op=\"get\"}" => s.get_bytes = v,
            "tributary_read_cache_hits_total" => s.hits = v,
            "tributary_read_cache_misses_total" => s.misses = v,
            "tributary_process_peak_resident_memory_bytes" => s.peak_rss = v,
            "process_resident_memory_bytes" => s.rss = v,
            "process_cpu_seconds_total" => s.cpu = v,
            _ => {}
        }
    }
    Ok(s)
}

/// Segment objects (count, bytes) under a file:// store's directory.
fn count_objects(dir: &Path) -> (u64, u64) {
    let mut n = 0;
    let mut bytes = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let Ok(meta) = e.metadata() else { continue };
            if meta.is_dir() {
                stack.push(e.path());
            } else if e.path().extension().is_some_and(|x| x == "seg") {
                n += 1;
                bytes += meta.len();
            }
        }
    }
    (n, bytes)
}

const GIB: f64 = (1u64 << 30) as f64;

fn create_topic(args: &Args) -> Result<()> {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", &args.bootstrap);
    for setting in &args.client_config {
        let (k, v) = key_value(setting)?;
        config.set(k, v);
    }
    let admin: AdminClient<DefaultClientContext> =
        config.create().context("create admin client")?;
    let topic = NewTopic::new(&args.topic, args.partitions, TopicReplication::Fixed(1));
    let results = futures::executor::block_on(admin.create_topics([&topic], &AdminOptions::new()))
        .context("create topic")?;
    for r in results {
        if let Err((name, code)) = r {
            if code != RDKafkaErrorCode::TopicAlreadyExists {
                bail!("create topic {name}: {code}");
            }
        }
    }
    Ok(())
}

fn throughput(bytes: u64, records: u64, secs: f64) -> Value {
    json!({
        "records": records,
        "bytes": bytes,
        "secs": (secs * 1000.0).round() / 1000.0,
        "mb_per_s": (bytes as f64 / 1e6 / secs * 10.0).round() / 10.0,
        "records_per_s": (records as f64 / secs).round() as u64,
    })
}

fn main() -> Result<()> {
    let args = Args::parse();
    if args.record_size < 8 {
        bail!("--record-size must be at least 8 (the send time is stamped in the value)");
    }
    let wants = |phase: &str| args.phases.iter().any(|p| p == phase);
    create_topic(&args)?;
    let timeline = Arc::new(Timeline::new());
    let mut spans: Vec<(String, f64, f64)> = Vec::new();
    let mut out = json!({
        "label": args.label,
        "settings": {
            "bootstrap": args.bootstrap,
            "topic": args.topic,
            "partitions": args.partitions,
            "record_size": args.record_size,
            "producers": args.producers,
            "consumers": consumer_count(&args),
            "acks": args.acks,
            "compression": args.compression,
            "records": args.records,
            "duration": args.duration,
            "rate": args.rate,
            "latency_secs": args.latency_secs,
            "producer_config": args.producer_config,
            "consumer_config": args.consumer_config,
            "transaction_records": args.transaction_records,
            "client_config": args.client_config,
        },
    });
    let since_start = |at: Instant| at.duration_since(timeline.start).as_secs_f64();
    // Broker memory over the run, for the chart.
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = (!args.metrics_url.is_empty()).then(|| {
        let (urls, timeline, sampling) =
            (args.metrics_url.clone(), timeline.clone(), sampling.clone());
        std::thread::spawn(move || {
            while sampling.load(Ordering::Relaxed) {
                let rss = urls
                    .iter()
                    .filter_map(|u| scrape(u).ok())
                    .map(|s| s.rss)
                    .fold(0.0, f64::max);
                timeline.with_second(Instant::now(), |s| s.broker_rss = Some(rss));
                std::thread::sleep(Duration::from_secs(1));
            }
        })
    });
    let mut table: Vec<(String, String)> = Vec::new();

    if wants("produce") {
        let m0 = scrape_all(&args.metrics_url)?;
        let objects0 = args.objects_dir.as_deref().map(count_objects);
        let stats = PhaseStats::new(timeline.clone());
        let began = Instant::now();
        let pace = Pace::Max {
            records: args.records,
            until: args.duration.map(|d| began + Duration::from_secs_f64(d)),
        };
        let secs = produce(&args, &stats, pace)?;
        spans.push((
            "produce".into(),
            since_start(began),
            since_start(Instant::now()),
        ));
        let acked = stats.acked.load(Ordering::Relaxed);
        let bytes = stats.acked_bytes.load(Ordering::Relaxed);
        let errors = stats.errors.load(Ordering::Relaxed);
        let mut phase = throughput(bytes, acked, secs);
        phase["errors"] = json!(errors);
        phase["first_error"] = json!(*lock(&stats.first_error));
        phase["ack_latency_ms"] = percentiles(&lock(&stats.ack));
        if args.transaction_records > 0 {
            let c = percentiles(&lock(&stats.commit));
            table.push((
                format!(
                    "transaction commit latency ({} records per transaction)",
                    args.transaction_records
                ),
                format!("p50 {} ms, p99 {}, max {}", c["p50"], c["p99"], c["max"]),
            ));
            phase["commit_latency_ms"] = c;
        }
        table.push((
            format!("produce at saturation (acks={})", args.acks),
            format!(
                "{} MB/s, {} records/s, {errors} errors",
                phase["mb_per_s"], phase["records_per_s"]
            ),
        ));
        if let (Some(m0), Some(m1)) = (m0, scrape_all(&args.metrics_url)?) {
            let d = m1.minus(m0);
            phase["puts_per_gib"] = json!((d.puts / (bytes as f64 / GIB)).round() as u64);
            table.push((
                "object-store PUTs per GiB produced".into(),
                format!("{}", phase["puts_per_gib"]),
            ));
            cpu_row(&mut phase, &mut table, d.cpu, bytes as f64, "produced");
        }
        if let (Some((n0, b0)), Some((n1, b1))) =
            (objects0, args.objects_dir.as_deref().map(count_objects))
        {
            phase["segments"] = json!({"objects": n1 - n0, "bytes": b1 - b0});
            table.push((
                "segment objects written".into(),
                format!(
                    "{} ({:.2} MiB each on average)",
                    n1 - n0,
                    (b1 - b0) as f64 / (1 << 20) as f64 / (n1 - n0).max(1) as f64
                ),
            ));
        }
        out["produce"] = phase;
    }

    if wants("consume") {
        let m0 = scrape_all(&args.metrics_url)?;
        let stats = PhaseStats::new(timeline.clone());
        // Everything the produce phase had acknowledged (or, alone, what is
        // in the topic: read until nothing new arrives for 5 s).
        let target = out["produce"]["records"].as_u64().unwrap_or(u64::MAX);
        let began = Instant::now();
        let threads = consume(
            &args,
            &stats,
            Offset::Beginning,
            false,
            move |s| s.consumed.load(Ordering::Relaxed) >= target,
            Duration::from_secs(5),
        )?;
        join_all(threads)?;
        let mut end = Instant::now();
        let consumed = stats.consumed.load(Ordering::Relaxed);
        if consumed < target {
            // Ended by the idle timeout: the waiting is not reading time.
            end -= Duration::from_secs(5);
            if target != u64::MAX {
                eprintln!("warning: consumed {consumed} of {target} records");
            }
        }
        spans.push(("consume".into(), since_start(began), since_start(end)));
        let secs = end.duration_since(began).as_secs_f64().max(1e-3);
        let mut phase = throughput(stats.consumed_bytes.load(Ordering::Relaxed), consumed, secs);
        phase["errors"] = json!(stats.errors.load(Ordering::Relaxed));
        phase["first_error"] = json!(*lock(&stats.first_error));
        table.push((
            format!(
                "consume from the beginning ({} consumers)",
                consumer_count(&args)
            ),
            format!(
                "{} MB/s, {} records/s",
                phase["mb_per_s"], phase["records_per_s"]
            ),
        ));
        if let (Some(m0), Some(m1)) = (m0, scrape_all(&args.metrics_url)?) {
            let d = m1.minus(m0);
            let gib = stats.consumed_bytes.load(Ordering::Relaxed) as f64 / GIB;
            phase["gets_per_gib"] = json!((d.gets / gib.max(1e-9)).round() as u64);
            phase["cache_hit_ratio"] = json!((d.hit_ratio() * 1000.0).round() / 1000.0);
            cpu_row(&mut phase, &mut table, d.cpu, gib * GIB, "consumed");
            table.push((
                "object-store GETs per GiB consumed (catch-up)".into(),
                format!(
                    "{} ({:.2} GiB read from the store, cache hit ratio {})",
                    phase["gets_per_gib"],
                    d.get_bytes / GIB,
                    phase["cache_hit_ratio"]
                ),
            ));
        }
        out["consume"] = phase;
    }

    if wants("latency") {
        let m0 = scrape_all(&args.metrics_url)?;
        let stats = PhaseStats::new(timeline.clone());
        let stop = Arc::new(AtomicBool::new(false));
        // Tail consumers start at the high watermarks as of now.
        let tails = {
            let stop = stop.clone();
            consume(
                &args,
                &stats,
                Offset::End,
                true,
                move |_| stop.load(Ordering::Relaxed),
                Duration::from_secs(u64::MAX / 4),
            )?
        };
        let began = Instant::now();
        let pace = Pace::Rate {
            rate: args.rate,
            until: began + Duration::from_secs(args.latency_secs),
        };
        let secs = produce(&args, &stats, pace)?;
        // Let the consumers catch the last records.
        let acked = stats.acked.load(Ordering::Relaxed);
        let drain = Instant::now();
        while stats.consumed.load(Ordering::Relaxed) < acked
            && drain.elapsed() < Duration::from_secs(10)
        {
            std::thread::sleep(Duration::from_millis(20));
        }
        stop.store(true, Ordering::Relaxed);
        join_all(tails)?;
        spans.push((
            "latency".into(),
            since_start(began),
            since_start(Instant::now()),
        ));
        let bytes = stats.acked_bytes.load(Ordering::Relaxed);
        let mut phase = throughput(bytes, acked, secs);
        phase["rate"] = json!(args.rate);
        phase["errors"] = json!(stats.errors.load(Ordering::Relaxed));
        phase["first_error"] = json!(*lock(&stats.first_error));
        phase["consumed"] = json!(stats.consumed.load(Ordering::Relaxed));
        phase["ack_latency_ms"] = percentiles(&lock(&stats.ack));
        phase["e2e_latency_ms"] = percentiles(&lock(&stats.e2e));
        let row = |v: &Value| {
            if v.is_null() {
                return "no samples".to_owned();
            }
            format!(
                "p50 {} ms, p90 {}, p99 {}, p99.9 {}, max {}",
                v["p50"], v["p90"], v["p99"], v["p99_9"], v["max"]
            )
        };
        let at = format!(
            "{} records/s = {:.1} MB/s",
            args.rate,
            args.rate as f64 * args.record_size as f64 / 1e6
        );
        table.push((
            format!("produce-ack latency at {at}"),
            row(&phase["ack_latency_ms"]),
        ));
        table.push((
            format!("end-to-end latency at {at}"),
            row(&phase["e2e_latency_ms"]),
        ));
        if let (Some(m0), Some(m1)) = (m0, scrape_all(&args.metrics_url)?) {
            let d = m1.minus(m0);
            let gib = (bytes as f64 / GIB).max(1e-9);
            phase["puts_per_gib"] = json!((d.puts / gib).round() as u64);
            phase["tail_gets_per_gib"] = json!((d.gets / gib).round() as u64);
            phase["cache_hit_ratio"] = json!((d.hit_ratio() * 1000.0).round() / 1000.0);
            table.push((
                format!("object-store PUTs / GETs per GiB at {at}"),
                format!(
                    "{} / {} (tail cache hit ratio {})",
                    phase["puts_per_gib"], phase["tail_gets_per_gib"], phase["cache_hit_ratio"]
                ),
            ));
        }
        out["latency"] = phase;
    }

    if let Some(m) = scrape_all(&args.metrics_url)? {
        out["broker_peak_rss_bytes"] = json!(m.peak_rss);
        table.push((
            "broker peak RSS (largest broker)".into(),
            format!("{:.0} MiB", m.peak_rss / (1 << 20) as f64),
        ));
    }
    sampling.store(false, Ordering::Relaxed);
    if let Some(t) = sampler {
        let _ = t.join();
    }
    out["phases"] = json!(spans
        .iter()
        .map(|(name, from, to)| json!({"phase": name, "from": from, "to": to}))
        .collect::<Vec<_>>());
    out["timeline"] = timeline.to_json(&spans);

    println!("| metric | value |");
    println!("|---|---|");
    println!(
        "| records | {} B values, {} partitions, {} producer(s), {} consumer(s), acks={}, compression={} |",
        args.record_size, args.partitions, args.producers, consumer_count(&args), args.acks, args.compression
    );
    for (metric, value) in &table {
        println!("| {metric} | {value} |");
    }
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&out)?)
            .with_context(|| format!("write {}", path.display()))?;
    }
    Ok(())
}
