//! Request frames: the fixed prefix every Kafka request starts with, and
//! decoding of the request header and body with `kafka-protocol`.
//!
//! Contract:
//! - A frame is one request without its 4-byte length prefix.
//! - Nothing here panics on malformed input.
//! - Decoding reserves memory only for what the frame's bytes can back: the
//!   vendored `kafka-protocol` (`vendor/kafka-protocol/TRIBUTARY.md`) caps
//!   every pre-allocation for a length read from the wire at the bytes left,
//!   so a request never reserves what its array lengths claim; and the
//!   array items one decode produces are bounded by [`item_allowance`] (a
//!   frame of many items a few bytes long each would otherwise cost ~100x
//!   its size in memory). `tributary-broker`'s `tests/decode_memory.rs`
//!   checks both for every API and version the router supports; the
//!   `request` fuzz target checks it for arbitrary frames.

use bytes::Bytes;
use kafka_protocol::messages::{ApiKey, RequestHeader, RequestKind};
use kafka_protocol::protocol::Decodable;

/// Bytes every request frame starts with: api key, api version, correlation id.
pub const FRAME_PREFIX_LEN: usize = 8;

/// The fixed start of a request frame, read before anything is decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FramePrefix {
    /// Raw API key (may be one `kafka-protocol` does not know).
    pub api_key: i16,
    /// Requested API version.
    pub version: i16,
    /// Echoed in the response header.
    pub correlation_id: i32,
}

/// Read the [`FramePrefix`]; `None` if the frame is shorter than
/// [`FRAME_PREFIX_LEN`].
pub fn frame_prefix(frame: &[u8]) -> Option<FramePrefix> {
    let p: &[u8; FRAME_PREFIX_LEN] = frame.first_chunk()?;
    Some(FramePrefix {
        api_key: i16::from_be_bytes([p[0], p[1]]),
        version: i16::from_be_bytes([p[2], p[3]]),
        correlation_id: i32::from_be_bytes([p[4], p[5], p[6], p[7]]),
    })
}

/// Why a request frame could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// The request header (correlation id, client id, tagged fields) is malformed.
    #[error("bad request header api={api_key:?} version={version}: {reason}")]
    Header {
        api_key: ApiKey,
        version: i16,
        reason: String,
    },
    /// The request body does not decode as `api_key` at `version`.
    #[error("bad request body api={api_key:?} version={version}: {reason}")]
    Body {
        api_key: ApiKey,
        version: i16,
        reason: String,
    },
}

/// In-memory bytes of array items a request of `frame_len` bytes may
/// decode to: 16x its first MiB plus 2x the rest, and 64 KiB for any
/// frame. Real requests stay far below: their big frames are Produce
/// record data (kept as slices of the frame, not array items), and their
/// arrays' items are tens of bytes on the wire for at most ~100 in memory
/// (OffsetCommit for 100,000 partitions, a 2 MB frame, needs ~9 MB of an
/// ~18 MB allowance); a crafted frame of tiny items hits the limit and is
/// refused as malformed.
pub fn item_allowance(frame_len: usize) -> usize {
    const MIB: usize = 1 << 20;
    let dense = frame_len.min(MIB);
    let rest = frame_len - dense;
    (64 << 10) + dense.saturating_mul(16) + rest.saturating_mul(2)
}

/// Decode the header and body of `frame` (a whole frame, prefix included)
/// as `api_key` at `version`. The caller decides beforehand whether it
/// serves that API and version.
pub fn decode_request(
    frame: Bytes,
    api_key: ApiKey,
    version: i16,
) -> Result<(RequestHeader, RequestKind), RequestError> {
    let allowance = item_allowance(frame.len());
    kafka_protocol::protocol::types::with_item_allowance(allowance, || {
        decode_within_allowance(frame, api_key, version)
    })
}

