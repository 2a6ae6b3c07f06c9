//! Classic members in a consumer group: the online upgrade of KIP-848.
//!
//! A deployment moves a group to `group.protocol=consumer` by restarting
//! its consumers one at a time. When the first consumer-protocol member
//! joins a Stable classic group of `consumer` protocol type, the group
//! becomes a consumer group ([`ConsumerGroup::from_classic`]): the classic
//! members stay, with their subscriptions and assignments, at their
//! generation as member epoch. From then on the coordinator assigns for
//! everyone, and a classic member follows through the requests it knows:
//! - JoinGroup: its subscription (and, with cooperative assignors, the
//!   partitions it still owns) from its protocol metadata; it is answered
//!   at once, as a follower, with its member epoch as the generation.
//! - SyncGroup: its assignment, encoded as the consumer protocol does.
//! - Heartbeat: REBALANCE_IN_PROGRESS when it must give partitions up or
//!   can take new ones, so that it joins again; ILLEGAL_GENERATION for an
//!   old generation.
//! - LeaveGroup and the session timeout of its JoinGroup remove it.
//!
//! An eager member (range, roundrobin) gives up everything before it
//! joins again, a cooperative one only what it lost; either way no
//! partition is owned twice: a member takes a partition only once its
//! previous owner has joined without it. The group stays a consumer group
//! until it empties.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use kafka_protocol::messages::consumer_protocol_assignment::TopicPartition as AssignedTopic;
use kafka_protocol::messages::{
    ConsumerProtocolAssignment, ConsumerProtocolSubscription, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use kafka_protocol::ResponseError;
use tokio::time::Instant;
use uuid::Uuid;

use super::assignors::Assignment;
use super::consumer::{
    ClassicMember, ConsumerGroup, ConsumerGroupConfig, Member, MemberRecord, MemberState,
    TopicsView,
};
use super::group::{Group, GroupState};

/// A decoded JoinGroup of a classic member.
#[derive(Debug, Clone)]
pub(super) struct ClassicJoin {
    pub member_id: String,
    pub require_known_member_id: bool,
    pub client_id: String,
    pub client_host: String,
    pub session_timeout: Duration,
    pub rebalance_timeout: Duration,
    pub protocols: Vec<(String, Bytes)>,
}

/// A classic member's JoinGroup answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum ClassicJoined {
    /// JoinGroup v4+: join again with this id.
    MemberIdRequired(String),
    Joined {
        member_id: String,
        generation: i32,
        protocol: String,
    },
}

/// A consumer-protocol subscription as classic members send it.
struct Subscription {
    version: i16,
    topics: Vec<String>,
    owned: Assignment,
}

fn decode_subscription(metadata: &Bytes, topics: &TopicsView) -> Option<Subscription> {
    let mut buf = metadata.clone();
    if buf.remaining() < 2 {
        return None;
    }
    let version = buf.get_i16().clamp(0, 3);
    let sub = ConsumerProtocolSubscription::decode(&mut buf, version).ok()?;
    let mut owned = Assignment::new();
    for tp in &sub.owned_partitions {
        if let Some((id, _)) = topics.by_name.get(tp.topic.0.as_str()) {
            owned
                .entry(*id)
                .or_default()
                .extend(tp.partitions.iter().copied());
        }
    }
    let mut names: Vec<String> = sub.topics.iter().map(|t| t.to_string()).collect();
    names.sort();
    names.dedup();
    Some(Subscription {
        version,
        topics: names,
        owned,
    })
}

fn decode_assignment(bytes: &Bytes, topics: &TopicsView) -> Option<Assignment> {
    let mut buf = bytes.clone();
    if buf.remaining() == 0 {
        return Some(Assignment::new());
    }
    if buf.remaining() < 2 {
        return None;
    }
    let version = buf.get_i16().clamp(0, 3);
    let a = ConsumerProtocolAssignment::decode(&mut buf, version).ok()?;
    let mut out = Assignment::new();
    for tp in &a.assigned_partitions {
        let (id, _) = topics.by_name.get(tp.topic.0.as_str())?;
        out.entry(*id)
            .or_default()
            .extend(tp.partitions.iter().copied());
    }
    Some(out)
}

