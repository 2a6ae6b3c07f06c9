//! The state a simulated run shares between its tasks ([`World`]), what
//! it chose ([`Params`]) and what its producers did ([`Ledger`],
//! [`TxnLedger`]), kept apart from the tasks so that they and the crate
//! root depend on it and not on each other.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tributary_meta::{SqliteStore, TopicMeta};

use crate::chaos::Chaos;
use crate::chaos::{FaultParams, Trace};
use crate::clock::SimClock;
use crate::rng::SimRng;
use crate::store::Objects;

/// How to run a seed.
#[derive(Debug, Clone)]
pub struct Options {
    /// The defect-1 fix: per-segment commit deadlines (writer gives up,
    /// store refuses late commits) and bounded metadata calls. `false`
    /// turns them off (effectively unlimited), as before the fix, to show
    /// that the simulation finds the defect.
    pub commit_deadlines: bool,
    /// Keep the trace's lines in the report (for replaying one seed).
    pub keep_trace: bool,
    /// Transactional producers beside the plain ones (`false`: the
    /// workload of the runs before transactions, which the defect-1
    /// demonstration replays).
    pub transactions: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            commit_deadlines: true,
            keep_trace: false,
            transactions: true,
        }
    }
}

/// Counts of one run.
#[derive(Debug, Default, Clone, Copy)]
pub struct Stats {
    pub appends: u64,
    pub acked: u64,
    pub failed: u64,
    pub crashes: u64,
    pub records_audited: u64,
    pub simulated_ms: u128,
}

/// What one seed chose.
#[derive(Debug, Clone)]
pub(crate) struct Params {
    pub(crate) brokers: usize,
    pub(crate) partitions: i32,
    pub(crate) clients: usize,
    pub(crate) deadline_ms: u64,
    pub(crate) grace_ms: u64,
    pub(crate) call_timeout_ms: u64,
    pub(crate) flush_ms: u64,
    pub(crate) max_segment_bytes: usize,
    pub(crate) max_inflight: usize,
    pub(crate) maint_interval_ms: u64,
    pub(crate) min_age_ms: u64,
    pub(crate) workload_ms: u64,
    pub(crate) gap_ms: u64,
    /// Mean time between crashes of each broker; `None`: no crashes.
    pub(crate) crash_every_ms: Option<u64>,
    pub(crate) downtime_ms: u64,
    pub(crate) broker_skew_ms: Vec<i64>,
    pub(crate) meta_skew_ms: i64,
    pub(crate) store_skew_ms: i64,
    pub(crate) retention_ms: i64,
    pub(crate) retention_bytes: i64,
    pub(crate) faults: FaultParams,
    /// The writer's ceiling on seals of segments that are not full.
    pub(crate) max_puts_per_second: Option<f64>,
}

impl Params {
    pub(crate) fn draw(rng: &mut SimRng) -> Self {
        let brokers = rng.range(1, 3) as usize;
        let deadline_ms = rng.range(2_000, 8_000);
        let grace_ms = 2 * deadline_ms;
        // Clocks disagree by at most half the deadline (DESIGN.md: the
        // grace allows for disagreement up to the deadline).
        let max_skew = (deadline_ms / 4) as i64;
        let skew = |rng: &mut SimRng| rng.range(0, 2 * max_skew as u64) as i64 - max_skew;
        let broker_skew_ms = (0..brokers).map(|_| skew(rng)).collect();
        let meta_skew_ms = skew(rng);
        let store_skew_ms = skew(rng);
        let faults = match rng.range(0, 3) {
            0 => FaultParams::default(),
            level => {
                let f = if level == 3 { 2.0 } else { 1.0 };
                FaultParams {
                    store_latency_ms: rng.range(0, 50),
                    store_land_ms: rng.range(0, 100),
                    store_slow: 0.02 * f,
                    slow_ms: rng.range(500, deadline_ms),
                    put_fail: 0.05 * f,
                    put_lost: 0.03 * f,
                    get_fail: 0.05 * f,
                    delete_fail: 0.05 * f,
                    delete_lost: 0.03 * f,
                    list_fail: 0.05 * f,
                    meta_fail: 0.03 * f,
                    meta_lost: 0.03 * f,
                    meta_stall: 0.05 * f,
                    stall_ms: deadline_ms / 2,
                    meta_hang: 0.004 * f,
                    hang_ms: (deadline_ms, 3 * grace_ms),
                    in_store_stall: 0.03 * f,
                    in_store_ms: 2 * deadline_ms,
                }
            }
        };
        let (retention_ms, retention_bytes) = match rng.range(0, 2) {
            0 => (-1, -1),
            1 => (-1, rng.range(4_096, 32_768) as i64),
            _ => (rng.range(5_000, 20_000) as i64, -1),
        };
        Params {
            brokers,
            partitions: rng.range(1, 3) as i32,
            clients: rng.range(1, 3) as usize,
            deadline_ms,
            grace_ms,
            call_timeout_ms: (deadline_ms / 8).max(100),
            flush_ms: rng.range(10, 200),
            max_segment_bytes: rng.range(1_024, 32_768) as usize,
            max_inflight: rng.range(1, 4) as usize,
            maint_interval_ms: rng.range(500, 3_000),
            min_age_ms: rng.range(500, 5_000),
            workload_ms: rng.range(10_000, 25_000),
            gap_ms: rng.range(20, 400),
            crash_every_ms: rng.chance(0.6).then(|| rng.range(2_000, 15_000)),
            downtime_ms: rng.range(0, 3_000),
            broker_skew_ms,
            meta_skew_ms,
            store_skew_ms,
            retention_ms,
            retention_bytes,
            faults,
            // Drawn last, so the draws before it stay what they were.
            max_puts_per_second: rng.chance(0.5).then(|| rng.range(5, 100) as f64),
        }
    }

