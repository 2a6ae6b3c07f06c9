//! The membership a coordinator saves in the metadata store, and its
//! encoding.
//!
//! Kafka writes a group's metadata (generation, protocol, leader, members
//! with their subscription and assignment) to `__consumer_offsets` when a
//! generation's assignment is complete and when the group empties, so a new
//! coordinator carries a stable group on: its members' heartbeats and
//! commits of the current generation keep working. This is the same record,
//! kept as an opaque value by [`tributary_meta::GroupStore::save_group`].
//!
//! Encoding (big-endian): a version byte (1), the generation (`i32`), then
//! protocol type, protocol name and leader as optional strings, then a
//! member count (`u32`) and per member: id, optional instance id, client id,
//! client host (strings), session and rebalance timeouts in ms (`u32`),
//! metadata for the chosen protocol and assignment (byte strings). Strings
//! and byte strings are a `u32` length and the bytes; an absent optional is
//! length `u32::MAX`. Decoding checks every length against the bytes left,
//! so a damaged value is refused, never trusted.
//!
//! A KIP-848 consumer group (see [`super::consumer`]) is saved whenever its
//! group epoch, target assignment or a member's epoch, state or partitions
//! change, as Kafka writes those records: version byte 2, then the
//! [`SavedConsumerGroup`] as JSON (group and target epochs, subscribed
//! topics, target assignment, members with their epochs and partitions).

use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::consumer::SavedConsumerGroup;

const VERSION: u8 = 1;
const CONSUMER_VERSION: u8 = 2;

/// A saved group of either type.
#[derive(Debug)]
pub(super) enum Saved {
    Classic(SavedGroup),
    Consumer(SavedConsumerGroup),
}

impl Saved {
    pub(super) fn decode(b: &[u8]) -> Result<Saved, Damaged> {
        match b.first() {
            Some(&CONSUMER_VERSION) => serde_json::from_slice(&b[1..])
                .map(Saved::Consumer)
                .map_err(|_| Damaged("consumer group record")),
            _ => SavedGroup::decode(b).map(Saved::Classic),
        }
    }
}

impl SavedConsumerGroup {
    pub(super) fn encode(&self) -> Vec<u8> {
        let mut out = vec![CONSUMER_VERSION];
        // Serializing plain data to a Vec cannot fail; an empty record is
        // refused when read back, starting the group afresh.
        if let Ok(json) = serde_json::to_vec(self) {
            out.extend_from_slice(&json);
        }
        out
    }
}
const ABSENT: u32 = u32::MAX;

/// One member as saved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct SavedMember {
    pub id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub session_timeout: Duration,
    pub rebalance_timeout: Duration,
    /// The member's metadata for the group's protocol.
    pub metadata: Bytes,
    pub assignment: Bytes,
}

/// A group as saved: Stable with its members, or Empty (no members) with
/// the generation it reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct SavedGroup {
    pub generation_id: i32,
    pub protocol_type: Option<String>,
    pub protocol_name: Option<String>,
    pub leader: Option<String>,
    pub members: Vec<SavedMember>,
}

fn put_bytes(out: &mut BytesMut, b: &[u8]) {
    out.put_u32(u32::try_from(b.len()).unwrap_or(ABSENT - 1));
    out.put_slice(b);
}

fn put_opt(out: &mut BytesMut, s: Option<&str>) {
    match s {
        Some(s) => put_bytes(out, s.as_bytes()),
        None => out.put_u32(ABSENT),
    }
}

fn millis(d: Duration) -> u32 {
    u32::try_from(d.as_millis()).unwrap_or(u32::MAX)
}

