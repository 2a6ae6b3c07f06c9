//! Keeps an idempotent producer's batches in order across a failed segment.
//!
//! The metadata store checks each batch's sequence against the producer's
//! last committed one, but a producer it has no state for passes with any
//! sequence (as in Kafka, whose producer state may have expired). So when
//! the segment holding a new producer's first batch (sequences 0–9) failed
//! and a later segment holding 10–19 committed, the later batch took the
//! first offsets, and the producer's retry of 0–9 was then refused as out of
//! order: its records were never written and the client saw a fatal error.
//!
//! The committer remembers, per producer and partition, the first sequence
//! of a batch that failed, and refuses (retriably, without indexing it) any
//! later batch of that producer on that partition until a batch starting at
//! that sequence arrives — the producer's retry — or the producer moves to a
//! newer epoch (its sequences start again). The producer then retries
//! everything in order. Memory is bounded: entries are forgotten after
//! [`GAP_MEMORY`] (longer than any client's delivery timeout) and at most
//! [`MAX_GAPS`] are kept.

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;
use tributary_meta::ProducerBatch;
use uuid::Uuid;

/// How long a failed sequence is remembered.
pub const GAP_MEMORY: Duration = Duration::from_secs(15 * 60);

/// Most failed sequences remembered at once; past it the oldest go.
pub const MAX_GAPS: usize = 100_000;

/// A producer's first failed batch on one partition.
#[derive(Debug, Clone, Copy)]
struct Gap {
    epoch: i16,
    first_sequence: i32,
    since: Instant,
}

/// Failed first sequences by (topic, partition, producer id).
#[derive(Debug, Default)]
pub(crate) struct ProducerGaps {
    gaps: HashMap<(Uuid, i32, i64), Gap>,
}

impl ProducerGaps {
    /// These batches failed (not written). For each producer and
    /// partition the earliest failure counts; a newer epoch replaces an
    /// older one.
    pub(crate) fn failed<'a>(
        &mut self,
        batches: impl Iterator<Item = (Uuid, i32, &'a ProducerBatch)>,
        now: Instant,
    ) {
        for (topic, partition, p) in batches {
            let gap = Gap {
                epoch: p.producer_epoch,
                first_sequence: p.base_sequence,
                since: now,
            };
            self.gaps
                .entry((topic, partition, p.producer_id))
                .and_modify(|g| {
                    if p.producer_epoch > g.epoch {
                        *g = gap;
                    }
                })
                .or_insert(gap);
        }
        self.bound(now);
    }

    /// Whether this batch may be committed now. The retry of a failed
    /// sequence (or a newer epoch) closes the gap.
    pub(crate) fn admit(&mut self, topic: Uuid, partition: i32, p: &ProducerBatch) -> bool {
        let key = (topic, partition, p.producer_id);
        let Some(gap) = self.gaps.get(&key) else {
            return true;
        };
        if p.producer_epoch > gap.epoch
            || (p.producer_epoch == gap.epoch && p.base_sequence == gap.first_sequence)
        {
            self.gaps.remove(&key);
            return true;
        }
        false
    }

    fn bound(&mut self, now: Instant) {
        self.gaps
            .retain(|_, g| now.saturating_duration_since(g.since) < GAP_MEMORY);
        if self.gaps.len() > MAX_GAPS {
            let mut by_age: Vec<((Uuid, i32, i64), Instant)> =
                self.gaps.iter().map(|(k, g)| (*k, g.since)).collect();
            by_age.sort_by_key(|(_, since)| *since);
            let excess = self.gaps.len() - MAX_GAPS;
            for (key, _) in by_age.into_iter().take(excess) {
                self.gaps.remove(&key);
            }
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.gaps.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(epoch: i16, base: i32, count: i32) -> ProducerBatch {
        ProducerBatch {
            producer_id: 7,
            producer_epoch: epoch,
            base_sequence: base,
            last_sequence: base + count - 1,
        }
    }

    #[test]
    fn later_batches_wait_for_the_retry() {
        let t = Uuid::new_v4();
        let now = Instant::now();
        let mut gaps = ProducerGaps::default();
        assert!(gaps.admit(t, 0, &p(0, 10, 10)), "no failure, no gap");
        gaps.failed(
            [(t, 0, &p(0, 0, 10)), (t, 0, &p(0, 10, 10))].into_iter(),
            now,
        );
        assert!(!gaps.admit(t, 0, &p(0, 20, 10)), "after the failed 0..9");
        assert!(gaps.admit(t, 1, &p(0, 20, 10)), "other partitions go on");
        assert!(gaps.admit(t, 0, &p(0, 0, 10)), "the retry of 0..9");
        assert!(gaps.admit(t, 0, &p(0, 10, 10)), "then the rest");
        assert_eq!(gaps.len(), 0);

        gaps.failed([(t, 0, &p(0, 30, 5))].into_iter(), now);
        assert!(!gaps.admit(t, 0, &p(0, 35, 5)));
        assert!(gaps.admit(t, 0, &p(1, 0, 5)), "a new epoch starts over");
    }

    #[test]
    fn memory_is_bounded() {
        let t = Uuid::new_v4();
        let start = Instant::now();
        let mut gaps = ProducerGaps::default();
        gaps.failed([(t, 0, &p(0, 0, 1))].into_iter(), start);
        gaps.failed(
            [(t, 1, &p(0, 0, 1))].into_iter(),
            start + GAP_MEMORY + Duration::from_secs(1),
        );
        assert_eq!(gaps.len(), 1, "the old gap was forgotten");
        let many: Vec<(Uuid, i32, ProducerBatch)> = (0..MAX_GAPS + 10)
            .map(|i| (t, 2 + i32::try_from(i).expect("fits"), p(0, 0, 1)))
            .collect();
        gaps.failed(
            many.iter().map(|(t, part, b)| (*t, *part, b)),
            start + GAP_MEMORY + Duration::from_secs(2),
        );
        assert_eq!(gaps.len(), MAX_GAPS);
    }
}
