//! The fuzz targets' seed corpus (`fuzz/corpus/`, README: Fuzzing) for the
//! inputs that have a binary format: request frames for every API and
//! version the router supports, record batches in every codec, and segment
//! objects. `write_fuzz_seeds` (ignored) regenerates them:
//!
//! ```text
//! cargo test -p tributary-broker --test fuzz_seeds -- --ignored
//! ```
//!
//! `every_supported_request_version_has_a_seed` keeps the corpus in step
//! with the router: a new API or version fails it until the seeds are
//! regenerated.

use std::path::{Path, PathBuf};

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, RequestHeader};
use kafka_protocol::protocol::{Encodable, StrBytes};
use kafka_protocol::records::{
    Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};
use tributary_broker::router;
use tributary_protocol::request;
use tributary_segment::{PushBatch, SegmentBuilder};

fn corpus(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(target)
}

fn seed_name(api_key: ApiKey, version: i16) -> String {
    format!("{api_key:?}-v{version}")
}

/// Frame `body` with a header for `api_key`/`version`.
fn frame(api_key: ApiKey, version: i16, body: &[u8]) -> Bytes {
    let mut f = BytesMut::new();
    RequestHeader::default()
        .with_request_api_key(api_key as i16)
        .with_request_api_version(version)
        .with_correlation_id(1)
        .with_client_id(Some(StrBytes::from_static_str("rdkafka")))
        .encode(&mut f, api_key.request_header_version(version))
        .expect("header encodes");
    f.put_slice(body);
    f.freeze()
}

/// The richest well-formed request of `api_key`/`version` we can make
/// without knowing its schema: filler bytes (empty strings and arrays, zero
/// numbers) with a length claiming two items at each position in turn,
/// decoded and encoded again; the longest encoding wins (it has the most
/// nested structure for the fuzzer to start from).
fn request_seed(api_key: ApiKey, version: i16) -> Bytes {
    let flexible = api_key.request_header_version(version) >= 2;
    let fill = if flexible { 1u8 } else { 0 };
    let mut best: Option<Bytes> = None;
    for at in 0..=64 {
        let mut body = vec![fill; at];
        if flexible {
            body.push(3); // two items, as an unsigned varint N+1
        } else {
            body.extend_from_slice(&2i32.to_be_bytes());
        }
        body.resize(body.len() + 512, fill);
        let Ok((_, decoded)) =
            request::decode_request(frame(api_key, version, &body), api_key, version)
        else {
            continue;
        };
        let mut encoded = BytesMut::new();
        if decoded.encode(&mut encoded, version).is_err() {
            continue;
        }
        if best.as_ref().is_none_or(|b| encoded.len() > b.len()) {
            best = Some(encoded.freeze());
        }
    }
    let body = best.unwrap_or_else(|| panic!("no decodable body for {api_key:?} v{version}"));
    frame(api_key, version, &body)
}

fn record(offset: i64, with_header: bool) -> Record {
    let mut record = Record {
        transactional: false,
        control: false,
        delete_horizon: false,
        partition_leader_epoch: 0,
        producer_id: -1,
        producer_epoch: -1,
        timestamp_type: TimestampType::Creation,
        offset,
        sequence: -1,
        timestamp: 1_700_000_000_000 + offset,
        key: (offset % 2 == 0).then(|| Bytes::from(format!("key-{offset}"))),
        value: Some(Bytes::from(format!("value-{offset}"))),
        headers: Default::default(),
    };
    if with_header {
        record.headers.insert(
            StrBytes::from_static_str("trace"),
            Some(Bytes::from_static(b"abc")),
        );
    }
    record
}

fn batch(compression: Compression, count: i64) -> Bytes {
    let records: Vec<Record> = (0..count).map(|o| record(o, o == 1)).collect();
    let mut buf = BytesMut::new();
    RecordBatchEncoder::encode(
        &mut buf,
        &records,
        &RecordEncodeOptions {
            version: 2,
            compression,
        },
    )
    .expect("batch encodes");
    buf.freeze()
}

