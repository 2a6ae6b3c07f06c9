//! Metadata commit benchmark: how many segment commits per second a backend
//! sustains, and their latency, with several concurrent committers (brokers)
//! each committing segments of `--batches` batches spread over `--partitions`
//! partitions of one topic.
//!
//! ```sh
//! cargo run --release -p tributary-meta --example commit_bench -- postgres   # throwaway PostgreSQL
//! cargo run --release -p tributary-meta --example commit_bench -- sqlite     # file in a temp dir
//! ```
//! Options after the backend: `--writers N` (default 4), `--secs S` (10),
//! `--partitions P` (12), `--batches B` (24).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tributary_meta::{open_metadata, MetadataStore, PendingBatch, SegmentCommit};

fn arg(args: &[String], name: &str, default: usize) -> usize {
    args.windows(2)
        .find(|w| w[0] == name)
        .and_then(|w| w[1].parse().ok())
        .unwrap_or(default)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let backend = args.first().map(String::as_str).unwrap_or("postgres");
    let writers = arg(&args, "--writers", 4);
    let secs = arg(&args, "--secs", 10) as u64;
    let partitions = arg(&args, "--partitions", 12) as i32;
    let batches = arg(&args, "--batches", 24);

    let dir = tempfile::tempdir()?;
    let _pg;
    let url = match backend {
        "sqlite" => format!("sqlite://{}", dir.path().join("bench.db").display()),
        "postgres" => {
            let pg = tributary_testkit::PgServer::start()?;
            let url = format!("{}?schema=bench", pg.url());
            _pg = pg;
            url
        }
        other => return Err(format!("unknown backend {other}: sqlite or postgres").into()),
    };
    let setup = open_metadata(&url).await?;
    let topic = setup
        .create_topic("bench", partitions, BTreeMap::new())
        .await?;

    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for w in 0..writers {
        // Each writer is its own store (own pool), like a separate broker.
        let store: Arc<dyn MetadataStore> = open_metadata(&url).await?;
        let topic_id = topic.id;
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut n = 0u64;
            while Instant::now() < deadline {
                let commit = SegmentCommit {
                    key: format!("bench/{w}/{n}"),
                    size: 1 << 20,
                    batches: (0..batches)
                        .map(|i| PendingBatch {
                            topic_id,
                            partition: (i as i32) % partitions,
                            byte_start: (i as u64) * 4096,
                            byte_len: 4096,
                            offset_count: 10,
                            max_timestamp: 0,
                            producer: None,
                            txn: Default::default(),
                        })
                        .collect(),
                    deadline: None,
                };
                let start = Instant::now();
                store.commit_segment(&commit).await?;
                latencies.push(start.elapsed());
                n += 1;
            }
            Ok::<_, tributary_meta::MetaError>(latencies)
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    all.sort_unstable();
    let pct = |p: f64| all[((all.len() - 1) as f64 * p).round() as usize].as_secs_f64() * 1000.0;
    println!(
        "backend={backend} writers={writers} partitions={partitions} batches/commit={batches}: \
         {:.0} commits/s, latency p50 {:.2} ms, p99 {:.2} ms ({} commits)",
        all.len() as f64 / secs as f64,
        pct(0.5),
        pct(0.99),
        all.len()
    );
    Ok(())
}
