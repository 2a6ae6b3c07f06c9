//! ConsumerGroupHeartbeat and ConsumerGroupDescribe (KIP-848): the
//! requests of consumer groups, adapted to [`ConsumerGroup`].
//!
//! A heartbeat that changes the group (epochs, assignment, membership) is
//! answered only after the group is saved under this broker's claim, as
//! Kafka answers after writing its records: a coordinator that takes over
//! carries the group on with the same epochs and assignment, and members
//! keep their partitions.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use kafka_protocol::messages::consumer_group_describe_response::{
    self as describe, DescribedGroup,
};
use kafka_protocol::messages::consumer_group_heartbeat_response::{
    self as heartbeat, ConsumerGroupHeartbeatResponse,
};
use kafka_protocol::messages::{
    ConsumerGroupDescribeRequest, ConsumerGroupDescribeResponse, ConsumerGroupHeartbeatRequest,
    TopicName,
};
use kafka_protocol::ResponseError;
use tokio::time::Instant;
use tributary_runtime::Chain;

use super::assignors::Assignment;
use super::consumer::{Beat, ConsumerGroup, TopicsView};
use super::group::{code, GroupState, JoinOutcome, JoinParams, NONE};
use super::kind::AnyGroup;
use super::migration::{ClassicJoin, ClassicJoined};
use super::{lock, str_bytes, GroupCoordinator, Slot};
use crate::error::group_meta_error_code;

/// How long a read of the topic list serves heartbeats: a new topic or
/// partition reaches regex and name subscriptions within this.
const TOPICS_FRESH: Duration = Duration::from_secs(1);

fn heartbeat_error(error: i16, message: String) -> ConsumerGroupHeartbeatResponse {
    ConsumerGroupHeartbeatResponse::default()
        .with_error_code(error)
        .with_error_message((!message.is_empty()).then(|| str_bytes(message)))
}

fn owned_partitions(
    tps: &Option<Vec<kafka_protocol::messages::consumer_group_heartbeat_request::TopicPartitions>>,
) -> Option<Assignment> {
    tps.as_ref().map(|tps| {
        let mut out = Assignment::new();
        for tp in tps {
            out.entry(tp.topic_id)
                .or_default()
                .extend(tp.partitions.iter().copied());
        }
        out.retain(|_, ps| !ps.is_empty());
        out
    })
}

impl GroupCoordinator {
    /// The topic list, read again when older than [`TOPICS_FRESH`].
    async fn topics_view(&self) -> Result<Arc<TopicsView>, i16> {
        let now = Instant::now();
        let cached = lock(&self.topics_cache).view.clone();
        if let Some((at, view)) = &cached {
            if now.saturating_duration_since(*at) < TOPICS_FRESH {
                return Ok(view.clone());
            }
        }
        let topics = self.topics.list_topics().await.map_err(|e| {
            tracing::warn!(error = %Chain(&e), "listing topics for consumer groups failed");
            group_meta_error_code(&e)
        })?;
        let by_name: BTreeMap<String, (uuid::Uuid, i32)> = topics
            .into_iter()
            .map(|t| (t.name, (t.id, t.partitions)))
            .collect();
        let mut cache = lock(&self.topics_cache);
        let version = match &cache.view {
            Some((_, old)) if old.by_name == by_name => old.version,
            Some((_, old)) => old.version + 1,
            None => 1,
        };
        let view = Arc::new(TopicsView { version, by_name });
        cache.view = Some((now, view.clone()));
        Ok(view)
    }

