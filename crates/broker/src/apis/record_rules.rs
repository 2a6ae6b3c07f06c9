//! The per-record rules a topic's configs set for produced records (Kafka's
//! `LogValidator`): a compacted topic needs a key on every record, and a
//! CreateTime timestamp must lie within `message.timestamp.before.max.ms`
//! and `message.timestamp.after.max.ms` of the broker's clock. A partition
//! with a bad record is refused whole, each bad record named, as Kafka
//! answers (Produce v8+ `record_errors`).
//!
//! Batches stay as the producer compressed them: the records are only read
//! (streaming) when a rule can fail. The future bound is checked against the
//! header's `maxTimestamp` first, so a topic that is not compacted and has
//! no past bound costs nothing per record.

use kafka_protocol::ResponseError;
use tributary_meta::topic_config::TimestampType;
use tributary_meta::TopicConfig;
use tributary_protocol::batch::{scan_records, BatchError, BatchView};

/// Kafka's "no timestamp": exempt from the bounds, as on Kafka.
const NO_TIMESTAMP: i64 = -1;

/// At most this many bad records are named in one answer (a batch of a
/// million keyless records gets one error code, not a million messages).
pub const MAX_RECORD_ERRORS: usize = 1000;

/// Why a partition's records were refused.
#[derive(Debug, PartialEq, Eq)]
pub struct Refusal {
    /// INVALID_TIMESTAMP if any timestamp is out of bounds, else
    /// INVALID_RECORD.
    pub code: i16,
    /// The answer's message.
    pub message: String,
    /// (index of the record among the partition's records, why), at most
    /// [`MAX_RECORD_ERRORS`].
    pub records: Vec<(i32, String)>,
}

