//! Fill a topic with JSON events for the export benchmark
//! (`scripts/bench-export.sh`): `--records` records of about `--record-size`
//! bytes, keyed by user, with two headers, produced with librdkafka (acks=all,
//! `--compression`). Values are deterministic pseudo-random JSON objects with
//! nested fields and free text, so both the segments and the Parquet files
//! compress like real events rather than like a repeated byte.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

#[derive(Parser, Debug)]
#[command(about = "Fill a topic with JSON events")]
struct Args {
    #[arg(long, default_value = "127.0.0.1:9092")]
    bootstrap: String,
    #[arg(long, default_value = "events")]
    topic: String,
    #[arg(long, default_value_t = 6)]
    partitions: i32,
    #[arg(long, default_value_t = 1_000_000)]
    records: u64,
    #[arg(long, default_value_t = 1000)]
    record_size: usize,
    #[arg(long, default_value = "lz4")]
    compression: String,
}

const WORDS: [&str; 24] = [
    "order",
    "shipped",
    "payment",
    "refund",
    "cart",
    "view",
    "click",
    "search",
    "login",
    "logout",
    "signup",
    "coupon",
    "review",
    "stock",
    "warehouse",
    "delivery",
    "invoice",
    "return",
    "support",
    "ticket",
    "upgrade",
    "renewal",
    "trial",
    "churn",
];

/// xorshift64*: the same values on every run.
fn next(state: &mut u64) -> u64 {
    *state ^= *state >> 12;
    *state ^= *state << 25;
    *state ^= *state >> 27;
    state.wrapping_mul(0x2545_f491_4f6c_dd1d)
}

fn event(i: u64, size: usize, rng: &mut u64) -> String {
    let mut text = String::new();
    while text.len() + 160 < size {
        text.push_str(WORDS[(next(rng) % WORDS.len() as u64) as usize]);
        text.push(' ');
    }
    format!(
        r#"{{"id":{i},"ts":{},"user":{{"id":{},"country":"{}","premium":{}}},"amount":{:.2},"items":[{},{}],"note":"{}"}}"#,
        1_700_000_000_000u64 + i,
        next(rng) % 100_000,
        ["de", "fr", "us", "jp", "br"][(next(rng) % 5) as usize],
        next(rng).is_multiple_of(7),
        (next(rng) % 100_000) as f64 / 100.0,
        next(rng) % 1000,
        next(rng) % 1000,
        text.trim_end()
    )
}

fn main() -> Result<()> {
    let args = Args::parse();
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &args.bootstrap)
        .create()
        .context("create admin client")?;
    let topic = NewTopic::new(&args.topic, args.partitions, TopicReplication::Fixed(1));
    for r in futures::executor::block_on(admin.create_topics([&topic], &AdminOptions::new()))? {
        if let Err((name, code)) = r {
            if code != rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists {
                bail!("create topic {name}: {code}");
            }
        }
    }
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &args.bootstrap)
        .set("acks", "all")
        .set("linger.ms", "20")
        .set("batch.size", "1000000")
        .set("compression.type", &args.compression)
        .create()
        .context("create producer")?;
    let start = Instant::now();
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let mut bytes = 0u64;
    for i in 0..args.records {
        let value = event(i, args.record_size, &mut rng);
        let key = format!("user-{}", i % 10_000);
        bytes += (value.len() + key.len()) as u64;
        let seq = i.to_string();
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: "source",
                value: Some("fill"),
            })
            .insert(Header {
                key: "seq",
                value: Some(seq.as_str()),
            });
        let mut record = BaseRecord::to(&args.topic)
            .key(&key)
            .payload(&value)
            .headers(headers);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((e, r)) => {
                    if !matches!(
                        e.rdkafka_error_code(),
                        Some(rdkafka::types::RDKafkaErrorCode::QueueFull)
                    ) {
                        bail!("produce failed: {e}");
                    }
                    record = r;
                    producer.poll(Duration::from_millis(5));
                }
            }
        }
        producer.poll(Duration::ZERO);
    }
    producer.flush(Duration::from_secs(300)).context("flush")?;
    let secs = start.elapsed().as_secs_f64();
    println!(
        "produced {} records, {:.2} GB of keys and values, in {secs:.1} s",
        args.records,
        bytes as f64 / 1e9
    );
    Ok(())
}
