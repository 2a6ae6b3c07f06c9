//! Record batches as the simulated producers write them (values `id:k`)
//! and as the readers decode them.

use bytes::{Bytes, BytesMut};
use kafka_protocol::records::{
    Compression, Record, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};
use tributary_meta::{ProducerBatch, TxnRole};
use tributary_storage::AppendBatch;

/// A transactional producer's part of a batch: its transactional id,
/// producer id, epoch and the batch's base sequence.
pub(crate) type TxnProducer<'a> = (&'a str, i64, i16, i32);

/// The records of `count` records `id:0 .. id:count-1`, as one RecordBatch
/// v2; transactional when `txn` names the producer.
pub(crate) fn encode_records(
    id: u64,
    count: u32,
    timestamp: i64,
    txn: Option<TxnProducer<'_>>,
) -> AppendBatch {
    let (producer_id, producer_epoch, base_sequence) =
        txn.map_or((-1, -1, -1), |(_, p, e, s)| (p, e, s));
    let records: Vec<Record> = (0..count)
        .map(|k| Record {
            transactional: txn.is_some(),
            control: false,
            delete_horizon: false,
            partition_leader_epoch: 0,
            producer_id,
            producer_epoch,
            timestamp_type: TimestampType::Creation,
            offset: i64::from(k),
            // kafka-protocol starts a new batch where offset - sequence
            // changes: -1 throughout, or base + k.
            sequence: if txn.is_some() {
                base_sequence + k as i32
            } else {
                -1
            },
            timestamp,
            key: None,
            value: Some(Bytes::from(format!("{id}:{k}"))),
            headers: Default::default(),
        })
        .collect();
    let mut buf = BytesMut::new();
    RecordBatchEncoder::encode(
        &mut buf,
        &records,
        &RecordEncodeOptions {
            version: 2,
            compression: Compression::None,
        },
    )
    .expect("a small uncompressed batch encodes");
    AppendBatch {
        bytes: buf.freeze(),
        record_count: i64::from(count),
        offset_count: i64::from(count),
        first_timestamp: timestamp,
        max_timestamp: timestamp,
        producer: txn.map(
            |(_, producer_id, producer_epoch, base_sequence)| ProducerBatch {
                producer_id,
                producer_epoch,
                base_sequence,
                last_sequence: base_sequence + count as i32 - 1,
            },
        ),
        txn: match txn {
            Some((id, ..)) => TxnRole::Data {
                transactional_id: id.into(),
            },
            None => TxnRole::None,
        },
    }
}

/// Offset and `(id, k)` of each record read; `None` for a control record
/// (a transaction marker), which holds its offset with no record.
pub(crate) type Decoded = Vec<(i64, Option<(u64, u32)>)>;

/// Every record in fetched batches (CRC checked).
pub(crate) fn decode(records: &Bytes) -> Result<Decoded, String> {
    let mut buf = records.clone();
    let sets = RecordBatchDecoder::decode_all(&mut buf).map_err(|e| format!("{e:#}"))?;
    let mut out = Vec::new();
    for set in sets {
        for r in set.records {
            if r.control {
                out.push((r.offset, None));
                continue;
            }
            let value = r.value.unwrap_or_default();
            let text = std::str::from_utf8(&value).map_err(|e| e.to_string())?;
            let parsed = text
                .split_once(':')
                .and_then(|(id, k)| Some((id.parse().ok()?, k.parse().ok()?)));
            let Some((id, k)) = parsed else {
                return Err(format!("record value {text:?} is not id:k"));
            };
            out.push((r.offset, Some((id, k))));
        }
    }
    Ok(out)
}
