//! Wall clocks that follow tokio's paused clock: a fixed epoch, plus the
//! simulated time elapsed, plus a per-machine skew (brokers, the metadata
//! store and the object store each have their own).

use std::sync::Arc;

use tokio::time::Instant;
use tributary_meta::Clock;

/// 2024-01-01T00:00:00Z: every run starts at the same wall time.
const EPOCH_MS: i64 = 1_704_067_200_000;

#[derive(Debug, Clone)]
pub struct SimClock {
    start: Instant,
    skew_ms: i64,
}

impl SimClock {
    /// A clock `skew_ms` ahead of true simulated time (behind if negative).
    /// Must be made inside the simulation's runtime.
    pub fn new(start: Instant, skew_ms: i64) -> Arc<Self> {
        Arc::new(SimClock { start, skew_ms })
    }
}

impl Clock for SimClock {
    fn now_ms(&self) -> i64 {
        let elapsed = i64::try_from(self.start.elapsed().as_millis()).unwrap_or(i64::MAX);
        EPOCH_MS + elapsed + self.skew_ms
    }
}