    /// The consumer group's slot: loaded as saved, or new when `create`; an
    /// empty classic group becomes a consumer group. `Err`: the code and
    /// message to answer.
    /// `topics` allows a Stable classic group to become a consumer group
    /// with its members ([`ConsumerGroup::from_classic`]).
    async fn consumer_slot(
        &self,
        group_id: &str,
        create: bool,
        topics: Option<&TopicsView>,
    ) -> Result<Arc<Slot>, (i16, String)> {
        let slot = match self.load(group_id, false).await {
            Ok(Some(slot)) => slot,
            Ok(None) if create => self.get_or_insert(group_id, || {
                AnyGroup::Consumer(ConsumerGroup::new(
                    group_id.to_string(),
                    self.config.consumer.clone(),
                ))
            }),
            Ok(None) => {
                return Err((
                    code(ResponseError::UnknownMemberId),
                    format!("consumer group {group_id} not found"),
                ))
            }
            Err(c) => return Err((c, String::new())),
        };
        {
            let mut any = lock(&slot.group);
            if let AnyGroup::Classic(g) = &*any {
                let converted = if !create {
                    None
                } else if g.is_idle() {
                    Some(ConsumerGroup::new(
                        group_id.to_string(),
                        self.config.consumer.clone(),
                    ))
                } else {
                    topics.and_then(|t| {
                        ConsumerGroup::from_classic(
                            g,
                            t,
                            self.config.consumer.clone(),
                            Instant::now(),
                        )
                    })
                };
                let Some(converted) = converted else {
                    // A classic group of consumers in the middle of a
                    // rebalance changes once it is stable: the member
                    // retries (librdkafka retries this code, while
                    // GROUP_ID_NOT_FOUND would end the consumer).
                    let later = create
                        && g.protocol_type.as_deref() == Some("consumer")
                        && g.state != GroupState::Dead;
                    return Err(if later {
                        (
                            code(ResponseError::CoordinatorLoadInProgress),
                            format!("classic group {group_id} is rebalancing; it becomes a consumer group once stable"),
                        )
                    } else {
                        (
                            code(ResponseError::GroupIdNotFound),
                            format!("group {group_id} is not a consumer group"),
                        )
                    });
                };
                if !g.is_idle() {
                    tracing::info!(group = %group_id, members = g.members.len(), "classic group becomes a consumer group");
                }
                *any = AnyGroup::Consumer(converted);
                slot.saved_changes.store(u64::MAX, Ordering::Release);
            }
        }
        Ok(slot)
    }

    /// JoinGroup of a classic member in a consumer group (see
    /// [`super::migration`]): answered at once, as a follower.
    pub(super) async fn join_consumer_group(
        &self,
        group_id: &str,
        slot: &Arc<Slot>,
        p: JoinParams,
    ) -> JoinOutcome {
        let member_id = p.member_id.clone();
        if p.protocol_type != "consumer" {
            return JoinOutcome::error(code(ResponseError::InconsistentGroupProtocol), member_id);
        }
        let topics = match self.topics_view().await {
            Ok(t) => t,
            Err(c) => return JoinOutcome::error(c, member_id),
        };
        let join = ClassicJoin {
            member_id: p.member_id,
            require_known_member_id: p.require_known_member_id,
            client_id: p.client_id,
            client_host: p.client_host,
            session_timeout: p.session_timeout,
            rebalance_timeout: p.rebalance_timeout,
            protocols: p.protocols,
        };
        let joined = match &mut *lock(&slot.group) {
            AnyGroup::Consumer(g) => g.join_classic(join, &topics, Instant::now()),
            AnyGroup::Classic(_) => Err(code(ResponseError::RebalanceInProgress)),
        };
        slot.wake.notify_one();
        match joined {
            Err(c) => JoinOutcome::error(c, member_id),
            Ok(ClassicJoined::MemberIdRequired(id)) => {
                JoinOutcome::error(code(ResponseError::MemberIdRequired), id)
            }
            Ok(ClassicJoined::Joined {
                member_id,
                generation,
                protocol,
            }) => {
                if let Err(c) = self.save(group_id, slot).await {
                    return JoinOutcome::error(c, member_id);
                }
                JoinOutcome {
                    error: NONE,
                    generation_id: generation,
                    protocol_type: Some("consumer".into()),
                    protocol_name: Some(protocol),
                    // Nobody leads: the coordinator assigns.
                    leader: String::new(),
                    member_id,
                    members: Vec::new(),
                }
            }
        }
    }

