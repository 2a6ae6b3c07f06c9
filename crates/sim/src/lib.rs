//! Deterministic simulation of brokers' write, commit, fetch and maintenance
//! paths against a faulty object store and metadata store, all driven by
//! one seed, with an auditor that checks the invariants of DESIGN.md after
//! every run.
//!
//! How a run is deterministic:
//! - It runs on its own current-thread tokio runtime with the clock paused:
//!   time moves only when every task waits, straight to the next timer, so
//!   minutes of simulated time take milliseconds and the interleaving of
//!   tasks is a function of the seed. Wall clocks (segment keys, commit
//!   deadlines, orphan ages, retention) are [`clock::SimClock`]s that follow
//!   the paused clock, each machine with its own skew.
//! - The metadata store is SQLite's in-memory database with its calls run
//!   inline ([`tributary_meta::SqliteStore::with_inline_calls`]): the real
//!   backend, without the blocking pool's threads.
//! - The data path's randomness (segment key uuids, backoff jitter) comes
//!   from [`tributary_storage::entropy`], seeded per run; the simulation's
//!   own from [`rng::SimRng`].
//!
//! A run's [`Report`] carries a hash of its trace: the same seed must give
//! the same hash.
//!
//! What a run does: 1-3 brokers, each a [`SegmentWriter`], a maintenance
//! loop (retention, compaction, janitor, under the lease), a reader that
//! follows every partition through a [`Fetcher`], and producer clients,
//! share one object store and one metadata store. Brokers crash at random
//! moments (every call of a crashed broker stops where it is, forever; a
//! request already on the wire may still land) and restart with new
//! writers and caches. Then faults stop, everything settles, an auditor runs
//! maintenance passes long after, and reads every partition back.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use object_store::ObjectStore;
use tokio::time::{sleep, Instant};
use tokio_util::sync::CancellationToken;
use tributary_meta::faults::FaultyMeta;
use tributary_meta::{BatchOutcome, Clock, LogStore, SqliteStore, Stores, TopicStore};
use tributary_runtime::chain;
use tributary_storage::{
    entropy, Fetcher, Isolation, Maintenance, MaintenanceConfig, ReadCache, ReadError,
    SegmentWriter, Watermarks, WriterConfig,
};

pub mod chaos;
pub mod clock;
mod meta;
mod records;
pub mod rng;
mod store;
mod txn;
mod world;

use records::{decode, encode_records};
use world::{lock, Attempt, Params, World};
pub use world::{Options, Stats};

use chaos::{fenced, Chaos, Trace};
use clock::SimClock;
use rng::SimRng;
use store::{Objects, SimStore};

/// The outcome of one seed.
#[derive(Debug, Clone)]
pub struct Report {
    pub seed: u64,
    /// Hash of the trace; a replay of the seed gives the same.
    pub trace_hash: u64,
    /// Broken invariants (empty when the run passed).
    pub violations: Vec<String>,
    pub stats: Stats,
    /// What the seed chose (sizes, timings, fault rates).
    pub params: String,
    /// The trace, if [`Options::keep_trace`].
    pub trace: Vec<String>,
}

/// Run one seed to its end, on this thread.
pub fn run(seed: u64, options: &Options) -> Report {
    let _entropy = entropy::seed_thread(seed ^ 0x5EED_0FE2_7A0B_E5A1);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a current-thread runtime builds");
    runtime.block_on(simulate(seed, options.clone()))
}

