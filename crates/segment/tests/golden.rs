//! Golden bytes for segment format v1: a fixed small segment must encode to
//! exactly `tests/golden/v1.hex`, and that file must decode to the expected
//! footer. Never regenerate the file to make this pass; a format change
//! gets a new version, a new golden file, and keeps this one.

use bytes::Bytes;
use tributary_segment::{read_footer, ChunkInfo, PushBatch, SegmentBuilder};
use uuid::Uuid;

const GOLDEN_V1: &str = include_str!("golden/v1.hex");

const TOPIC: Uuid = Uuid::from_u128(0x0011_2233_4455_6677_8899_aabb_ccdd_eeff);

/// Parses the hex file: `#` starts a comment, whitespace is ignored.
fn parse_hex(text: &str) -> Vec<u8> {
    let digits: String = text
        .lines()
        .map(|line| line.split('#').next().unwrap_or(""))
        .flat_map(|line| line.chars())
        .filter(|c| !c.is_whitespace())
        .collect();
    assert_eq!(digits.len() % 2, 0, "odd number of hex digits");
    (0..digits.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&digits[i..i + 2], 16).expect("hex digit"))
        .collect()
}

fn to_hex(bytes: &[u8]) -> String {
    bytes
        .chunks(16)
        .map(|line| line.iter().map(|b| format!("{b:02x}")).collect::<String>())
        .collect::<Vec<_>>()
        .join("\n")
}

fn batch(bytes: &'static [u8], records: i64, first_ts: i64, max_ts: i64) -> PushBatch {
    PushBatch {
        bytes: Bytes::from_static(bytes),
        record_count: records,
        offset_count: records,
        first_timestamp: first_ts,
        max_timestamp: max_ts,
    }
}

/// The fixed segment: partition 3 gets two batches, partition 7 one, pushed
/// interleaved. Each fake batch starts with 8 bytes of 0xff standing in for
/// a base offset, which the builder must zero.
fn golden_segment() -> Bytes {
    let mut b = SegmentBuilder::new();
    b.push_batch(
        TOPIC,
        3,
        batch(b"\xff\xff\xff\xff\xff\xff\xff\xffAAAA", 2, 1_000, 1_005),
    );
    b.push_batch(
        TOPIC,
        7,
        batch(b"\xff\xff\xff\xff\xff\xff\xff\xffBB", 1, 2_000, 2_000),
    );
    b.push_batch(
        TOPIC,
        3,
        batch(b"\xff\xff\xff\xff\xff\xff\xff\xffCCC", 3, 990, 1_010),
    );
    b.finish().bytes
}

#[test]
fn v1_golden_bytes() {
    let expected = parse_hex(GOLDEN_V1);
    let actual = golden_segment();
    assert_eq!(
        actual.as_ref(),
        expected.as_slice(),
        "segment bytes changed; actual:\n{}",
        to_hex(&actual)
    );
}

#[test]
fn v1_golden_decodes() {
    let chunks = read_footer(&parse_hex(GOLDEN_V1)).expect("golden footer");
    assert_eq!(
        chunks,
        vec![
            ChunkInfo {
                topic_id: TOPIC,
                partition: 3,
                byte_start: 10,
                byte_len: 12 + 11,
                batch_count: 2,
                record_count: 5,
                offset_count: 5,
                first_timestamp: 990,
                max_timestamp: 1_010,
            },
            ChunkInfo {
                topic_id: TOPIC,
                partition: 7,
                byte_start: 33,
                byte_len: 10,
                batch_count: 1,
                record_count: 1,
                offset_count: 1,
                first_timestamp: 2_000,
                max_timestamp: 2_000,
            },
        ]
    );
}
