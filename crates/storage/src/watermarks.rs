//! Commit notifications for long-polling fetches.
//!
//! A segment committed by this broker wakes only the fetches parked on the
//! partitions it holds ([`Watermarks::notify_partitions`],
//! [`Watermarks::watch_partitions`]): an unrelated topic's commits cost a
//! parked fetch nothing. Commits whose partitions are not known (those of
//! other brokers sharing the metadata store, signalled when the store can
//! push them, see `tributary_broker::cluster::follow_remote_commits`) bump
//! a version counter every parked fetch also waits on.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::{watch, Notify};
use uuid::Uuid;

/// A partition: topic id and index.
pub type PartitionKey = (Uuid, i32);

/// Fetches parked per partition: an id per watch and its wake-up.
#[derive(Debug, Default)]
struct Parked {
    next_id: u64,
    by_partition: HashMap<PartitionKey, Vec<(u64, Arc<Notify>)>>,
}

/// Broadcasts "something was committed".
#[derive(Debug, Clone)]
pub struct Watermarks {
    tx: watch::Sender<u64>,
    /// Whether other brokers' commits are heard as they happen (so parked
    /// fetches need not poll often).
    remote_listening: Arc<AtomicBool>,
    parked: Arc<Mutex<Parked>>,
}

/// Wakes when one of the watched partitions gets a commit; unregisters on
/// drop.
#[derive(Debug)]
pub struct PartitionWatch {
    id: u64,
    keys: Vec<PartitionKey>,
    wake: Arc<Notify>,
    parked: Arc<Mutex<Parked>>,
}

impl PartitionWatch {
    /// Completes at the next commit to a watched partition since the last
    /// call (a commit that came in between is not missed).
    pub async fn changed(&self) {
        self.wake.notified().await;
    }
}

impl Drop for PartitionWatch {
    fn drop(&mut self) {
        let mut parked = self.parked.lock().unwrap_or_else(PoisonError::into_inner);
        for key in &self.keys {
            if let Some(list) = parked.by_partition.get_mut(key) {
                list.retain(|(id, _)| *id != self.id);
                if list.is_empty() {
                    parked.by_partition.remove(key);
                }
            }
        }
    }
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
            parked: Arc::default(),
        }
    }

    /// Signal that new data was committed to `partitions`: wakes the
    /// fetches watching them, and only those.
    pub fn notify_partitions(&self, partitions: impl IntoIterator<Item = PartitionKey>) {
        let parked = self.parked.lock().unwrap_or_else(PoisonError::into_inner);
        if parked.by_partition.is_empty() {
            return;
        }
        for key in partitions {
            for (_, wake) in parked.by_partition.get(&key).into_iter().flatten() {
                wake.notify_one();
            }
        }
    }

    /// Watch `partitions` for commits (see [`PartitionWatch::changed`]).
    pub fn watch_partitions(&self, partitions: &[PartitionKey]) -> PartitionWatch {
        let wake = Arc::new(Notify::new());
        let mut parked = self.parked.lock().unwrap_or_else(PoisonError::into_inner);
        let id = parked.next_id;
        parked.next_id += 1;
        for key in partitions {
            parked
                .by_partition
                .entry(*key)
                .or_default()
                .push((id, wake.clone()));
        }
        PartitionWatch {
            id,
            keys: partitions.to_vec(),
            wake,
            parked: self.parked.clone(),
        }
    }

    /// Signal that new data was committed somewhere (partitions unknown):
    /// wakes every parked fetch.
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

    /// A receiver that wakes on the next [`Watermarks::notify_commit`].
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.tx.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn a_commit_wakes_only_fetches_on_its_partitions() {
        let w = Watermarks::new();
        let (a, b) = ((Uuid::new_v4(), 0), (Uuid::new_v4(), 3));
        let on_a = w.watch_partitions(&[a]);
        let on_b = w.watch_partitions(&[b, a]);
        w.notify_partitions([b]);
        tokio::time::timeout(Duration::from_secs(5), on_b.changed())
            .await
            .expect("b's watcher woken");
        let not_woken = tokio::time::timeout(Duration::from_millis(50), on_a.changed()).await;
        assert!(not_woken.is_err(), "a commit to b woke a's watcher");
        drop((on_a, on_b));
        assert!(w.parked.lock().expect("lock").by_partition.is_empty());
    }
}