/// Why a saved value could not be read.
#[derive(Debug, thiserror::Error)]
#[error("saved group state is damaged: {0}")]
pub(super) struct Damaged(&'static str);

fn get_u32(b: &mut &[u8]) -> Result<u32, Damaged> {
    if b.remaining() < 4 {
        return Err(Damaged("truncated"));
    }
    Ok(b.get_u32())
}

fn get_opt_bytes(b: &mut &[u8]) -> Result<Option<Bytes>, Damaged> {
    let len = get_u32(b)?;
    if len == ABSENT {
        return Ok(None);
    }
    let len = usize::try_from(len).map_err(|_| Damaged("length"))?;
    if b.remaining() < len {
        return Err(Damaged("length beyond the value"));
    }
    Ok(Some(b.copy_to_bytes(len)))
}

fn get_bytes(b: &mut &[u8]) -> Result<Bytes, Damaged> {
    get_opt_bytes(b)?.ok_or(Damaged("missing bytes"))
}

fn get_opt_str(b: &mut &[u8]) -> Result<Option<String>, Damaged> {
    get_opt_bytes(b)?
        .map(|v| String::from_utf8(v.to_vec()).map_err(|_| Damaged("not UTF-8")))
        .transpose()
}

fn get_str(b: &mut &[u8]) -> Result<String, Damaged> {
    get_opt_str(b)?.ok_or(Damaged("missing string"))
}

impl SavedGroup {
    pub(super) fn encode(&self) -> Vec<u8> {
        let mut out = BytesMut::new();
        out.put_u8(VERSION);
        out.put_i32(self.generation_id);
        put_opt(&mut out, self.protocol_type.as_deref());
        put_opt(&mut out, self.protocol_name.as_deref());
        put_opt(&mut out, self.leader.as_deref());
        out.put_u32(u32::try_from(self.members.len()).unwrap_or(ABSENT - 1));
        for m in &self.members {
            put_bytes(&mut out, m.id.as_bytes());
            put_opt(&mut out, m.instance_id.as_deref());
            put_bytes(&mut out, m.client_id.as_bytes());
            put_bytes(&mut out, m.client_host.as_bytes());
            out.put_u32(millis(m.session_timeout));
            out.put_u32(millis(m.rebalance_timeout));
            put_bytes(&mut out, &m.metadata);
            put_bytes(&mut out, &m.assignment);
        }
        out.to_vec()
    }

    pub(super) fn decode(mut b: &[u8]) -> Result<SavedGroup, Damaged> {
        let b = &mut b;
        if b.remaining() < 5 {
            return Err(Damaged("truncated"));
        }
        if b.get_u8() != VERSION {
            return Err(Damaged("unknown version"));
        }
        let generation_id = b.get_i32();
        let protocol_type = get_opt_str(b)?;
        let protocol_name = get_opt_str(b)?;
        let leader = get_opt_str(b)?;
        let count = get_u32(b)?;
        let mut members = Vec::new();
        for _ in 0..count {
            members.push(SavedMember {
                id: get_str(b)?,
                instance_id: get_opt_str(b)?,
                client_id: get_str(b)?,
                client_host: get_str(b)?,
                session_timeout: Duration::from_millis(u64::from(get_u32(b)?)),
                rebalance_timeout: Duration::from_millis(u64::from(get_u32(b)?)),
                metadata: get_bytes(b)?,
                assignment: get_bytes(b)?,
            });
        }
        if b.has_remaining() {
            return Err(Damaged("trailing bytes"));
        }
        Ok(SavedGroup {
            generation_id,
            protocol_type,
            protocol_name,
            leader,
            members,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> SavedGroup {
        SavedGroup {
            generation_id: 7,
            protocol_type: Some("consumer".into()),
            protocol_name: Some("range".into()),
            leader: Some("m-1".into()),
            members: vec![
                SavedMember {
                    id: "m-1".into(),
                    instance_id: None,
                    client_id: "c".into(),
                    client_host: "/127.0.0.1".into(),
                    session_timeout: Duration::from_millis(10_000),
                    rebalance_timeout: Duration::from_millis(300_000),
                    metadata: Bytes::from_static(b"sub"),
                    assignment: Bytes::from_static(b"asg"),
                },
                SavedMember {
                    id: "i-2".into(),
                    instance_id: Some("i".into()),
                    client_id: String::new(),
                    client_host: String::new(),
                    session_timeout: Duration::from_millis(6_000),
                    rebalance_timeout: Duration::from_millis(6_000),
                    metadata: Bytes::new(),
                    assignment: Bytes::new(),
                },
            ],
        }
    }

    #[test]
    fn round_trips() {
        let g = sample();
        assert_eq!(SavedGroup::decode(&g.encode()).expect("decode"), g);
        let empty = SavedGroup {
            generation_id: 3,
            protocol_type: None,
            protocol_name: None,
            leader: None,
            members: Vec::new(),
        };
        assert_eq!(SavedGroup::decode(&empty.encode()).expect("decode"), empty);
    }

    #[test]
    fn consumer_groups_round_trip() {
        use super::super::consumer::{MemberRecord, MemberState};
        let t = uuid::Uuid::from_u128(7);
        let g = SavedConsumerGroup {
            epoch: 4,
            target_epoch: 4,
            members: vec![MemberRecord {
                id: "m".into(),
                instance_id: Some("i".into()),
                rack_id: None,
                client_id: "c".into(),
                client_host: "/127.0.0.1".into(),
                rebalance_timeout_ms: 300_000,
                topic_names: vec!["t".into()],
                topic_regex: Some("t.*".into()),
                assignor: Some("range".into()),
                epoch: 4,
                previous_epoch: 3,
                state: MemberState::UnrevokedPartitions,
                assigned: [(t, [0, 1].into())].into(),
                revoking: [(t, [2].into())].into(),
                classic: None,
            }],
            target: [("m".to_string(), [(t, [0, 1].into())].into())].into(),
            topics: [("t".to_string(), (t, 3))].into(),
        };
        match Saved::decode(&g.encode()).expect("decode") {
            Saved::Consumer(back) => assert_eq!(back, g),
            Saved::Classic(_) => panic!("decoded as classic"),
        }
        let bytes = g.encode();
        assert!(Saved::decode(&bytes[..bytes.len() - 1]).is_err());
        match Saved::decode(&sample().encode()).expect("decode") {
            Saved::Classic(back) => assert_eq!(back, sample()),
            Saved::Consumer(_) => panic!("decoded as consumer"),
        }
    }

    #[test]
    fn damaged_values_are_refused() {
        let bytes = sample().encode();
        for cut in 0..bytes.len() {
            assert!(SavedGroup::decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(SavedGroup::decode(&longer).is_err());
        let mut other = bytes;
        other[0] = 9;
        assert!(SavedGroup::decode(&other).is_err());
        // A member count far beyond the value allocates nothing up front.
        let mut huge = vec![VERSION, 0, 0, 0, 1];
        huge.extend_from_slice(&[0xff; 12]);
        huge.extend_from_slice(&[0xff, 0xff, 0xff, 0xfe]);
        assert!(SavedGroup::decode(&huge).is_err());
    }
}