    /// Long enough for every stall, hang, slow call and retry started
    /// before the faults stopped to be over.
    pub(crate) fn settle(&self) -> Duration {
        let f = &self.faults;
        let longest = [f.hang_ms.1, f.stall_ms, f.in_store_ms, f.slow_ms]
            .into_iter()
            .max()
            .unwrap_or(0);
        Duration::from_millis(longest + 2 * self.grace_ms + 2 * self.deadline_ms)
    }
}

/// One produce attempt (a batch of `count` records `id:0 .. id:count-1`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Attempt {
    pub(crate) partition: i32,
    pub(crate) count: u32,
    /// Base offset the broker acknowledged.
    pub(crate) acked: Option<i64>,
}

#[derive(Default)]
pub(crate) struct Ledger {
    pub(crate) next_id: u64,
    pub(crate) attempts: BTreeMap<u64, Attempt>,
    /// (partition, offset) → record, as any read ever saw it.
    pub(crate) at_offset: HashMap<(i32, i64), (u64, u32)>,
    /// Record → where reads saw it.
    pub(crate) seen_at: HashMap<(u64, u32), (i32, i64)>,
    pub(crate) stats: Stats,
}

/// State shared by every task of a run.
pub(crate) struct World {
    pub(crate) params: Params,
    pub(crate) options: Options,
    pub(crate) topic: TopicMeta,
    pub(crate) meta: Arc<SqliteStore>,
    pub(crate) objects: Arc<Objects>,
    pub(crate) chaos: Arc<Chaos>,
    pub(crate) trace: Arc<Trace>,
    pub(crate) start: Instant,
    pub(crate) rng: Mutex<SimRng>,
    pub(crate) ledger: Mutex<Ledger>,
    pub(crate) txn_ledger: Mutex<TxnLedger>,
    /// Transactional producers per broker.
    pub(crate) txn_clients: usize,
    pub(crate) violations: Mutex<Vec<String>>,
    /// No new appends or crashes once set.
    pub(crate) stop: AtomicBool,
    /// Crash tokens of every broker incarnation.
    pub(crate) incarnations: Mutex<Vec<CancellationToken>>,
    pub(crate) broker_clocks: Vec<Arc<SimClock>>,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl World {
    pub(crate) fn violation(&self, what: String) {
        self.trace.event(|| format!("VIOLATION {what}"));
        lock(&self.violations).push(what);
    }

    pub(crate) fn rng_range(&self, lo: u64, hi: u64) -> u64 {
        lock(&self.rng).range(lo, hi)
    }

    /// A read saw record `id:k` at `partition`@`offset`.
    pub(crate) fn observe(&self, partition: i32, offset: i64, id: u64, k: u32) {
        let mut found = Vec::new();
        {
            let mut ledger = lock(&self.ledger);
            if !ledger.attempts.contains_key(&id) {
                found.push(format!(
                    "record {id}:{k} at p{partition}@{offset} was never produced"
                ));
            }
            if let Some(prev) = ledger.at_offset.insert((partition, offset), (id, k)) {
                if prev != (id, k) {
                    found.push(format!(
                        "p{partition}@{offset} held {}:{} and later {id}:{k}",
                        prev.0, prev.1
                    ));
                }
            }
            if let Some(prev) = ledger.seen_at.insert((id, k), (partition, offset)) {
                if prev != (partition, offset) {
                    found.push(format!(
                        "record {id}:{k} appears twice: p{}@{} and p{partition}@{offset}",
                        prev.0, prev.1
                    ));
                }
            }
        }
        for v in found {
            self.violation(v);
        }
    }
}

/// How a transaction ended, as far as its producer learnt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    Committed,
    Aborted,
}

/// What the transactional clients did.
#[derive(Default)]
pub(crate) struct TxnLedger {
    pub(crate) next_txn: u64,
    /// Transaction number → how it ended (absent: never decided by its
    /// producer; recovery or the auditor decides it).
    pub outcomes: BTreeMap<u64, Outcome>,
    /// Record batch id → its transaction.
    pub txn_of: HashMap<u64, u64>,
    /// Transactional id → the transaction its producer was in.
    pub(crate) in_flight: HashMap<String, u64>,
}