    /// Heartbeat of a classic member in a consumer group.
    pub(super) async fn heartbeat_consumer_group(
        &self,
        group_id: &str,
        slot: &Arc<Slot>,
        member_id: &str,
        generation: i32,
    ) -> i16 {
        let topics = match self.topics_view().await {
            Ok(t) => t,
            Err(c) => return c,
        };
        let error = match &mut *lock(&slot.group) {
            AnyGroup::Consumer(g) => {
                g.heartbeat_classic(member_id, generation, &topics, Instant::now())
            }
            AnyGroup::Classic(_) => code(ResponseError::RebalanceInProgress),
        };
        slot.wake.notify_one();
        if let Err(c) = self.save(group_id, slot).await {
            return c;
        }
        error
    }

    /// ConsumerGroupHeartbeat (v0-1).
    pub async fn consumer_group_heartbeat(
        &self,
        req: ConsumerGroupHeartbeatRequest,
        version: i16,
        client_id: &str,
        client_host: &str,
    ) -> ConsumerGroupHeartbeatResponse {
        let group_id = req.group_id.0.to_string();
        if group_id.is_empty() {
            return heartbeat_error(
                code(ResponseError::InvalidGroupId),
                "group id is empty".into(),
            );
        }
        if self.not_mine(&group_id) {
            return heartbeat_error(code(ResponseError::NotCoordinator), String::new());
        }
        let mut member_id = req.member_id.to_string();
        if member_id.is_empty() {
            // v0: the coordinator names a joining member; from v1 the
            // client does (KIP-1082).
            if version >= 1 || req.member_epoch != 0 {
                return heartbeat_error(
                    code(ResponseError::InvalidRequest),
                    "member id is empty".into(),
                );
            }
            member_id = uuid::Uuid::new_v4().to_string();
        }
        if req.member_epoch == -2 && req.instance_id.is_none() {
            return heartbeat_error(
                code(ResponseError::InvalidRequest),
                "member epoch -2 is for static members (an instance id is required)".into(),
            );
        }
        let topics = match self.topics_view().await {
            Ok(v) => v,
            Err(c) => return heartbeat_error(c, String::new()),
        };
        let slot = match self
            .consumer_slot(&group_id, req.member_epoch == 0, Some(&topics))
            .await
        {
            Ok(slot) => slot,
            Err((c, m)) => return heartbeat_error(c, m),
        };
        let beat = Beat {
            member_id,
            epoch: req.member_epoch,
            instance_id: req.instance_id.as_ref().map(|s| s.to_string()),
            rack_id: req.rack_id.as_ref().map(|s| s.to_string()),
            rebalance_timeout_ms: req.rebalance_timeout_ms,
            topic_names: req
                .subscribed_topic_names
                .as_ref()
                .map(|ts| ts.iter().map(|t| t.0.to_string()).collect()),
            topic_regex: if version >= 1 {
                req.subscribed_topic_regex.as_ref().map(|s| s.to_string())
            } else {
                None
            },
            assignor: req.server_assignor.as_ref().map(|s| s.to_string()),
            owned: owned_partitions(&req.topic_partitions),
            client_id: client_id.to_string(),
            client_host: client_host.to_string(),
        };
        let answer = match &mut *lock(&slot.group) {
            AnyGroup::Consumer(g) => g.heartbeat(beat, &topics, Instant::now()),
            AnyGroup::Classic(_) => Err((
                code(ResponseError::GroupIdNotFound),
                format!("group {group_id} is not a consumer group"),
            )),
        };
        slot.wake.notify_one();
        let answer = match answer {
            Ok(a) => a,
            Err((c, m)) => return heartbeat_error(c, m),
        };
        if let Err(c) = self.save(&group_id, &slot).await {
            return heartbeat_error(c, "saving the group failed".into());
        }
        let assignment = answer.assignment.map(|a| {
            heartbeat::Assignment::default().with_topic_partitions(
                a.into_iter()
                    .map(|(topic_id, ps)| {
                        heartbeat::TopicPartitions::default()
                            .with_topic_id(topic_id)
                            .with_partitions(ps.into_iter().collect())
                    })
                    .collect(),
            )
        });
        ConsumerGroupHeartbeatResponse::default()
            .with_error_code(NONE)
            .with_member_id(Some(str_bytes(answer.member_id)))
            .with_member_epoch(answer.epoch)
            .with_heartbeat_interval_ms(
                i32::try_from(answer.interval.as_millis()).unwrap_or(i32::MAX),
            )
            .with_assignment(assignment)
    }

