//! Load generator for Tributary (or any Kafka-compatible broker), using
//! librdkafka through the `rdkafka` crate.
//!
//! Phases: (1) produce `--records` records of `--record-size` bytes as fast as
//! possible and report MB/s; (2) consume them back from the beginning and
//! report MB/s; (3) produce at a moderate fixed `--rate` for `--latency-secs`
//! and report delivery latency percentiles (send → acknowledgement, acks=all).
//! If `--objects-dir` is given, the segment objects written during the
//! produce phase are counted to report objects per GiB.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{ClientContext, Offset, TopicPartitionList};

#[derive(Parser, Debug)]
#[command(about = "Produce/consume throughput and latency against a Kafka-compatible broker")]
struct Args {
    #[arg(long, default_value = "127.0.0.1:9092")]
    bootstrap: String,
    #[arg(long, default_value = "bench")]
    topic: String,
    #[arg(long, default_value_t = 6)]
    partitions: i32,
    #[arg(long, default_value_t = 500_000)]
    records: usize,
    #[arg(long, default_value_t = 1024)]
    record_size: usize,
    /// Records per second in the latency phase.
    #[arg(long, default_value_t = 1000)]
    rate: u64,
    #[arg(long, default_value_t = 10)]
    latency_secs: u64,
    /// compression.type for the producer.
    #[arg(long, default_value = "none")]
    compression: String,
    /// Directory holding the broker's segment objects (file:// store).
    #[arg(long)]
    objects_dir: Option<PathBuf>,
    /// A broker's Prometheus endpoint (e.g. http://127.0.0.1:9464/metrics):
    /// object-store requests per GiB and cache hits are read from it. Give
    /// it once per broker; the counters are summed.
    #[arg(long)]
    metrics_url: Vec<String>,
}

/// Counters scraped from the broker's /metrics.
#[derive(Debug, Default, Clone, Copy)]
struct Scrape {
    puts: f64,
    gets: f64,
    get_bytes: f64,
    hits: f64,
    misses: f64,
}

impl Scrape {
    fn plus(self, o: Scrape) -> Scrape {
        Scrape {
            puts: self.puts + o.puts,
            gets: self.gets + o.gets,
            get_bytes: self.get_bytes + o.get_bytes,
            hits: self.hits + o.hits,
            misses: self.misses + o.misses,
        }
    }

    fn minus(self, o: Scrape) -> Scrape {
        Scrape {
            puts: self.puts - o.puts,
            gets: self.gets - o.gets,
            get_bytes: self.get_bytes - o.get_bytes,
            hits: self.hits - o.hits,
            misses: self.misses - o.misses,
        }
    }
}

/// The counters of every broker, summed; `None` without endpoints.
fn scrape_all(urls: &[String]) -> Result<Option<Scrape>> {
    if urls.is_empty() {
        return Ok(None);
    }
    // Let the brokers' 1 s publishers catch up.
    std::thread::sleep(Duration::from_millis(1200));
    let mut sum = Scrape::default();
    for url in urls {
        let s = scrape(url)?;
        sum = sum.plus(s);
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
    let mut conn = std::net::TcpStream::connect(host).context("connect to metrics endpoint")?;
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
            _ => {}
        }
    }
    Ok(s)
}

/// Records delivery latencies (µs) and failures.
#[derive(Default)]
struct Stats {
    latencies_us: Mutex<Vec<u64>>,
    failures: Mutex<u64>,
}

struct LatencyContext(Arc<Stats>);

impl ClientContext for LatencyContext {}

impl ProducerContext for LatencyContext {
    type DeliveryOpaque = Box<Instant>;

    fn delivery(&self, result: &DeliveryResult<'_>, sent: Self::DeliveryOpaque) {
        match result {
            Ok(_) => {
                let us = sent.elapsed().as_micros() as u64;
                if let Ok(mut l) = self.0.latencies_us.lock() {
                    l.push(us);
                }
            }
            Err(_) => {
                if let Ok(mut f) = self.0.failures.lock() {
                    *f += 1;
                }
            }
        }
    }
}