/// `assigned` as the consumer protocol's assignment bytes (version
/// `version`), naming topics by `names`.
fn encode_assignment(assigned: &Assignment, names: &BTreeMap<Uuid, String>, version: i16) -> Bytes {
    let a = ConsumerProtocolAssignment::default().with_assigned_partitions(
        assigned
            .iter()
            .filter_map(|(id, ps)| {
                names.get(id).map(|n| {
                    AssignedTopic::default()
                        .with_topic(TopicName(StrBytes::from_string(n.clone())))
                        .with_partitions(ps.iter().copied().collect())
                })
            })
            .collect(),
    );
    let mut out = BytesMut::new();
    out.extend_from_slice(&version.to_be_bytes());
    // Encoding a message built here into a growable buffer cannot fail;
    // if it did, the member would get an empty assignment and join again.
    if a.encode(&mut out, version).is_err() {
        return Bytes::new();
    }
    out.freeze()
}

impl ConsumerGroup {
    /// The consumer group a Stable classic group of the `consumer`
    /// protocol type becomes when a consumer-protocol member joins it:
    /// every member keeps its subscription and partitions at the
    /// generation. `None` if the group is not in that state or a member's
    /// metadata cannot be read.
    pub(super) fn from_classic(
        g: &Group,
        topics: &TopicsView,
        config: ConsumerGroupConfig,
        now: Instant,
    ) -> Option<ConsumerGroup> {
        if g.state != GroupState::Stable || g.protocol_type.as_deref() != Some("consumer") {
            return None;
        }
        let protocol = g.protocol_name.clone().unwrap_or_default();
        let mut cg = ConsumerGroup::new(g.id.clone(), config);
        cg.epoch = g.generation_id;
        cg.target_epoch = g.generation_id;
        for m in &g.members {
            let sub = decode_subscription(&m.metadata(Some(&protocol)), topics)?;
            let assigned = decode_assignment(&m.assignment, topics)?;
            cg.target.insert(m.id.clone(), assigned.clone());
            let r = MemberRecord {
                id: m.id.clone(),
                instance_id: None,
                rack_id: None,
                client_id: m.client_id.clone(),
                client_host: m.client_host.clone(),
                rebalance_timeout_ms: u64::try_from(m.rebalance_timeout.as_millis())
                    .unwrap_or(u64::MAX),
                topic_names: sub.topics,
                topic_regex: None,
                assignor: None,
                epoch: g.generation_id,
                previous_epoch: g.generation_id - 1,
                state: MemberState::Stable,
                assigned: assigned.clone(),
                revoking: Assignment::new(),
                classic: Some(ClassicMember {
                    session_timeout_ms: u64::try_from(m.session_timeout.as_millis())
                        .unwrap_or(u64::MAX),
                    protocol: protocol.clone(),
                    version: sub.version,
                }),
            };
            let mut member = Member::new(r, m.session_timeout, now);
            member.sent = Some(assigned);
            cg.members.insert(m.id.clone(), member);
        }
        // The topics as subscribed now; a difference is a new epoch.
        if cg.refresh_topics(topics, true) {
            cg.bump();
        }
        cg.changes += 1;
        Some(cg)
    }

    /// JoinGroup of a classic member.
    pub(super) fn join_classic(
        &mut self,
        j: ClassicJoin,
        topics: &TopicsView,
        now: Instant,
    ) -> Result<ClassicJoined, i16> {
        let Some((protocol, sub)) = j
            .protocols
            .iter()
            .find_map(|(name, meta)| decode_subscription(meta, topics).map(|s| (name.clone(), s)))
        else {
            return Err(ResponseError::InconsistentGroupProtocol.code());
        };
        let mut member_id = j.member_id.clone();
        if member_id.is_empty() {
            member_id = format!("{}-{}", j.client_id, Uuid::new_v4());
            if j.require_known_member_id {
                return Ok(ClassicJoined::MemberIdRequired(member_id));
            }
        }
        let classic = ClassicMember {
            session_timeout_ms: u64::try_from(j.session_timeout.as_millis()).unwrap_or(u64::MAX),
            protocol: protocol.clone(),
            version: sub.version,
        };
        let mut bump = false;
        match self.members.get_mut(&member_id) {
            Some(m) if m.r.classic.is_none() => {
                return Err(ResponseError::InconsistentGroupProtocol.code());
            }
            Some(m) => {
                if m.r.topic_names != sub.topics {
                    m.r.topic_names.clone_from(&sub.topics);
                    bump = true;
                }
                m.r.classic = Some(classic);
            }
            None => {
                if self.members.len() >= self.config.max_size {
                    return Err(ResponseError::GroupMaxSizeReached.code());
                }
                let r = MemberRecord {
                    topic_names: sub.topics.clone(),
                    classic: Some(classic),
                    ..MemberRecord::joining(&member_id, &j.client_id, &j.client_host)
                };
                self.members
                    .insert(member_id.clone(), Member::new(r, j.session_timeout, now));
                bump = true;
            }
        }
        if let Some(m) = self.members.get_mut(&member_id) {
            m.deadline = now + j.session_timeout;
            m.r.client_id.clone_from(&j.client_id);
            m.r.client_host.clone_from(&j.client_host);
            m.r.rebalance_timeout_ms =
                u64::try_from(j.rebalance_timeout.as_millis()).unwrap_or(u64::MAX);
            // It holds only what it says it still owns: an eager member
            // gave everything up before joining again.
            let before = (m.r.assigned.clone(), m.r.revoking.clone());
            m.r.assigned = intersect(&m.r.assigned, &sub.owned);
            m.r.revoking = intersect(&m.r.revoking, &sub.owned);
            if (m.r.assigned.clone(), m.r.revoking.clone()) != before {
                self.changes += 1;
            }
        }
        self.advance(topics, bump);
        // Revocations are done once it no longer reports them owned.
        self.reconcile(&member_id, Some(&sub.owned), now);
        let generation = self.members.get(&member_id).map_or(0, |m| m.r.epoch);
        Ok(ClassicJoined::Joined {
            member_id,
            generation,
            protocol,
        })
    }

