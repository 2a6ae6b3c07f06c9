//! Object store wrappers: each concern is a small [`ObjectStore`] that
//! delegates to an `inner: Arc<dyn ObjectStore>`, so they stack in any order
//! and business logic never knows which ones are there.
//!
//! - [`RetryingStore`] retries transient failures with exponential backoff,
//!   full jitter and a per-attempt timeout. Create-only puts are never
//!   "fixed up": an `AlreadyExists` after an ambiguous attempt goes back to
//!   the caller unchanged.
//! - [`MetricsStore`] counts requests, bytes, errors and latency per
//!   operation; a [`MetricsHandle`] keeps reading them after more layers are
//!   added on top.
//! - [`FaultyStore`] injects failures, lost responses and latency for tests,
//!   driven by a seeded RNG so runs are reproducible.
//!
//! A typical stack is `RetryingStore(MetricsStore(backend))`: metrics then
//! see every attempt, retries included.
//!
//! [`ObjectStore`]: object_store::ObjectStore

pub mod faults;
pub mod metrics;
pub mod retry;

#[cfg(test)]
mod tests;

pub use faults::{FaultConfig, FaultCounts, FaultyStore, InjectedFault};
pub use metrics::{
    LatencyHistogram, MetricsHandle, MetricsSnapshot, MetricsStore, Op, OpSnapshot, LATENCY_BUCKETS,
};
pub use retry::{is_retryable, AttemptTimedOut, RetryPolicy, RetryingStore};