fn decode_within_allowance(
    mut frame: Bytes,
    api_key: ApiKey,
    version: i16,
) -> Result<(RequestHeader, RequestKind), RequestError> {
    let header = RequestHeader::decode(&mut frame, api_key.request_header_version(version))
        .map_err(|e| RequestError::Header {
            api_key,
            version,
            reason: format!("{e:#}"),
        })?;
    let request =
        RequestKind::decode(api_key, &mut frame, version).map_err(|e| RequestError::Body {
            api_key,
            version,
            reason: format!("{e:#}"),
        })?;
    Ok((header, request))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::{BufMut, BytesMut};

    #[test]
    fn prefix_needs_eight_bytes() {
        assert_eq!(frame_prefix(&[0; 7]), None);
        let p = frame_prefix(&[0, 3, 0, 12, 0, 0, 1, 2, 9]).expect("prefix");
        assert_eq!(
            p,
            FramePrefix {
                api_key: 3,
                version: 12,
                correlation_id: 258
            }
        );
    }

    #[test]
    fn decodes_a_metadata_request_and_rejects_its_truncations() {
        let mut f = BytesMut::new();
        f.put_i16(ApiKey::Metadata as i16);
        f.put_i16(1);
        f.put_i32(7);
        f.put_i16(2);
        f.put_slice(b"me");
        f.put_i32(1);
        f.put_i16(1);
        f.put_slice(b"t");
        let frame = f.freeze();
        let (header, request) =
            decode_request(frame.clone(), ApiKey::Metadata, 1).expect("decodes");
        assert_eq!(header.correlation_id, 7);
        let RequestKind::Metadata(m) = request else {
            panic!("not metadata: {request:?}");
        };
        assert_eq!(m.topics.map(|t| t.len()), Some(1));
        for len in FRAME_PREFIX_LEN..frame.len() {
            assert!(
                decode_request(frame.slice(..len), ApiKey::Metadata, 1).is_err(),
                "truncated to {len} decoded"
            );
        }
    }

    /// A whole frame for `request` at `version`.
    fn frame_of<R: kafka_protocol::protocol::Request>(request: &R, version: i16) -> Bytes {
        use kafka_protocol::protocol::{Encodable, StrBytes};
        let header = RequestHeader::default()
            .with_request_api_key(R::KEY)
            .with_request_api_version(version)
            .with_correlation_id(1)
            .with_client_id(Some(StrBytes::from_static_str("test")));
        let mut f = BytesMut::new();
        header
            .encode(&mut f, R::header_version(version))
            .expect("header encodes");
        request.encode(&mut f, version).expect("request encodes");
        f.freeze()
    }

    /// The item allowance never refuses what real clients send: big
    /// consumer groups, many topics, short group names.
    #[test]
    fn large_real_requests_fit_the_item_allowance() {
        use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
        use kafka_protocol::messages::offset_commit_request::{
            OffsetCommitRequestPartition, OffsetCommitRequestTopic,
        };
        use kafka_protocol::messages::{
            DescribeGroupsRequest, GroupId, MetadataRequest, OffsetCommitRequest, TopicName,
        };
        use kafka_protocol::protocol::StrBytes;

        let commit = OffsetCommitRequest::default()
            .with_group_id(GroupId(StrBytes::from_static_str("big-group")))
            .with_topics(vec![OffsetCommitRequestTopic::default()
                .with_name(TopicName(StrBytes::from_static_str("events")))
                .with_partitions(
                    (0..100_000)
                        .map(|p| {
                            OffsetCommitRequestPartition::default()
                                .with_partition_index(p)
                                .with_committed_offset(1_000_000)
                        })
                        .collect(),
                )]);
        let metadata = MetadataRequest::default().with_topics(Some(
            (0..20_000)
                .map(|i| {
                    MetadataRequestTopic::default()
                        .with_name(Some(TopicName(StrBytes::from_string(format!("t{i}")))))
                })
                .collect(),
        ));
        let groups = DescribeGroupsRequest::default().with_groups(
            (0..50_000)
                .map(|i| GroupId(StrBytes::from_string(format!("{}", i % 10))))
                .collect(),
        );
        for (frame, key, version) in [
            (frame_of(&commit, 8), ApiKey::OffsetCommit, 8),
            (frame_of(&commit, 2), ApiKey::OffsetCommit, 2),
            (frame_of(&metadata, 12), ApiKey::Metadata, 12),
            (frame_of(&metadata, 1), ApiKey::Metadata, 1),
            (frame_of(&groups, 5), ApiKey::DescribeGroups, 5),
        ] {
            let len = frame.len();
            if let Err(e) = decode_request(frame, key, version) {
                panic!("{key:?} v{version} of {len} bytes refused: {e}");
            }
        }
    }

    /// A frame of many tiny items (empty topic entries in a Produce) would
    /// decode to ~100x its size; it is refused as malformed instead.
    #[test]
    fn frames_of_tiny_items_are_refused() {
        let items: u32 = 400_000;
        let mut f = BytesMut::new();
        f.put_i16(ApiKey::Produce as i16);
        f.put_i16(9);
        f.put_i32(1);
        f.put_i16(-1); // no client id
        f.put_u8(0); // header tags
        f.put_u8(0); // transactional id: null
        f.put_i16(1); // acks
        f.put_i32(1000); // timeout
        let mut n = items + 1;
        while n >= 0x80 {
            f.put_u8((n as u8) | 0x80);
            n >>= 7;
        }
        f.put_u8(n as u8);
        for _ in 0..items {
            f.put_u8(1); // empty name
            f.put_u8(1); // no partitions
            f.put_u8(0); // no tags
        }
        f.put_u8(0); // request tags
        let frame = f.freeze();
        let len = frame.len();
        // Without the allowance it decodes (to ~100x its size).
        let unbounded = kafka_protocol::protocol::types::with_item_allowance(usize::MAX, || {
            decode_within_allowance(frame.clone(), ApiKey::Produce, 9)
        });
        assert!(
            unbounded.is_ok(),
            "the crafted frame is well-formed: {unbounded:?}"
        );
        let err = decode_request(frame, ApiKey::Produce, 9).expect_err("refused");
        assert!(
            err.to_string()
                .contains("exceed what the request may decode"),
            "{err} ({len} bytes)"
        );
    }
}