    /// SyncGroup of a classic member: its assignment and protocol name.
    pub(super) fn sync_classic(
        &mut self,
        member_id: &str,
        generation: i32,
        now: Instant,
    ) -> Result<(Bytes, String), i16> {
        let names: BTreeMap<Uuid, String> = self
            .topics
            .iter()
            .map(|(n, (id, _))| (*id, n.clone()))
            .collect();
        let session = self
            .members
            .get(member_id)
            .map(|m| self.session_of(&m.r))
            .unwrap_or_default();
        let Some(m) = self.members.get_mut(member_id) else {
            return Err(ResponseError::UnknownMemberId.code());
        };
        let Some(classic) = m.r.classic.clone() else {
            return Err(ResponseError::UnknownMemberId.code());
        };
        if generation != m.r.epoch {
            return Err(ResponseError::IllegalGeneration.code());
        }
        m.deadline = now + session;
        m.sent = Some(m.r.assigned.clone());
        Ok((
            encode_assignment(&m.r.assigned, &names, classic.version),
            classic.protocol,
        ))
    }

    /// Heartbeat of a classic member: REBALANCE_IN_PROGRESS when it should
    /// join again (to give partitions up or take new ones).
    pub(super) fn heartbeat_classic(
        &mut self,
        member_id: &str,
        generation: i32,
        topics: &TopicsView,
        now: Instant,
    ) -> i16 {
        let Some(m) = self.members.get(member_id) else {
            return ResponseError::UnknownMemberId.code();
        };
        if m.r.classic.is_none() {
            return ResponseError::UnknownMemberId.code();
        }
        if generation != m.r.epoch {
            return ResponseError::IllegalGeneration.code();
        }
        let session = self.session_of(&m.r);
        self.advance(topics, false);
        let elsewhere = self.owned_elsewhere(member_id);
        let target = self.target.get(member_id).cloned().unwrap_or_default();
        let Some(m) = self.members.get_mut(member_id) else {
            return ResponseError::UnknownMemberId.code();
        };
        m.deadline = now + session;
        let lose = m.r.assigned.iter().any(|(t, ps)| {
            ps.iter()
                .any(|p| !target.get(t).is_some_and(|s| s.contains(p)))
        });
        let gain = target.iter().any(|(t, ps)| {
            ps.iter().any(|p| {
                !m.r.assigned.get(t).is_some_and(|s| s.contains(p))
                    && !elsewhere.contains(&(*t, *p))
            })
        });
        let stale_sync = m.sent.as_ref() != Some(&m.r.assigned);
        if lose || gain || stale_sync || m.r.state == MemberState::UnrevokedPartitions {
            ResponseError::RebalanceInProgress.code()
        } else {
            0
        }
    }

    /// LeaveGroup of a classic member.
    pub(super) fn leave_classic(&mut self, member_id: &str) -> i16 {
        match self.members.get(member_id) {
            Some(m) if m.r.classic.is_some() => {
                self.remove_member(member_id);
                0
            }
            _ => ResponseError::UnknownMemberId.code(),
        }
    }
}