async fn simulate(seed: u64, options: Options) -> Report {
    let start = Instant::now();
    let mut master = SimRng::new(seed);
    let params = Params::draw(&mut master.fork(1));
    let trace = Arc::new(Trace::new(start, options.keep_trace));
    let chaos = Arc::new(Chaos::new(
        params.faults.clone(),
        master.fork(2),
        trace.clone(),
    ));
    let meta = Arc::new(
        SqliteStore::open_in_memory()
            .await
            .expect("in-memory sqlite opens")
            .with_clock(SimClock::new(start, params.meta_skew_ms))
            .with_inline_calls(),
    );
    let mut configs = BTreeMap::new();
    configs.insert("retention.ms".to_owned(), params.retention_ms.to_string());
    configs.insert(
        "retention.bytes".to_owned(),
        params.retention_bytes.to_string(),
    );
    let topic = meta
        .create_topic("sim", params.partitions, configs)
        .await
        .expect("topic");
    let objects = Objects::new(SimClock::new(start, params.store_skew_ms));
    let txn_clients = if options.transactions {
        master.fork(4).range(1, 2) as usize
    } else {
        0
    };
    let broker_clocks = params
        .broker_skew_ms
        .iter()
        .map(|&skew| SimClock::new(start, skew))
        .collect();
    let world = Arc::new(World {
        params: params.clone(),
        options: options.clone(),
        topic,
        meta,
        objects,
        chaos: chaos.clone(),
        trace: trace.clone(),
        start,
        rng: Mutex::new(master.fork(3)),
        ledger: Mutex::default(),
        txn_ledger: Mutex::default(),
        txn_clients,
        violations: Mutex::default(),
        stop: AtomicBool::new(false),
        incarnations: Mutex::default(),
        broker_clocks,
    });

    for b in 0..params.brokers {
        let crashed = start_broker(&world, b);
        if let Some(every) = params.crash_every_ms {
            tokio::spawn(crash_loop(world.clone(), b, every, crashed));
        }
    }
    sleep(Duration::from_millis(params.workload_ms)).await;
    world.stop.store(true, Ordering::Relaxed);
    chaos.heal();
    trace.event(|| "workload over, faults stop".into());
    sleep(params.settle()).await;
    for token in lock(&world.incarnations).iter() {
        token.cancel();
    }
    trace.event(|| "brokers stopped; auditor runs maintenance".into());
    audit(&world).await;

    let mut stats = lock(&world.ledger).stats;
    stats.simulated_ms = start.elapsed().as_millis();
    let violations = lock(&world.violations).clone();
    Report {
        seed,
        trace_hash: trace.hash(),
        violations,
        stats,
        params: format!("{params:?}"),
        trace: trace.lines(),
    }
}

/// Start broker `b` (again): a writer, a maintenance loop, a reader and
/// producer clients, all fenced by a fresh crash token.
fn start_broker(world: &Arc<World>, b: usize) -> CancellationToken {
    let p = &world.params;
    let crashed = CancellationToken::new();
    lock(&world.incarnations).push(crashed.clone());
    let who = format!("b{b}");
    world.trace.event(|| format!("{who} starts"));
    let clock = world.broker_clocks[b].clone();
    let store: Arc<dyn ObjectStore> = Arc::new(SimStore::broker(
        world.objects.clone(),
        world.chaos.clone(),
        crashed.clone(),
        who.clone(),
    ));
    let meta = Stores::new(Arc::new(FaultyMeta::new(
        world.meta.clone(),
        Arc::new(meta::MetaChaos {
            chaos: world.chaos.clone(),
            crashed: crashed.clone(),
            who: who.clone(),
        }),
    )));
    let cache = ReadCache::new(store.clone(), 64 << 20, 4096);
    let forever = Duration::from_secs(365 * 24 * 3600);
    let (commit_deadline, metadata_call_timeout) = if world.options.commit_deadlines {
        (
            Duration::from_millis(p.deadline_ms),
            Duration::from_millis(p.call_timeout_ms),
        )
    } else {
        (forever, forever)
    };
    let writer = SegmentWriter::start(
        store.clone(),
        meta.log.clone(),
        cache.clone(),
        Watermarks::new(),
        WriterConfig {
            max_segment_bytes: p.max_segment_bytes,
            flush_interval: Duration::from_millis(p.flush_ms),
            max_inflight_uploads: p.max_inflight,
            max_puts_per_second: p.max_puts_per_second,
            commit_deadline,
            metadata_call_timeout,
            clock: clock.clone(),
        },
    );
    let _maintenance = Maintenance::new(
        &meta,
        store,
        cache.clone(),
        maintenance_config(p, clock.clone()),
    )
    .with_lease(who.clone())
    .spawn(CancellationToken::new());
    tokio::spawn(reader(
        world.clone(),
        Fetcher::new(meta.log.clone(), cache),
        crashed.clone(),
        who.clone(),
    ));
    for c in 0..p.clients {
        tokio::spawn(client(
            world.clone(),
            writer.clone(),
            crashed.clone(),
            format!("{who}c{c}"),
            clock.clone(),
        ));
    }
    // The same transactional ids in every incarnation: a restarted client
    // recovers (and fences) what the crashed one left.
    for c in 0..world.txn_clients {
        tokio::spawn(txn::client(
            world.clone(),
            writer.clone(),
            txn::TxnStores {
                txns: meta.transactions.clone(),
                log: meta.log.clone(),
            },
            crashed.clone(),
            format!("tx-{who}-{c}"),
            clock.clone(),
        ));
    }
    crashed
}

