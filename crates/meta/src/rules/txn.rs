//! Transactions in the log, decided inside a segment commit. The backend
//! loads, for the producers of the commit's transactional batches, their
//! transaction ([`TxnView`], by producer id) and which of them have data
//! open on each partition, and [`crate::rules::commit::plan_commit`] asks
//! the checks here:
//!
//! - transactional data is appended only while its transaction is ongoing
//!   with the batch's epoch and has the partition added — a late or zombie
//!   batch can never open a transaction nobody will end (KIP-890's
//!   hanging-transaction defence, checked atomically with the append);
//! - a marker is appended only while its transaction is preparing that end
//!   with the marker's epoch, and only where the producer has data open, so
//!   a coordinator repeating an interrupted end writes each marker once.
//!
//! The first data batch opens the producer's transaction on the partition
//! (its offset holds the last stable offset back); the marker closes it,
//! and an abort marker records the aborted range for `read_committed`
//! fetches.

use std::collections::{BTreeSet, HashMap};

use uuid::Uuid;

use super::ProducerKey;
use crate::{BatchRejection, TxnOffsetRefusal, TxnRecord, TxnState};

/// What a commit needs of a producer's transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnView {
    /// The id holding the producer.
    pub transactional_id: String,
    pub producer_epoch: i16,
    pub state: TxnState,
    pub partitions: BTreeSet<(Uuid, i32)>,
}

/// The transaction state a commit was planned against.
#[derive(Debug, Clone, Default)]
pub struct TxnInputs {
    /// By producer id; absent: no transactional id holds the producer.
    pub views: HashMap<i64, TxnView>,
    /// First offset of each producer's open data, by partition and producer.
    pub open: HashMap<ProducerKey, i64>,
}

/// A change to the open/aborted transactions of a partition, in commit
/// order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxnEvent {
    /// The producer's first data of its transaction on the partition.
    Opened { key: ProducerKey, first_offset: i64 },
    /// Its marker, at `marker_offset`; an abort leaves an aborted range.
    Closed {
        key: ProducerKey,
        first_offset: i64,
        marker_offset: i64,
        commit: bool,
    },
}

/// May transactional data of a producer at `epoch`, produced under
/// `transactional_id`, go to `partition`?
pub fn check_data(
    view: Option<&TxnView>,
    transactional_id: &str,
    partition: (Uuid, i32),
    epoch: i16,
) -> Result<(), BatchRejection> {
    let Some(view) = view.filter(|v| v.transactional_id == transactional_id) else {
        return Err(BatchRejection::InvalidProducerIdMapping);
    };
    if epoch < view.producer_epoch {
        return Err(BatchRejection::InvalidProducerEpoch);
    }
    if epoch != view.producer_epoch
        || view.state != TxnState::Ongoing
        || !view.partitions.contains(&partition)
    {
        return Err(BatchRejection::InvalidTxnState);
    }
    Ok(())
}

/// May a marker ending (`commit` or abort) the transaction of a producer
/// at `epoch` be written to `partition`?
pub fn check_marker(
    view: Option<&TxnView>,
    partition: (Uuid, i32),
    epoch: i16,
    commit: bool,
) -> Result<(), BatchRejection> {
    let ending = if commit {
        TxnState::PrepareCommit
    } else {
        TxnState::PrepareAbort
    };
    match view {
        Some(v)
            if v.state == ending
                && v.producer_epoch == epoch
                && v.partitions.contains(&partition) =>
        {
            Ok(())
        }
        _ => Err(BatchRejection::InvalidTxnState),
    }
}

/// States in which an idle transactional id may expire
/// (`transactional.id.expiration.ms`): nothing is open or ending.
pub const EXPIRABLE: [TxnState; 3] = [
    TxnState::Empty,
    TxnState::CompleteCommit,
    TxnState::CompleteAbort,
];

/// The start time a written record keeps: an ongoing transaction written
/// with `given < 0` starts `now`; an ongoing or ending one keeps its own;
/// any other has none (-1).
pub fn started_ms(state: TxnState, given: i64, now: i64) -> i64 {
    match state {
        TxnState::Ongoing if given < 0 => now,
        TxnState::Ongoing | TxnState::PrepareCommit | TxnState::PrepareAbort => given,
        _ => -1,
    }
}

/// Whether offsets staged by a transaction survive a write of `state`
/// (they are published by `CompleteCommit` and dropped by any other end).
pub fn keeps_staged_offsets(state: TxnState) -> bool {
    matches!(
        state,
        TxnState::Ongoing | TxnState::PrepareCommit | TxnState::PrepareAbort
    )
}

/// May the producer `(producer_id, epoch)` stage offsets of `group` in
/// `rec`'s transaction (TxnOffsetCommit)?
pub fn check_offsets(
    rec: &TxnRecord,
    producer_id: i64,
    epoch: i16,
    group: &str,
) -> Result<(), TxnOffsetRefusal> {
    if rec.producer_id != producer_id {
        return Err(TxnOffsetRefusal::UnknownProducer);
    }
    if epoch < rec.producer_epoch {
        return Err(TxnOffsetRefusal::Fenced);
    }
    if epoch != rec.producer_epoch || rec.state != TxnState::Ongoing || !rec.groups.contains(group)
    {
        return Err(TxnOffsetRefusal::InvalidState);
    }
    Ok(())
}

/// The last stable offset of a partition: its oldest open transaction's
/// first offset, or `next_offset`.
pub fn last_stable_offset(oldest_open: Option<i64>, next_offset: i64) -> i64 {
    oldest_open.map_or(next_offset, |o| o.min(next_offset))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(state: TxnState) -> TxnView {
        TxnView {
            transactional_id: "app".to_owned(),
            producer_epoch: 3,
            state,
            partitions: [(Uuid::nil(), 0)].into(),
        }
    }

    #[test]
    fn data_needs_an_ongoing_transaction_with_the_partition() {
        let p = (Uuid::nil(), 0);
        let ongoing = view(TxnState::Ongoing);
        assert_eq!(check_data(Some(&ongoing), "app", p, 3), Ok(()));
        assert_eq!(
            check_data(Some(&ongoing), "app", (Uuid::nil(), 1), 3),
            Err(BatchRejection::InvalidTxnState)
        );
        assert_eq!(
            check_data(Some(&view(TxnState::PrepareCommit)), "app", p, 3),
            Err(BatchRejection::InvalidTxnState)
        );
        assert_eq!(
            check_data(Some(&ongoing), "app", p, 2),
            Err(BatchRejection::InvalidProducerEpoch)
        );
        assert_eq!(
            check_data(Some(&ongoing), "other", p, 3),
            Err(BatchRejection::InvalidProducerIdMapping),
            "another id's producer"
        );
        assert_eq!(
            check_data(None, "app", p, 0),
            Err(BatchRejection::InvalidProducerIdMapping)
        );
    }

    #[test]
    fn markers_need_the_matching_end_and_epoch() {
        let p = (Uuid::nil(), 0);
        assert_eq!(
            check_marker(Some(&view(TxnState::PrepareCommit)), p, 3, true),
            Ok(())
        );
        assert!(check_marker(Some(&view(TxnState::PrepareCommit)), p, 3, false).is_err());
        assert!(check_marker(Some(&view(TxnState::PrepareAbort)), p, 2, false).is_err());
        assert!(check_marker(Some(&view(TxnState::CompleteCommit)), p, 3, true).is_err());
        assert_eq!(last_stable_offset(Some(5), 9), 5);
        assert_eq!(last_stable_offset(None, 9), 9);
    }
}