/// Seeds of the `record_batch` and `segment` targets start with a flag
/// byte; 0 leaves the (valid) checksums as they are.
fn flagged(bytes: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8];
    out.extend_from_slice(bytes);
    out
}

fn write(target: &str, name: &str, bytes: &[u8]) {
    let dir = corpus(target);
    std::fs::create_dir_all(&dir).expect("create corpus dir");
    std::fs::write(dir.join(name), bytes).expect("write seed");
}

#[test]
#[ignore = "regenerates fuzz/corpus; run by hand"]
fn write_fuzz_seeds() {
    for spec in router::api_table() {
        for version in spec.min..=spec.max {
            write(
                "request",
                &seed_name(spec.key, version),
                &request_seed(spec.key, version),
            );
        }
    }
    let codecs = [
        ("none", Compression::None),
        ("gzip", Compression::Gzip),
        ("snappy", Compression::Snappy),
        ("lz4", Compression::Lz4),
        ("zstd", Compression::Zstd),
    ];
    for (name, codec) in codecs {
        write("record_batch", name, &flagged(&batch(codec, 3)));
    }
    let mut two = batch(Compression::None, 1).to_vec();
    two.extend_from_slice(&batch(Compression::Zstd, 2));
    write("record_batch", "two-batches", &flagged(&two));

    let mut builder = SegmentBuilder::new();
    let topics = [uuid::Uuid::from_u128(1), uuid::Uuid::from_u128(2)];
    for (i, (codec, count)) in [
        (Compression::None, 2),
        (Compression::Gzip, 3),
        (Compression::None, 1),
    ]
    .into_iter()
    .enumerate()
    {
        let bytes = batch(codec, count);
        builder.push_batch(
            topics[i % 2],
            i32::try_from(i).expect("small"),
            PushBatch {
                bytes,
                record_count: count,
                offset_count: count,
                first_timestamp: 1_700_000_000_000,
                max_timestamp: 1_700_000_000_000 + count - 1,
            },
        );
    }
    write("segment", "three-chunks", &flagged(&builder.finish().bytes));
    let mut one = SegmentBuilder::new();
    one.push_batch(
        topics[0],
        0,
        PushBatch {
            bytes: batch(Compression::Lz4, 2),
            record_count: 2,
            offset_count: 2,
            first_timestamp: 1_700_000_000_000,
            max_timestamp: 1_700_000_000_001,
        },
    );
    write("segment", "one-chunk", &flagged(&one.finish().bytes));
    write(
        "segment",
        "empty",
        &flagged(&SegmentBuilder::new().finish().bytes),
    );
}

#[test]
fn every_supported_request_version_has_a_seed() {
    let mut missing = Vec::new();
    for spec in router::api_table() {
        for version in spec.min..=spec.max {
            let path = corpus("request").join(seed_name(spec.key, version));
            let decodes = std::fs::read(&path).is_ok_and(|seed| {
                request::frame_prefix(&seed).is_some_and(|p| {
                    p.api_key == spec.key as i16
                        && p.version == version
                        && request::decode_request(Bytes::from(seed), spec.key, version).is_ok()
                })
            });
            if !decodes {
                missing.push(path.display().to_string());
            }
        }
    }
    assert!(
        missing.is_empty(),
        "request seeds missing or stale (cargo test -p tributary-broker --test fuzz_seeds -- --ignored):\n{}",
        missing.join("\n")
    );
}

/// The corpus stays small: it is checked in.
#[test]
fn seed_corpus_is_small() {
    fn size(dir: &Path) -> u64 {
        std::fs::read_dir(dir)
            .map(|entries| {
                entries
                    .flatten()
                    .map(|e| match e.metadata() {
                        Ok(m) if m.is_dir() => size(&e.path()),
                        Ok(m) => m.len(),
                        Err(_) => 0,
                    })
                    .sum()
            })
            .unwrap_or(0)
    }
    let total = size(&corpus(""));
    assert!(total < 1 << 20, "fuzz/corpus holds {total} bytes");
}