fn maintenance_config(p: &Params, clock: Arc<SimClock>) -> MaintenanceConfig {
    MaintenanceConfig {
        interval: Duration::from_millis(p.maint_interval_ms),
        grace: Duration::from_millis(p.grace_ms),
        small_entry_bytes: 4_096,
        max_compacted_bytes: 64 << 10,
        compacted_entry_bytes: 4_096,
        min_age: Duration::from_millis(p.min_age_ms),
        compaction: true,
        clock,
        ..MaintenanceConfig::default()
    }
}

/// Crash broker `b` (whose running incarnation `crashed` fences) now and
/// then, restarting it after a downtime.
async fn crash_loop(world: Arc<World>, b: usize, every_ms: u64, crashed: CancellationToken) {
    let mut current = Some(crashed);
    loop {
        let wait = world.rng_range(every_ms / 2, every_ms * 3 / 2);
        sleep(Duration::from_millis(wait)).await;
        if world.stop.load(Ordering::Relaxed) {
            return;
        }
        // This broker's newest incarnation.
        if let Some(token) = current.take() {
            token.cancel();
        }
        lock(&world.ledger).stats.crashes += 1;
        world.trace.event(|| format!("b{b} crashes"));
        let down = world.rng_range(0, world.params.downtime_ms);
        sleep(Duration::from_millis(down)).await;
        if world.stop.load(Ordering::Relaxed) {
            return;
        }
        current = Some(start_broker(&world, b));
    }
}

/// A producer: one batch at a time, to a random partition, until the
/// workload ends or its broker crashes.
async fn client(
    world: Arc<World>,
    writer: SegmentWriter,
    crashed: CancellationToken,
    who: String,
    clock: Arc<SimClock>,
) {
    loop {
        let gap = world.rng_range(0, world.params.gap_ms);
        sleep(Duration::from_millis(gap)).await;
        if world.stop.load(Ordering::Relaxed) || crashed.is_cancelled() {
            return;
        }
        let partition = world.rng_range(0, world.params.partitions as u64 - 1) as i32;
        let count = world.rng_range(1, 3) as u32;
        let id = {
            let mut ledger = lock(&world.ledger);
            ledger.next_id += 1;
            let id = ledger.next_id;
            ledger.attempts.insert(
                id,
                Attempt {
                    partition,
                    count,
                    acked: None,
                },
            );
            ledger.stats.appends += 1;
            id
        };
        let batch = encode_records(id, count, clock.now_ms(), None);
        let append = writer.append(world.topic.id, partition, vec![batch]);
        let outcome = tokio::select! {
            biased;
            _ = crashed.cancelled() => {
                world.trace.event(|| format!("{who} append {id} p{partition} cut off by crash"));
                return;
            }
            outcome = append => outcome,
        };
        match outcome.as_deref() {
            Ok([BatchOutcome::Appended { base_offset }]) => {
                let base = *base_offset;
                world
                    .trace
                    .event(|| format!("{who} append {id} p{partition} x{count} acked @{base}"));
                let mut ledger = lock(&world.ledger);
                ledger.stats.acked += 1;
                if let Some(a) = ledger.attempts.get_mut(&id) {
                    a.acked = Some(base);
                }
            }
            other => {
                let what = match other {
                    Ok(outcomes) => format!("{outcomes:?}"),
                    Err(e) => e.to_string(),
                };
                world
                    .trace
                    .event(|| format!("{who} append {id} p{partition} failed: {what}"));
                lock(&world.ledger).stats.failed += 1;
            }
        }
    }
}

