//! The broker-wide request-memory budget
//! ([`BrokerConfig::max_inflight_request_bytes`](crate::BrokerConfig)).
//!
//! Every request frame is counted from the moment its length is read until
//! its answer is handed to the connection's writer. A frame of
//! [`SMALL_FRAME`] bytes or more waits while the reserved total is at or
//! over the budget; once under it, the frame is admitted with an up-front
//! reservation of at most [`RequestMemory::share`] (an eighth of the budget)
//! and the rest is reserved as its bytes arrive ([`Reservation::grow_to`]), so
//! a client that announces a huge frame and trickles it holds only what it
//! sent, not the budget (the connection also drops frames that arrive
//! slower than a minimum rate). An admitted frame never waits again, so
//! frames admitted together always complete; the total can exceed the
//! budget by those frames, as in Kafka's memory pool. Smaller frames
//! (metadata, heartbeats, group requests, fetch requests) are counted but
//! never wait, so a saturated produce path cannot hold up a consumer
//! group's rebalance.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::Notify;

/// Frames below this size never wait for the budget.
pub const SMALL_FRAME: usize = 64 * 1024;

/// Bytes of request frames read and not yet answered.
#[derive(Debug)]
pub struct RequestMemory {
    budget: usize,
    used: AtomicUsize,
    freed: Notify,
}

/// One frame's share of the budget; released on drop.
#[derive(Debug)]
pub struct Reservation {
    memory: Arc<RequestMemory>,
    len: usize,
}

impl RequestMemory {
    /// A budget of `budget` bytes (at least 1).
    pub fn new(budget: usize) -> Arc<Self> {
        Arc::new(Self {
            budget: budget.max(1),
            used: AtomicUsize::new(0),
            freed: Notify::new(),
        })
    }

    /// Bytes reserved now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// The budget.
    pub fn budget(&self) -> usize {
        self.budget
    }

    /// Most a frame reserves before its bytes arrive: an eighth of the
    /// budget, at least [`SMALL_FRAME`]. Eight large frames admitted at once
    /// fill the budget; none can claim it all by announcing a large length.
    pub fn share(&self) -> usize {
        (self.budget / 8).max(SMALL_FRAME)
    }

    /// Wait until the reserved total is under the budget.
    pub async fn wait_for_room(&self) {
        loop {
            let freed = self.freed.notified();
            if self.used.load(Ordering::Acquire) < self.budget {
                return;
            }
            freed.await;
        }
    }

    /// A future that completes at the next release (register it, e.g. by
    /// `enable`, before checking what it waits for).
    pub fn freed(&self) -> tokio::sync::futures::Notified<'_> {
        self.freed.notified()
    }

    /// Reserve `len` bytes at once, without waiting (bytes already held).
    pub fn reserve_now(self: &Arc<Self>, len: usize) -> Reservation {
        self.used.fetch_add(len, Ordering::AcqRel);
        Reservation {
            memory: self.clone(),
            len,
        }
    }

    /// Reserve `len` bytes, first waiting (for frames of [`SMALL_FRAME`] or
    /// more) until the reserved total is under the budget.
    pub async fn reserve(self: &Arc<Self>, len: usize) -> Reservation {
        if len >= SMALL_FRAME {
            loop {
                // Register for the wake-up before checking, so a release
                // between the check and the wait is not missed.
                let freed = self.freed.notified();
                if self.used.load(Ordering::Acquire) < self.budget {
                    break;
                }
                freed.await;
            }
        }
        self.used.fetch_add(len, Ordering::AcqRel);
        Reservation {
            memory: self.clone(),
            len,
        }
    }
}

impl Reservation {
    /// Bytes this reservation holds.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Hold at least `len` bytes (never waits: the bytes already arrived).
    pub fn grow_to(&mut self, len: usize) {
        if len > self.len {
            self.memory.used.fetch_add(len - self.len, Ordering::AcqRel);
            self.len = len;
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.memory.used.fetch_sub(self.len, Ordering::AcqRel);
        self.memory.freed.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn large_frames_wait_for_room_small_ones_never() {
        let memory = RequestMemory::new(1 << 20);
        // Over the budget in one frame: admitted (the budget was empty).
        let big = memory.reserve(3 << 20).await;
        assert_eq!(memory.used(), 3 << 20);
        // A small frame is not held up.
        let small = memory.reserve(1000).await;
        assert_eq!(memory.used(), (3 << 20) + 1000);
        // A large one waits until the total is under the budget again.
        let waiting = tokio::spawn({
            let memory = memory.clone();
            async move { memory.reserve(SMALL_FRAME).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished());
        drop(big);
        let admitted = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("admitted once room was freed")
            .expect("task");
        assert_eq!(memory.used(), 1000 + SMALL_FRAME);
        drop((small, admitted));
        assert_eq!(memory.used(), 0);
    }
}
