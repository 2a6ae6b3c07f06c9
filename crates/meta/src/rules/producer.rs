//! The idempotent-producer check, as Kafka makes it: per producer and
//! partition the store remembers the producer's epoch and its last
//! [`BATCH_MEMORY`] batches (sequences and base offset). A batch
//!
//! - from an older epoch is refused (`InvalidProducerEpoch`);
//! - from a newer epoch must start at sequence 0, and resets what is
//!   remembered;
//! - equal to a remembered batch is a duplicate (answered with the
//!   remembered base offset, nothing appended);
//! - otherwise must follow the newest remembered batch
//!   ([`tributary_protocol::sequence::next`]) or is refused
//!   (`OutOfOrderSequence`).
//!
//! A producer the store does not remember (new, or expired) is accepted at
//! any sequence, as Kafka accepts it.

use tributary_protocol::sequence;

use crate::{BatchRejection, ProducerBatch};

/// How many of a producer's recent batches per partition are remembered for
/// duplicate detection (Kafka keeps five, matching
/// `max.in.flight.requests.per.connection` ≤ 5 for idempotence).
pub const BATCH_MEMORY: usize = 5;

/// One remembered batch of a producer on a partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RememberedBatch {
    pub base_sequence: i32,
    pub last_sequence: i32,
    pub base_offset: i64,
}

/// What the store remembers of one producer on one partition.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProducerHistory {
    /// Epoch of its latest accepted batch; `None` if not remembered.
    pub epoch: Option<i16>,
    /// Its latest accepted batches, newest first, at most [`BATCH_MEMORY`].
    pub recent: Vec<RememberedBatch>,
}

/// What the check decided for a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Append it; `reset` = forget the remembered batches first (first batch
    /// seen, or a new epoch).
    Accept {
        reset: bool,
    },
    /// A retry of the remembered batch at `base_offset`.
    Duplicate {
        base_offset: i64,
    },
    Reject(BatchRejection),
}

impl ProducerHistory {
    /// The decision for batch `p`.
    pub fn check(&self, p: &ProducerBatch) -> Verdict {
        let Some(epoch) = self.epoch else {
            return Verdict::Accept { reset: true };
        };
        if p.producer_epoch < epoch {
            return Verdict::Reject(BatchRejection::InvalidProducerEpoch);
        }
        if p.producer_epoch > epoch {
            return if p.base_sequence == 0 {
                Verdict::Accept { reset: true }
            } else {
                Verdict::Reject(BatchRejection::OutOfOrderSequence)
            };
        }
        if let Some(b) = self
            .recent
            .iter()
            .find(|b| b.base_sequence == p.base_sequence && b.last_sequence == p.last_sequence)
        {
            return Verdict::Duplicate {
                base_offset: b.base_offset,
            };
        }
        match self.recent.first() {
            Some(newest) if p.base_sequence != sequence::next(newest.last_sequence) => {
                Verdict::Reject(BatchRejection::OutOfOrderSequence)
            }
            _ => Verdict::Accept { reset: false },
        }
    }

    /// Remember accepted batch `p`, appended at `base_offset`, after
    /// [`check`](Self::check) answered `Accept { reset }`.
    pub fn record(&mut self, p: &ProducerBatch, base_offset: i64, reset: bool) {
        if reset {
            self.recent.clear();
        }
        self.epoch = Some(p.producer_epoch);
        self.recent.insert(
            0,
            RememberedBatch {
                base_sequence: p.base_sequence,
                last_sequence: p.last_sequence,
                base_offset,
            },
        );
        self.recent.truncate(BATCH_MEMORY);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(epoch: i16, base: i32, count: i32) -> ProducerBatch {
        ProducerBatch {
            producer_id: 7,
            producer_epoch: epoch,
            base_sequence: base,
            last_sequence: sequence::add(base, count - 1),
        }
    }

    #[test]
    fn unknown_producers_start_anywhere() {
        let h = ProducerHistory::default();
        assert_eq!(h.check(&batch(0, 42, 1)), Verdict::Accept { reset: true });
    }

    #[test]
    fn follows_duplicates_gaps_and_epochs() {
        let mut h = ProducerHistory::default();
        h.record(&batch(1, 0, 10), 100, true);
        assert_eq!(h.check(&batch(1, 10, 5)), Verdict::Accept { reset: false });
        h.record(&batch(1, 10, 5), 110, false);
        assert_eq!(
            h.check(&batch(1, 0, 10)),
            Verdict::Duplicate { base_offset: 100 }
        );
        assert_eq!(
            h.check(&batch(1, 16, 1)),
            Verdict::Reject(BatchRejection::OutOfOrderSequence)
        );
        assert_eq!(
            h.check(&batch(0, 15, 1)),
            Verdict::Reject(BatchRejection::InvalidProducerEpoch)
        );
        assert_eq!(h.check(&batch(2, 0, 1)), Verdict::Accept { reset: true });
        assert_eq!(
            h.check(&batch(2, 3, 1)),
            Verdict::Reject(BatchRejection::OutOfOrderSequence)
        );
    }

    #[test]
    fn remembers_the_latest_five() {
        let mut h = ProducerHistory::default();
        for i in 0..7 {
            h.record(&batch(0, i, 1), i64::from(i) * 10, i == 0);
        }
        assert_eq!(h.recent.len(), BATCH_MEMORY);
        assert_eq!(h.recent[0].base_offset, 60);
        assert_eq!(
            h.check(&batch(0, 1, 1)),
            Verdict::Reject(BatchRejection::OutOfOrderSequence)
        );
        assert_eq!(
            h.check(&batch(0, 2, 1)),
            Verdict::Duplicate { base_offset: 20 }
        );
        h.record(&batch(1, 0, 1), 70, true);
        assert_eq!(h.recent.len(), 1);
    }

    #[test]
    fn sequences_wrap() {
        let mut h = ProducerHistory::default();
        h.record(&batch(0, i32::MAX - 1, 2), 0, true);
        assert_eq!(h.check(&batch(0, 0, 1)), Verdict::Accept { reset: false });
    }
}