/// Follows every partition through the fetch path while faults happen,
/// recording what it reads at which offset.
async fn reader(world: Arc<World>, fetcher: Fetcher, crashed: CancellationToken, who: String) {
    let mut cursors = vec![0i64; world.params.partitions as usize];
    loop {
        let wait = world.rng_range(200, 1_500);
        sleep(Duration::from_millis(wait)).await;
        if crashed.is_cancelled() {
            return;
        }
        for (partition, cursor) in (0..).zip(cursors.iter_mut()) {
            let read = fenced(
                Some(&crashed),
                fetcher.read(
                    world.topic.id,
                    partition,
                    *cursor,
                    16 << 10,
                    true,
                    Isolation::ReadUncommitted,
                ),
            )
            .await;
            match read {
                Ok(fetched) => match decode(&fetched.records) {
                    Ok(records) => {
                        for (offset, record) in records {
                            if let Some((id, k)) = record {
                                world.observe(partition, offset, id, k);
                            }
                            *cursor = (*cursor).max(offset + 1);
                        }
                    }
                    Err(e) => world.violation(format!(
                        "{who} read p{partition}@{cursor}: undecodable batches: {e}"
                    )),
                },
                Err(ReadError::OffsetOutOfRange { log_start, .. }) if log_start > *cursor => {
                    *cursor = log_start;
                }
                Err(e) => {
                    let e = chain(&e);
                    world
                        .trace
                        .event(|| format!("{who} read p{partition}@{cursor} failed: {e}"));
                }
            }
        }
    }
}

/// Once everything settled: every invariant; then maintenance passes by a
/// fault-free broker long after (retention, compaction, the janitor), and
/// every invariant again.
async fn audit(world: &Arc<World>) {
    let p = &world.params;
    let store: Arc<dyn ObjectStore> = Arc::new(SimStore::clean(world.objects.clone()));
    check(world, &store, "settled").await;
    let clock = SimClock::new(world.start, 0);
    if world.txn_clients > 0 {
        // A fault-free writer ends what the crashed coordinators left.
        let cache = ReadCache::new(store.clone(), 64 << 20, 4096);
        let writer = SegmentWriter::start(
            store.clone(),
            world.meta.clone(),
            cache,
            Watermarks::new(),
            WriterConfig {
                flush_interval: Duration::from_millis(10),
                clock: clock.clone(),
                ..WriterConfig::default()
            },
        );
        let fetcher = txn::auditor_fetcher(world, store.clone());
        txn::check(world, &writer, &fetcher).await;
        writer.shutdown().await;
        check(world, &store, "transactions ended").await;
    }
    let maintenance = Maintenance::new(
        &Stores::new(world.meta.clone()),
        store.clone(),
        ReadCache::new(store.clone(), 64 << 20, 4096),
        maintenance_config(p, clock),
    );
    for _ in 0..2 {
        match maintenance.run_pass().await {
            Ok(report) => world
                .trace
                .event(|| format!("auditor maintenance pass {report:?}")),
            Err(e) => world.violation(format!("auditor maintenance pass failed: {}", chain(&e))),
        }
        sleep(Duration::from_millis(p.grace_ms + 1_000)).await;
    }
    check(world, &store, "after maintenance").await;
}