fn intersect(a: &Assignment, b: &Assignment) -> Assignment {
    let mut out = Assignment::new();
    for (t, ps) in a {
        if let Some(other) = b.get(t) {
            let both: BTreeSet<i32> = ps.intersection(other).copied().collect();
            if !both.is_empty() {
                out.insert(*t, both);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::groups::consumer::Beat;

    fn view() -> TopicsView {
        TopicsView {
            version: 1,
            by_name: [("t".to_string(), (Uuid::from_u128(1), 4))].into(),
        }
    }

    fn subscription(owned: &[i32]) -> Bytes {
        let sub = ConsumerProtocolSubscription::default()
            .with_topics(vec![StrBytes::from_static_str("t")])
            .with_owned_partitions(if owned.is_empty() {
                Vec::new()
            } else {
                vec![
                    kafka_protocol::messages::consumer_protocol_subscription::TopicPartition::default()
                        .with_topic(TopicName(StrBytes::from_static_str("t")))
                        .with_partitions(owned.to_vec()),
                ]
            });
        let mut out = BytesMut::new();
        out.extend_from_slice(&1i16.to_be_bytes());
        sub.encode(&mut out, 1).expect("encode");
        out.freeze()
    }

    fn join(id: &str, owned: &[i32]) -> ClassicJoin {
        ClassicJoin {
            member_id: id.into(),
            require_known_member_id: false,
            client_id: "c".into(),
            client_host: "h".into(),
            session_timeout: Duration::from_secs(10),
            rebalance_timeout: Duration::from_secs(30),
            protocols: vec![("cooperative-sticky".into(), subscription(owned))],
        }
    }

    fn partitions(bytes: &Bytes) -> Vec<i32> {
        let a = decode_assignment(bytes, &view()).expect("assignment");
        a.values().flatten().copied().collect()
    }

    #[test]
    fn a_classic_member_and_a_consumer_member_share_without_overlap() {
        let now = Instant::now();
        let v = view();
        let mut g = ConsumerGroup::new("g".into(), ConsumerGroupConfig::default());
        let ClassicJoined::Joined { generation, .. } =
            g.join_classic(join("old", &[]), &v, now).expect("join")
        else {
            panic!("joined");
        };
        let (bytes, protocol) = g.sync_classic("old", generation, now).expect("sync");
        assert_eq!(protocol, "cooperative-sticky");
        assert_eq!(partitions(&bytes), vec![0, 1, 2, 3]);
        assert_eq!(g.heartbeat_classic("old", generation, &v, now), 0);

        // A consumer-protocol member arrives: the classic one is told to
        // rebalance, and the newcomer waits for what it gives up.
        let new = g
            .heartbeat(
                Beat {
                    member_id: "new".into(),
                    epoch: 0,
                    rebalance_timeout_ms: 30_000,
                    topic_names: Some(vec!["t".into()]),
                    owned: Some(Assignment::new()),
                    ..Beat::default()
                },
                &v,
                now,
            )
            .expect("join");
        assert!(new.assignment.unwrap_or_default().is_empty());
        assert_eq!(
            g.heartbeat_classic("old", generation, &v, now),
            ResponseError::RebalanceInProgress.code()
        );
        // Cooperative: it joins still owning all four and is told to keep two.
        let ClassicJoined::Joined { generation: g2, .. } = g
            .join_classic(join("old", &[0, 1, 2, 3]), &v, now)
            .expect("rejoin")
        else {
            panic!("joined");
        };
        let (bytes, _) = g.sync_classic("old", g2, now).expect("sync");
        let kept = partitions(&bytes);
        assert_eq!(kept.len(), 2);
        // It revokes the other two and joins again; now they are free.
        let ClassicJoined::Joined { generation: g3, .. } =
            g.join_classic(join("old", &kept), &v, now).expect("rejoin")
        else {
            panic!("joined");
        };
        assert_eq!(g3, g.target_epoch);
        let new = g
            .heartbeat(
                Beat {
                    member_id: "new".into(),
                    epoch: new.epoch,
                    rebalance_timeout_ms: -1,
                    owned: Some(Assignment::new()),
                    ..Beat::default()
                },
                &v,
                now,
            )
            .expect("heartbeat");
        let theirs: Vec<i32> = new
            .assignment
            .expect("assignment")
            .values()
            .flatten()
            .copied()
            .collect();
        assert_eq!(theirs.len(), 2);
        assert!(theirs.iter().all(|p| !kept.contains(p)));
    }
}