fn producer(args: &Args, stats: Arc<Stats>) -> Result<ThreadedProducer<LatencyContext>> {
    ClientConfig::new()
        .set("bootstrap.servers", &args.bootstrap)
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("batch.size", "1000000")
        .set("compression.type", &args.compression)
        .set("queue.buffering.max.kbytes", "1048576")
        .set("queue.buffering.max.messages", "1000000")
        .create_with_context(LatencyContext(stats))
        .context("create producer")
}

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

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx] as f64 / 1000.0
}

fn main() -> Result<()> {
    let args = Args::parse();
    let runtime_admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &args.bootstrap)
        .create()
        .context("create admin client")?;
    let topic = NewTopic::new(&args.topic, args.partitions, TopicReplication::Fixed(1));
    let results =
        futures::executor::block_on(runtime_admin.create_topics([&topic], &AdminOptions::new()))
            .context("create topic")?;
    for r in results {
        if let Err((name, code)) = r {
            if code != rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists {
                bail!("create topic {name}: {code}");
            }
        }
    }
    let payload = vec![b'x'; args.record_size];
    let before = args.objects_dir.as_deref().map(count_objects);

    let m0 = scrape_all(&args.metrics_url)?;
    // Phase 1: produce throughput.
    let stats = Arc::new(Stats::default());
    let p = producer(&args, stats.clone())?;
    let start = Instant::now();
    for i in 0..args.records {
        let key = (i % 1024).to_string();
        let mut record = BaseRecord::with_opaque_to(&args.topic, Box::new(Instant::now()))
            .key(&key)
            .payload(&payload);
        loop {
            match p.send(record) {
                Ok(()) => break,
                Err((e, r)) => {
                    if !matches!(
                        e.rdkafka_error_code(),
                        Some(rdkafka::types::RDKafkaErrorCode::QueueFull)
                    ) {
                        bail!("produce failed: {e}");
                    }
                    record = r;
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        }
    }
    p.flush(Duration::from_secs(120)).context("flush")?;
    let produce_secs = start.elapsed().as_secs_f64();
    let failures = *stats
        .failures
        .lock()
        .map_err(|_| anyhow::anyhow!("poisoned"))?;
    let produced_mb = (args.records * args.record_size) as f64 / 1e6;
    let after = args.objects_dir.as_deref().map(count_objects);
    drop(p);

    let m1 = scrape_all(&args.metrics_url)?;
    // Phase 2: consume throughput from the beginning.
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &args.bootstrap)
        .set("group.id", format!("bench-{}", std::process::id()))
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()
        .context("create consumer")?;
    let mut tpl = TopicPartitionList::new();
    for part in 0..args.partitions {
        tpl.add_partition_offset(&args.topic, part, Offset::Beginning)?;
    }
    consumer.assign(&tpl)?;
    let start = Instant::now();
    let mut consumed = 0usize;
    let mut bytes = 0usize;
    let target = args.records;
    while consumed < target {
        if start.elapsed() > Duration::from_secs(300) {
            bail!("consume timed out after {consumed} records");
        }
        if let Some(m) = consumer.poll(Duration::from_millis(500)) {
            let m = m.context("consume")?;
            bytes += m.payload().map_or(0, |p| p.len());
            consumed += 1;
        }
    }
    let consume_secs = start.elapsed().as_secs_f64();

    let m2 = scrape_all(&args.metrics_url)?;
    // Phase 3: latency at a fixed moderate rate, with a tail consumer
    // following along (its reads should all hit the broker's cache).
    let tail_stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let tail = {
        let stop = tail_stop.clone();
        let tail_consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &args.bootstrap)
            .set("group.id", format!("bench-tail-{}", std::process::id()))
            .set("enable.auto.commit", "false")
            .create()
            .context("create tail consumer")?;
        let mut tpl = TopicPartitionList::new();
        for part in 0..args.partitions {
            tpl.add_partition_offset(&args.topic, part, Offset::End)?;
        }
        tail_consumer.assign(&tpl)?;
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if let Some(Ok(_)) = tail_consumer.poll(Duration::from_millis(100)) {
                    n += 1;
                }
            }
            n
        })
    };
    let lat_stats = Arc::new(Stats::default());
    let p = producer(&args, lat_stats.clone())?;
    let interval = Duration::from_secs_f64(1.0 / args.rate.max(1) as f64);
    let start = Instant::now();
    let mut next = start;
    let mut sent = 0u64;
    while start.elapsed() < Duration::from_secs(args.latency_secs) {
        let record = BaseRecord::with_opaque_to(&args.topic, Box::new(Instant::now()))
            .key("lat")
            .payload(&payload);
        if p.send(record).is_ok() {
            sent += 1;
        }
        next += interval;
        if let Some(wait) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
    }
    p.flush(Duration::from_secs(60)).context("flush")?;
    std::thread::sleep(Duration::from_millis(500));
    tail_stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let tailed = tail
        .join()
        .map_err(|_| anyhow::anyhow!("tail consumer panicked"))?;
    let m3 = scrape_all(&args.metrics_url)?;
    let mut lat = lat_stats
        .latencies_us
        .lock()
        .map_err(|_| anyhow::anyhow!("poisoned"))?
        .clone();
    lat.sort_unstable();

    println!("| metric | value |");
    println!("|---|---|");
    println!("| records | {} x {} B |", args.records, args.record_size);
    println!(
        "| produce throughput (acks=all) | {:.1} MB/s ({:.0} records/s), {} failed |",
        produced_mb / produce_secs,
        args.records as f64 / produce_secs,
        failures
    );
    println!(
        "| consume throughput | {:.1} MB/s ({:.0} records/s) |",
        bytes as f64 / 1e6 / consume_secs,
        consumed as f64 / consume_secs
    );
    println!(
        "| produce latency at {} records/s | p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms ({} sent) |",
        args.rate,
        percentile(&lat, 0.50),
        percentile(&lat, 0.99),
        percentile(&lat, 1.0),
        sent
    );
    if let (Some((n0, b0)), Some((n1, b1))) = (before, after) {
        let gib = (args.records * args.record_size) as f64 / (1u64 << 30) as f64;
        println!(
            "| segment objects written in produce phase | {} objects, {:.1} MiB, {:.0} objects/GiB, avg {:.2} MiB/object |",
            n1 - n0,
            (b1 - b0) as f64 / (1 << 20) as f64,
            (n1 - n0) as f64 / gib,
            (b1 - b0) as f64 / (1 << 20) as f64 / ((n1 - n0).max(1)) as f64
        );
    }
    if let (Some(m0), Some(m1), Some(m2), Some(m3)) = (m0, m1, m2, m3) {
        let gib = |bytes: f64| bytes / (1u64 << 30) as f64;
        let p1 = m1.minus(m0);
        let p2 = m2.minus(m1);
        let p3 = m3.minus(m2);
        let produced = (args.records * args.record_size) as f64;
        let low_rate_bytes = sent as f64 * args.record_size as f64;
        println!(
            "| PUTs per GiB produced, saturation | {:.0} |",
            p1.puts / gib(produced)
        );
        println!(
            "| PUTs per GiB produced, {:.1} MB/s steady | {:.0} |",
            args.rate as f64 * args.record_size as f64 / 1e6,
            p3.puts / gib(low_rate_bytes)
        );
        println!(
            "| GETs per GiB consumed, catch-up (from the beginning) | {:.0} ({:.2} GiB read from the store, cache hit ratio {:.2}) |",
            p2.gets / gib(bytes as f64),
            gib(p2.get_bytes),
            p2.hits / (p2.hits + p2.misses).max(1.0)
        );
        println!(
            "| GETs per GiB consumed, tail consumer | {:.0} ({} records tailed, cache hit ratio {:.2}) |",
            p3.gets / gib((tailed as f64 * args.record_size as f64).max(1.0)),
            tailed,
            p3.hits / (p3.hits + p3.misses).max(1.0)
        );
    }
    Ok(())
}