/// Every index entry names an existing object; each partition reads back
/// dense from its log start to its high watermark; every acknowledged
/// record at or above the log start is there, at its offset; no record
/// is at two offsets.
async fn check(world: &Arc<World>, store: &Arc<dyn ObjectStore>, when: &str) {
    let p = &world.params;
    let mut read_now: HashSet<(u64, u32)> = HashSet::new();
    let violation = |v: String| world.violation(format!("{when}: {v}"));
    // Every index entry names an object that exists.
    let topic = &world.topic;
    let mut log_starts = HashMap::new();
    for partition in 0..p.partitions {
        let offsets = match world.meta.partition_offsets(topic.id, partition).await {
            Ok(o) => o,
            Err(e) => {
                violation(format!("p{partition}: offsets unreadable: {}", chain(&e)));
                continue;
            }
        };
        log_starts.insert(partition, offsets.log_start_offset);
        let entries = world
            .meta
            .index_entries(topic.id, partition, 0, usize::MAX >> 1)
            .await
            .unwrap_or_default();
        for e in entries {
            if !world.objects.contains(&e.segment_key) {
                violation(format!(
                    "p{partition} offsets {}..={} are indexed in {} which was deleted",
                    e.base_offset, e.last_offset, e.segment_key
                ));
            }
        }
        // Read the whole partition back through a fresh fetcher: offsets
        // dense from the log start to the high watermark.
        let fetcher = Fetcher::new(
            world.meta.clone(),
            ReadCache::new(store.clone(), 64 << 20, 4096),
        );
        let mut expect = offsets.log_start_offset;
        'read: while expect < offsets.next_offset {
            let fetched = match fetcher
                .read(
                    topic.id,
                    partition,
                    expect,
                    1 << 20,
                    true,
                    Isolation::ReadUncommitted,
                )
                .await
            {
                Ok(f) => f,
                Err(e) => {
                    violation(format!(
                        "p{partition}@{expect} (log start {}, high watermark {}) unreadable: {}",
                        offsets.log_start_offset,
                        offsets.next_offset,
                        chain(&e)
                    ));
                    break;
                }
            };
            let records = match decode(&fetched.records) {
                Ok(r) if !r.is_empty() => r,
                Ok(_) => {
                    violation(format!(
                        "p{partition}@{expect}: nothing returned below the high watermark {}",
                        offsets.next_offset
                    ));
                    break;
                }
                Err(e) => {
                    violation(format!("p{partition}@{expect}: {e}"));
                    break;
                }
            };
            for (offset, record) in records {
                if offset < expect {
                    if offset >= offsets.log_start_offset {
                        violation(format!(
                            "p{partition}: offset {offset} returned again after {}",
                            expect - 1
                        ));
                    }
                    continue;
                }
                if offset > expect {
                    violation(format!(
                        "p{partition}: offsets {expect}..{offset} missing (not dense)"
                    ));
                    break 'read;
                }
                expect = offset + 1;
                let Some((id, k)) = record else {
                    continue; // a transaction marker
                };
                world.observe(partition, offset, id, k);
                lock(&world.ledger).stats.records_audited += 1;
                read_now.insert((id, k));
            }
        }
        if expect > offsets.next_offset {
            violation(format!(
                "p{partition}: records up to {} past the high watermark {}",
                expect - 1,
                offsets.next_offset
            ));
        }
    }

    // Every acknowledged record is at its acknowledged offset (unless
    // retention removed it), and the final read saw it there.
    let found = {
        let ledger = lock(&world.ledger);
        let mut found = Vec::new();
        for (&id, a) in &ledger.attempts {
            let Some(base) = a.acked else { continue };
            let log_start = log_starts.get(&a.partition).copied().unwrap_or(0);
            for k in 0..a.count {
                let offset = base + i64::from(k);
                if offset < log_start {
                    continue;
                }
                match ledger.seen_at.get(&(id, k)) {
                    Some(&at) if at == (a.partition, offset) => {
                        if !read_now.contains(&(id, k)) {
                            found.push(format!(
                                "acknowledged {id}:{k} at p{}@{offset} (log start {log_start}) was readable once, now is lost",
                                a.partition
                            ));
                        }
                    }
                    Some(at) => found.push(format!(
                        "acknowledged {id}:{k} at p{}@{offset} was read at p{}@{}",
                        a.partition, at.0, at.1
                    )),
                    None => found.push(format!(
                        "acknowledged {id}:{k} at p{}@{offset} (log start {log_start}) is lost",
                        a.partition
                    )),
                }
            }
        }
        found
    };
    for v in found {
        violation(v);
    }
}
