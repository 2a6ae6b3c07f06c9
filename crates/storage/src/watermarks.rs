//! Commit notifications for long-polling fetches.
//!
//! Every committed segment bumps a version counter; fetches parked at the high
//! watermark wait for the counter to change (or for their max wait) and then
//! re-read the partition offsets from the metadata store.

use tokio::sync::watch;

/// Broadcasts "something was committed".
#[derive(Clone)]
pub struct Watermarks {
    tx: watch::Sender<u64>,
}

impl Default for Watermarks {
    fn default() -> Self {
        Self::new()
    }
}

impl Watermarks {
    pub fn new() -> Self {
        let (tx, _rx) = watch::channel(0);
        Self { tx }
    }

    /// Signal that new data was committed.
    pub fn notify_commit(&self) {
        self.tx.send_modify(|v| *v = v.wrapping_add(1));
    }

    /// A receiver that wakes on the next commit.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.tx.subscribe()
    }
}