    /// ConsumerGroupDescribe (v0-1). Classic and unknown groups answer
    /// GROUP_ID_NOT_FOUND, as in Kafka.
    pub async fn consumer_group_describe(
        &self,
        req: ConsumerGroupDescribeRequest,
        version: i16,
    ) -> ConsumerGroupDescribeResponse {
        let mut out = Vec::with_capacity(req.group_ids.len());
        for gid in &req.group_ids {
            let id = gid.0.to_string();
            let mut d = DescribedGroup::default()
                .with_group_id(gid.clone())
                .with_authorized_operations(i32::MIN);
            if id.is_empty() {
                d.error_code = code(ResponseError::InvalidGroupId);
                out.push(d);
                continue;
            }
            if self.not_mine(&id) {
                d.error_code = code(ResponseError::NotCoordinator);
                out.push(d);
                continue;
            }
            let slot = match self.consumer_slot(&id, false, None).await {
                Ok(slot) => slot,
                Err((c, m)) => {
                    d.error_code = if c == code(ResponseError::UnknownMemberId) {
                        code(ResponseError::GroupIdNotFound)
                    } else {
                        c
                    };
                    d.error_message = (!m.is_empty()).then(|| str_bytes(m));
                    out.push(d);
                    continue;
                }
            };
            let any = lock(&slot.group);
            let AnyGroup::Consumer(g) = &*any else {
                d.error_code = code(ResponseError::GroupIdNotFound);
                out.push(d);
                continue;
            };
            let names: BTreeMap<uuid::Uuid, String> = g
                .topics
                .iter()
                .map(|(n, (tid, _))| (*tid, n.clone()))
                .collect();
            let described = |a: &Assignment| {
                describe::Assignment::default().with_topic_partitions(
                    a.iter()
                        .map(|(t, ps)| {
                            describe::TopicPartitions::default()
                                .with_topic_id(*t)
                                .with_topic_name(TopicName(str_bytes(
                                    names.get(t).cloned().unwrap_or_default(),
                                )))
                                .with_partitions(ps.iter().copied().collect())
                        })
                        .collect(),
                )
            };
            d.group_state = kafka_protocol::protocol::StrBytes::from_static_str(g.state());
            d.group_epoch = g.epoch;
            d.assignment_epoch = g.target_epoch;
            d.assignor_name = str_bytes(g.assignor().name());
            d.members = g
                .described()
                .into_iter()
                .map(|(r, target)| {
                    let mut m = describe::Member::default()
                        .with_member_id(str_bytes(r.id.clone()))
                        .with_instance_id(r.instance_id.clone().map(str_bytes))
                        .with_rack_id(r.rack_id.clone().map(str_bytes))
                        .with_member_epoch(r.epoch)
                        .with_client_id(str_bytes(r.client_id.clone()))
                        .with_client_host(str_bytes(r.client_host.clone()))
                        .with_subscribed_topic_names(
                            r.topic_names
                                .iter()
                                .map(|n| TopicName(str_bytes(n.clone())))
                                .collect(),
                        )
                        .with_subscribed_topic_regex(r.topic_regex.clone().map(str_bytes))
                        .with_assignment(described(&r.assigned))
                        .with_target_assignment(described(&target));
                    if version >= 1 {
                        // 1: a member using the consumer protocol.
                        m.member_type = 1;
                    }
                    m
                })
                .collect();
            drop(any);
            out.push(d);
        }
        ConsumerGroupDescribeResponse::default().with_groups(out)
    }
}
