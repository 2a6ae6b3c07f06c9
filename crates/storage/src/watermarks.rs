//! Commit notifications for long-polling fetches.
//!
//! Every committed segment bumps a version counter; fetches parked at the high
//! watermark wait for the counter to change (or for their max wait) and then
//! re-read the partition offsets from the metadata store. Commits by other
//! brokers sharing the metadata store are signalled here too when the store
//! can push them (see `tributary_broker::cluster::follow_remote_commits`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::sync::watch;

/// Broadcasts "something was committed".
#[derive(Clone)]
pub struct Watermarks {
    tx: watch::Sender<u64>,
    /// Whether other brokers' commits are heard as they happen (so parked
    /// fetches need not poll often).
    remote_listening: Arc<AtomicBool>,
}

impl Default for Watermarks {
    fn default() -> Self {
        Self::new()
    }
}

impl Watermarks {
    pub fn new() -> Self {
        let (tx, _rx) = watch::channel(0);
        Self {
            tx,
            remote_listening: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Signal that new data was committed.
    pub fn notify_commit(&self) {
        self.tx.send_modify(|v| *v = v.wrapping_add(1));
    }

    /// Record whether other brokers' commits are being heard (and signalled
    /// through [`Watermarks::notify_commit`]) right now.
    pub fn set_remote_listening(&self, on: bool) {
        self.remote_listening.store(on, Ordering::Relaxed);
    }

    /// Whether other brokers' commits are being heard right now.
    pub fn remote_listening(&self) -> bool {
        self.remote_listening.load(Ordering::Relaxed)
    }

    /// A receiver that wakes on the next commit.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.tx.subscribe()
    }
}