/// Check every record of one partition's `batches` against `config` at
/// broker time `now_ms`.
pub fn check(
    config: &TopicConfig,
    now_ms: i64,
    batches: &[BatchView],
) -> Result<Result<(), Refusal>, BatchError> {
    let create_time = config.timestamp_type == TimestampType::CreateTime;
    let earliest = now_ms.saturating_sub(config.timestamp_before_max_ms);
    let latest = now_ms.saturating_add(config.timestamp_after_max_ms);
    let mut records = Vec::new();
    let mut bad_timestamp = false;
    let mut bad = 0usize;
    let mut first_index = 0i64;
    for b in batches {
        let h = &b.header;
        let timed = create_time && !h.is_log_append_time();
        let scan =
            config.compact || (timed && (h.max_timestamp > latest || earliest > NO_TIMESTAMP));
        if scan {
            scan_records(&b.bytes, |r| {
                let why = if config.compact && !r.has_key {
                    Some("Compacted topic cannot accept message without key".to_owned())
                } else if timed
                    && r.timestamp != NO_TIMESTAMP
                    && !(earliest..=latest).contains(&r.timestamp)
                {
                    bad_timestamp = true;
                    Some(format!(
                        "Timestamp {} of message with offset {} is out of range. The timestamp \
                         should be within [{earliest}, {latest}]",
                        r.timestamp, r.offset_delta
                    ))
                } else {
                    None
                };
                if let Some(why) = why {
                    bad += 1;
                    if records.len() < MAX_RECORD_ERRORS {
                        let index = first_index.saturating_add(r.index as i64);
                        records.push((i32::try_from(index).unwrap_or(i32::MAX), why));
                    }
                }
            })?;
        }
        first_index = first_index.saturating_add(i64::from(h.record_count));
    }
    if bad == 0 {
        return Ok(Ok(()));
    }
    let (code, kind) = if bad_timestamp {
        (ResponseError::InvalidTimestamp.code(), "invalid timestamp")
    } else {
        (
            ResponseError::InvalidRecord.code(),
            "no key for a compacted topic",
        )
    };
    let first = &records[0].1;
    Ok(Err(Refusal {
        code,
        message: format!("{bad} record(s) rejected ({kind}); the first: {first}"),
        records,
    }))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use bytes::{Bytes, BytesMut};
    use kafka_protocol::records::{
        Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType as Ts,
    };
    use tributary_protocol::batch::split_batches;

    use super::*;

    const NOW: i64 = 1_700_000_000_000;

    fn batch(records: &[(Option<&str>, i64)], compression: Compression) -> Vec<BatchView> {
        let records: Vec<Record> = records
            .iter()
            .enumerate()
            .map(|(i, (key, timestamp))| Record {
                transactional: false,
                control: false,
                delete_horizon: false,
                partition_leader_epoch: -1,
                producer_id: -1,
                producer_epoch: -1,
                timestamp_type: Ts::Creation,
                offset: i as i64,
                sequence: i as i32 - 1,
                timestamp: *timestamp,
                key: key.map(|k| Bytes::copy_from_slice(k.as_bytes())),
                value: Some(Bytes::from_static(b"v")),
                headers: Default::default(),
            })
            .collect();
        let mut buf = BytesMut::new();
        RecordBatchEncoder::encode(
            &mut buf,
            &records,
            &RecordEncodeOptions {
                version: 2,
                compression,
            },
        )
        .expect("encode");
        split_batches(&buf.freeze()).expect("split")
    }

    fn config(pairs: &[(&str, &str)]) -> TopicConfig {
        let explicit: BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        TopicConfig::resolve(&explicit, 1 << 20)
    }

    #[test]
    fn compacted_topics_need_keys() {
        let compact = config(&[("cleanup.policy", "compact")]);
        for codec in [Compression::None, Compression::Zstd, Compression::Snappy] {
            let b = batch(&[(Some("a"), NOW), (None, NOW), (Some(""), NOW)], codec);
            let refusal = check(&compact, NOW, &b)
                .expect("readable")
                .expect_err("refused");
            assert_eq!(refusal.code, ResponseError::InvalidRecord.code());
            assert_eq!(refusal.records.len(), 1, "an empty key is a key");
            assert_eq!(refusal.records[0].0, 1);
            assert!(
                refusal.message.contains("without key"),
                "{}",
                refusal.message
            );
            let plain = config(&[]);
            assert_eq!(check(&plain, NOW, &b), Ok(Ok(())));
        }
    }

    #[test]
    fn timestamps_within_the_bounds() {
        let defaults = config(&[]);
        // Kafka 4's default: at most an hour ahead; any age.
        let ok = batch(
            &[(None, 0), (None, NOW + 3_600_000), (None, -1)],
            Compression::None,
        );
        assert_eq!(check(&defaults, NOW, &ok), Ok(Ok(())));
        let ahead = batch(&[(None, NOW), (None, NOW + 3_600_001)], Compression::Lz4);
        let refusal = check(&defaults, NOW, &ahead)
            .expect("readable")
            .expect_err("refused");
        assert_eq!(refusal.code, ResponseError::InvalidTimestamp.code());
        assert_eq!(refusal.records.len(), 1);
        assert_eq!(refusal.records[0].0, 1);

        let bounded = config(&[("message.timestamp.before.max.ms", "1000")]);
        let old = batch(&[(None, NOW - 1000), (None, NOW - 1001)], Compression::Gzip);
        let refusal = check(&bounded, NOW, &old)
            .expect("readable")
            .expect_err("refused");
        assert_eq!(refusal.records, vec![(1, refusal.records[0].1.clone())]);

        // LogAppendTime topics ignore the producer's timestamps.
        let append = config(&[
            ("message.timestamp.type", "LogAppendTime"),
            ("message.timestamp.before.max.ms", "1000"),
        ]);
        assert_eq!(check(&append, NOW, &old), Ok(Ok(())));
    }

    #[test]
    fn indexes_count_across_batches_and_errors_are_bounded() {
        let compact = config(&[("cleanup.policy", "compact")]);
        let mut batches = batch(&[(Some("a"), NOW), (Some("b"), NOW)], Compression::None);
        let many: Vec<(Option<&str>, i64)> = vec![(None, NOW); MAX_RECORD_ERRORS + 5];
        batches.extend(batch(&many, Compression::None));
        let refusal = check(&compact, NOW, &batches)
            .expect("readable")
            .expect_err("refused");
        assert_eq!(refusal.records.len(), MAX_RECORD_ERRORS);
        assert_eq!(refusal.records[0].0, 2);
        assert!(refusal
            .message
            .starts_with(&format!("{} record(s)", MAX_RECORD_ERRORS + 5)));
    }
}
