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
    fn slots_align_to_multiples() {
        assert_eq!(slots(0, 250, 100), vec![(0, 99), (100, 199), (200, 249)]);
        assert_eq!(slots(150, 250, 100), vec![(150, 199), (200, 249)]);
        assert_eq!(slots(5, 5, 100), Vec::<(i64, i64)>::new());
        assert_eq!(slots(0, 3, 0), vec![(0, 0), (1, 1), (2, 2)]);
    }
}
