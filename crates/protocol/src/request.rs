//! Request frames: the fixed prefix every Kafka request starts with, and
//! decoding of the request header and body with `kafka-protocol`.
//!
//! Contract:
//! - A frame is one request without its 4-byte length prefix.
//! - Nothing here panics on malformed input.
//! - Decoding reserves memory only for what the frame's bytes can back: the
//!   vendored `kafka-protocol` (`vendor/kafka-protocol/TRIBUTARY.md`) caps
//!   every pre-allocation for a length read from the wire at the bytes left,
//!   so a request costs a small multiple of its size, never what its array
//!   lengths claim. `tributary-broker`'s `tests/decode_memory.rs` checks this
//!   for every API and version the router supports; the `request` fuzz target
//!   checks it for arbitrary frames.

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

/// Decode the header and body of `frame` (a whole frame, prefix included)
/// as `api_key` at `version`. The caller decides beforehand whether it
/// serves that API and version.
pub fn decode_request(
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
}
