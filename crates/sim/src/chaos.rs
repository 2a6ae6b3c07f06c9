//! What goes wrong, and when: the fault probabilities a seed draws, one
//! seeded RNG per concern, the crash fence, and the run's trace.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::rng::SimRng;

/// Fault probabilities and latencies of one run.
#[derive(Debug, Clone, Default)]
pub struct FaultParams {
    /// Object store: extra latency per request and per answer, up to this.
    pub store_latency_ms: u64,
    /// Object store: a PUT lands this long after it was sent, up to this
    /// (completions reorder).
    pub store_land_ms: u64,
    /// Object store: probability that a call is slow (up to `slow_ms`).
    pub store_slow: f64,
    pub slow_ms: u64,
    pub put_fail: f64,
    /// The PUT landed, the answer is lost.
    pub put_lost: f64,
    pub get_fail: f64,
    pub delete_fail: f64,
    pub delete_lost: f64,
    pub list_fail: f64,
    /// Metadata: a call fails before reaching the store.
    pub meta_fail: f64,
    /// Metadata: a call took effect, its answer is lost.
    pub meta_lost: f64,
    /// Metadata: a call waits before reaching the store, up to `stall_ms`.
    pub meta_stall: f64,
    pub stall_ms: u64,
    /// Metadata: a call hangs, between `hang_ms.0` and `hang_ms.1`.
    pub meta_hang: f64,
    pub hang_ms: (u64, u64),
    /// Metadata: a segment write the store received waits inside it before
    /// it takes effect (not cancelled by the caller giving up), up to
    /// `in_store_ms`.
    pub in_store_stall: f64,
    pub in_store_ms: u64,
}

/// A run's source of faults. `healed` stops new faults (the end of a run).
#[derive(Debug)]
pub struct Chaos {
    pub params: FaultParams,
    rng: Mutex<SimRng>,
    healed: AtomicBool,
    pub trace: Arc<Trace>,
}

impl Chaos {
    pub fn new(params: FaultParams, rng: SimRng, trace: Arc<Trace>) -> Self {
        Self {
            params,
            rng: Mutex::new(rng),
            healed: AtomicBool::new(false),
            trace,
        }
    }

    fn rng(&self) -> MutexGuard<'_, SimRng> {
        self.rng.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn heal(&self) {
        self.healed.store(true, Ordering::Relaxed);
    }

    fn healed(&self) -> bool {
        self.healed.load(Ordering::Relaxed)
    }

    /// True with probability `p`, never once healed.
    pub fn roll(&self, p: f64) -> bool {
        !self.healed() && self.rng().chance(p)
    }

    /// Up to `max_ms`, zero once healed.
    pub fn upto(&self, max_ms: u64) -> Duration {
        if self.healed() || max_ms == 0 {
            return Duration::ZERO;
        }
        Duration::from_millis(self.rng().range(0, max_ms))
    }

    /// Latency of one object-store leg (request or answer).
    pub fn store_latency(&self) -> Duration {
        let p = &self.params;
        if self.roll(p.store_slow) {
            return self.upto(p.slow_ms);
        }
        self.upto(p.store_latency_ms)
    }

    /// How long a metadata call waits before reaching the store.
    pub fn meta_stall(&self) -> Duration {
        let p = &self.params;
        if self.roll(p.meta_hang) {
            let mut rng = self.rng();
            return Duration::from_millis(rng.range(p.hang_ms.0, p.hang_ms.1));
        }
        if self.roll(p.meta_stall) {
            return self.upto(p.stall_ms);
        }
        Duration::ZERO
    }
}

/// Everything that happened, in order, with simulated times: hashed (a
/// replay must give the same hash) and kept when asked for.
#[derive(Debug)]
pub struct Trace {
    start: Instant,
    keep: bool,
    state: Mutex<(u64, Vec<String>)>,
}

impl Trace {
    pub fn new(start: Instant, keep: bool) -> Self {
        Self {
            start,
            keep,
            state: Mutex::new((0xcbf2_9ce4_8422_2325, Vec::new())),
        }
    }

    /// Milliseconds of simulated time since the start.
    pub fn now_ms(&self) -> u128 {
        self.start.elapsed().as_millis()
    }

    pub fn event(&self, what: impl FnOnce() -> String) {
        let line = format!("{:>8} {}", self.now_ms(), what());
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        for b in line.bytes().chain([b'\n']) {
            state.0 = (state.0 ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        if self.keep {
            state.1.push(line);
        }
    }

    pub fn hash(&self) -> u64 {
        self.state.lock().unwrap_or_else(PoisonError::into_inner).0
    }

    pub fn lines(&self) -> Vec<String> {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .1
            .clone()
    }
}

/// A crashed broker does nothing more to the outside world: every call it
/// starts or is waiting on never returns (a request already on the wire
/// may still land, as after a real crash).
pub async fn fenced<F: Future>(crashed: Option<&CancellationToken>, f: F) -> F::Output {
    match crashed {
        None => f.await,
        Some(token) => {
            tokio::select! {
                biased;
                _ = token.cancelled() => std::future::pending().await,
                out = f => out,
            }
        }
    }
}
