//! Where exported files go and how they are named.
//!
//! `topic=T/partition=P/<first>-<last>.parquet`, with the first and last
//! offset of the file zero-padded to 20 digits so names sort by offset.
//! A file holds the records of one "slot" of `max_rows_per_file` offsets
//! (`[k*N, (k+1)*N)`), so boundaries do not depend on where an export
//! starts: the same export run twice names the same files. The checkpoint
//! `topic=T/_checkpoint.json` records, per partition, the offset after the
//! last exported record; it is written after the files it covers.

use std::collections::BTreeMap;

use object_store::path::Path;
use serde::{Deserialize, Serialize};

/// The directory of one partition's files.
pub fn partition_dir(topic: &str, partition: i32) -> Path {
    Path::from(format!("topic={topic}/partition={partition}"))
}

/// The file holding offsets `first..=last` of a partition.
pub fn file_path(topic: &str, partition: i32, first: i64, last: i64) -> Path {
    Path::from(format!(
        "topic={topic}/partition={partition}/{first:020}-{last:020}.parquet"
    ))
}

/// The error file next to a slot's Parquet file (records that did not fit
/// the value schema, one JSON line each).
pub fn errors_path(topic: &str, partition: i32, first: i64, last: i64) -> Path {
    Path::from(format!(
        "topic={topic}/partition={partition}/{first:020}-{last:020}.errors.jsonl"
    ))
}

/// The JSON value schema used for a topic's exports at a destination (Arrow
/// schema as JSON), saved so later runs write the same columns.
pub fn value_schema_path(topic: &str) -> Path {
    Path::from(format!("topic={topic}/_value_schema.json"))
}

/// The offset range a file name stands for, if it is one of ours.
pub fn parse_file_name(name: &str) -> Option<(i64, i64)> {
    let stem = name.strip_suffix(".parquet")?;
    let (a, b) = stem.split_once('-')?;
    if a.len() != 20 || b.len() != 20 {
        return None;
    }
    Some((a.parse().ok()?, b.parse().ok()?))
}

/// The checkpoint of a topic's exports at a destination.
pub fn checkpoint_path(topic: &str) -> Path {
    Path::from(format!("topic={topic}/_checkpoint.json"))
}

/// What the checkpoint holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub topic: String,
    /// Partition → offset after the last exported record.
    pub next_offsets: BTreeMap<i32, i64>,
}

/// The slots `[first, last]` covering offsets `from..until`, cut at
/// multiples of `per_file`.
pub fn slots(from: i64, until: i64, per_file: i64) -> Vec<(i64, i64)> {
    let per_file = per_file.max(1);
    let mut out = Vec::new();
    let mut at = from;
    while at < until {
        let slot_end = (at / per_file + 1) * per_file;
        let last = slot_end.min(until) - 1;
        out.push((at, last));
        at = last + 1;
    }
    out
}

/// What one slot needs, given the offset ranges of the files already at the
/// destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SlotAction {
    /// One file already holds every offset of the slot's range: write
    /// nothing; `redundant` files lie inside that file (left by a run killed
    /// before it removed them) and go.
    Covered { redundant: Vec<(i64, i64)> },
    /// Write `range`, then delete `replaced` (files inside it).
    Write {
        range: (i64, i64),
        replaced: Vec<(i64, i64)>,
    },
}

/// Decide the slot `first..=last` so that, whatever files earlier runs left
/// (another `--from`/`--until`, retention since, a kill between writing a
/// file and deleting what it replaces), the destination ends with every
/// offset once: a file is only ever deleted when another file holds all its
/// offsets, and a new file never overlaps a file that is kept.
pub fn plan_slot(first: i64, last: i64, existing: &[(i64, i64)]) -> SlotAction {
    let inside = |(a, b): (i64, i64), (lo, hi): (i64, i64)| a >= lo && b <= hi;
    let covered = |holder: (i64, i64)| SlotAction::Covered {
        redundant: existing
            .iter()
            .copied()
            .filter(|&r| r != holder && inside(r, holder))
            .collect(),
    };
    if let Some(&holder) = existing
        .iter()
        .filter(|&&(a, b)| a <= first && b >= last)
        .max_by_key(|&&(a, b)| b - a)
    {
        return covered(holder);
    }
    // Files sticking out of the slot's range on one side are kept; the new
    // file starts or ends where they do.
    let (mut start, mut end) = (first, last);
    for &(a, b) in existing {
        if a < first && b >= first {
            start = start.max(b + 1);
        }
        if b > last && a <= last {
            end = end.min(a - 1);
        }
    }
    if start > end {
        return SlotAction::Covered {
            redundant: Vec::new(),
        };
    }
    if existing.contains(&(start, end)) {
        return covered((start, end));
    }
    SlotAction::Write {
        range: (start, end),
        replaced: existing
            .iter()
            .copied()
            .filter(|&r| inside(r, (start, end)))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_sort_and_parse() {
        let p = file_path("orders", 3, 100, 199);
        assert_eq!(
            p.as_ref(),
            "topic=orders/partition=3/00000000000000000100-00000000000000000199.parquet"
        );
        assert_eq!(
            parse_file_name(p.filename().expect("name")),
            Some((100, 199))
        );
        assert_eq!(parse_file_name("_checkpoint.json"), None);
        assert_eq!(parse_file_name("1-2.parquet"), None);
    }

    #[test]
    fn slots_never_lose_or_duplicate_offsets() {
        use SlotAction::*;
        let write = |range, replaced: &[(i64, i64)]| Write {
            range,
            replaced: replaced.to_vec(),
        };
        let none = Covered { redundant: vec![] };
        // Nothing there yet.
        assert_eq!(plan_slot(100, 199, &[]), write((100, 199), &[]));
        // Same file: skip.
        assert_eq!(plan_slot(100, 199, &[(100, 199)]), none);
        // Retention moved the log start, or --from/--until narrowed the
        // range: the wider file already holds the records.
        assert_eq!(plan_slot(150, 199, &[(100, 199)]), none);
        assert_eq!(plan_slot(100, 149, &[(100, 199)]), none);
        // The tail of an earlier run is replaced by the full slot.
        assert_eq!(
            plan_slot(100, 199, &[(100, 149)]),
            write((100, 199), &[(100, 149)])
        );
        assert_eq!(
            plan_slot(100, 199, &[(100, 149), (150, 199)]),
            write((100, 199), &[(100, 149), (150, 199)])
        );
        // Killed after writing the full slot, before deleting the tail.
        assert_eq!(
            plan_slot(100, 199, &[(100, 149), (100, 199)]),
            Covered {
                redundant: vec![(100, 149)]
            }
        );
        // A kept file sticking out on one side trims the new file.
        assert_eq!(plan_slot(100, 179, &[(150, 199)]), write((100, 149), &[]));
        assert_eq!(plan_slot(120, 199, &[(100, 129)]), write((130, 199), &[]));
        assert_eq!(plan_slot(120, 179, &[(100, 149), (150, 199)]), none);
    }

    #[test]
    fn slots_align_to_multiples() {
        assert_eq!(slots(0, 250, 100), vec![(0, 99), (100, 199), (200, 249)]);
        assert_eq!(slots(150, 250, 100), vec![(150, 199), (200, 249)]);
        assert_eq!(slots(5, 5, 100), Vec::<(i64, i64)>::new());
        assert_eq!(slots(0, 3, 0), vec![(0, 0), (1, 1), (2, 2)]);
    }
}
