//! Committed offsets: OffsetCommit, OffsetFetch and OffsetDelete.
//!
//! Offsets live only in the metadata store; a commit is answered after the
//! store call returns. Group validation (member, generation, state) happens
//! under the group's lock before the store is called; a commit with a
//! negative generation and no member is a "simple" commit, allowed while the
//! group is Empty or not known in memory.

use std::collections::{BTreeMap, HashMap, HashSet};
use tributary_runtime::Chain;

use bytes::Buf;
use kafka_protocol::messages::offset_commit_response::{
    OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use kafka_protocol::messages::offset_delete_response::{
    OffsetDeleteResponsePartition, OffsetDeleteResponseTopic,
};
use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponseGroup, OffsetFetchResponsePartition, OffsetFetchResponsePartitions,
    OffsetFetchResponseTopic, OffsetFetchResponseTopics,
};
use kafka_protocol::messages::txn_offset_commit_response::{
    TxnOffsetCommitResponsePartition, TxnOffsetCommitResponseTopic,
};
use kafka_protocol::messages::{
    ConsumerProtocolSubscription, OffsetCommitRequest, OffsetCommitResponse, OffsetDeleteRequest,
    OffsetDeleteResponse, OffsetFetchRequest, OffsetFetchResponse, TopicName,
    TxnOffsetCommitRequest, TxnOffsetCommitResponse,
};
use kafka_protocol::protocol::Decodable;
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;
use tokio::time::Instant;
use tributary_meta::{CommittedOffset, MetaError, TopicMeta, TxnOffsetRefusal};

use super::group::{code, Group, GroupState, NONE};
use super::kind::AnyGroup;
use super::{lock, opt_str, str_bytes, GroupCoordinator};
use crate::error::group_meta_error_code;

/// Kafka's `offset.metadata.max.bytes` default.
const MAX_METADATA_BYTES: usize = 4096;

/// One partition of an OffsetFetch answer.
struct FetchedPartition {
    partition: i32,
    offset: i64,
    leader_epoch: i32,
    metadata: Option<String>,
    error: i16,
}

/// One group of an OffsetFetch answer.
struct FetchedGroup {
    error: i16,
    topics: Vec<(String, Vec<FetchedPartition>)>,
}

/// The answer's topics of a commit request (OffsetCommit, TxnOffsetCommit):
/// `$Topic`s of `$Partition`s, each with its code from `$errors[topic][partition]`.
macro_rules! commit_answer {
    ($req:expr, $errors:expr, $Topic:ident, $Partition:ident) => {
        $req.topics
            .iter()
            .zip($errors)
            .map(|(t, errs)| {
                $Topic::default().with_name(t.name.clone()).with_partitions(
                    t.partitions
                        .iter()
                        .zip(errs)
                        .map(|(p, e)| {
                            $Partition::default()
                                .with_partition_index(p.partition_index)
                                .with_error_code(e)
                        })
                        .collect(),
                )
            })
            .collect()
    };
}

/// The partitions of a commit request (OffsetCommit and TxnOffsetCommit
/// name their fields alike) as [`Proposed`], by topic; leader epochs only
/// where `$epochs` (the version carries them).
macro_rules! proposed {
    ($req:expr, $epochs:expr) => {
        $req.topics
            .iter()
            .map(|t| {
                t.partitions
                    .iter()
                    .map(|p| Proposed {
                        topic: t.name.0.as_str(),
                        partition: p.partition_index,
                        offset: p.committed_offset,
                        leader_epoch: if $epochs {
                            p.committed_leader_epoch
                        } else {
                            -1
                        },
                        metadata: &p.committed_metadata,
                    })
                    .collect()
            })
            .collect()
    };
}

/// One partition's offset in a commit request (OffsetCommit,
/// TxnOffsetCommit).
struct Proposed<'a> {
    topic: &'a str,
    partition: i32,
    offset: i64,
    leader_epoch: i32,
    metadata: &'a Option<StrBytes>,
}

impl GroupCoordinator {
    /// The offsets of a commit request that may be written (their topic and
    /// partition exist, their metadata is not too large), stamped now, with
    /// where each came from (`[topic][partition]` of the request); the
    /// others get their error in `errors`.
    async fn checked_offsets(
        &self,
        proposed: Vec<Vec<Proposed<'_>>>,
        errors: &mut [Vec<i16>],
    ) -> (Vec<CommittedOffset>, Vec<(usize, usize)>) {
        let topics = self
            .topics_of(
                proposed
                    .iter()
                    .filter_map(|t| t.first())
                    .map(|p| p.topic.to_owned()),
            )
            .await;
        let commit_ts = self.clock.now_ms();
        let mut batch = Vec::new();
        let mut slots = Vec::new();
        for (ti, t) in proposed.iter().enumerate() {
            for (pi, p) in t.iter().enumerate() {
                let error = commit_error(&topics, p.topic, p.partition, p.metadata.as_ref());
                if error != NONE {
                    errors[ti][pi] = error;
                    continue;
                }
                batch.push(CommittedOffset {
                    topic: p.topic.to_owned(),
                    partition: p.partition,
                    offset: p.offset,
                    leader_epoch: p.leader_epoch,
                    metadata: opt_str(p.metadata),
                    commit_timestamp_ms: commit_ts,
                });
                slots.push((ti, pi));
            }
        }
        (batch, slots)
    }

    /// Look up topics once per request; `Err(code)` if the store failed.
    async fn topics_of(
        &self,
        names: impl Iterator<Item = String>,
    ) -> HashMap<String, Result<Option<TopicMeta>, i16>> {
        let mut out = HashMap::new();
        for name in names {
            if out.contains_key(&name) {
                continue;
            }
            let t = self
                .topics
                .get_topic(&name)
                .await
                .map_err(|e| group_meta_error_code(&e));
            out.insert(name, t);
        }
        out
    }

    /// OffsetCommit (v2-9).
    pub async fn offset_commit(
        &self,
        req: OffsetCommitRequest,
        version: i16,
    ) -> OffsetCommitResponse {
        let group_id = req.group_id.0.to_string();
        let instance = if version >= 7 {
            opt_str(&req.group_instance_id)
        } else {
            None
        };
        let generation = req.generation_id_or_member_epoch;
        let slot = if self.not_mine(&group_id) {
            Err(code(ResponseError::NotCoordinator))
        } else {
            self.load(&group_id, false).await
        };
        // Checked and written in order: see `Slot::commits`.
        let _ordered = match &slot {
            Ok(Some(slot)) => Some(slot.commits.clone().lock_owned().await),
            Ok(None) | Err(_) => None,
        };
        let group_error = match slot {
            Err(c) => Some(c),
            Ok(Some(slot)) => {
                let r = match &mut *lock(&slot.group) {
                    AnyGroup::Classic(g) => g.validate_commit(
                        req.member_id.as_str(),
                        instance.as_deref(),
                        generation,
                        Instant::now(),
                    ),
                    AnyGroup::Consumer(g) => {
                        g.validate_commit(req.member_id.as_str(), generation, Some(version))
                    }
                };
                r.err()
            }
            Ok(None) if generation < 0 => None,
            Ok(None) => Some(code(ResponseError::IllegalGeneration)),
        };

        // errors[topic index][partition index]
        let mut errors: Vec<Vec<i16>> = req
            .topics
            .iter()
            .map(|t| vec![group_error.unwrap_or(NONE); t.partitions.len()])
            .collect();
        if group_error.is_none() {
            let proposed = proposed!(req, version >= 6);
            let (batch, slots) = self.checked_offsets(proposed, &mut errors).await;
            if !batch.is_empty() {
                let result = match self.claim(&group_id).await {
                    Ok(claim) => {
                        let r = self
                            .store
                            .commit_offsets(&group_id, Some(claim), &batch)
                            .await;
                        if let Err(MetaError::Fenced { .. }) = &r {
                            self.forget(&group_id, Some(claim));
                        }
                        r.map_err(|e| {
                            tracing::warn!(group = %group_id, error = %Chain(&e), "offset commit failed");
                            group_meta_error_code(&e)
                        })
                    }
                    Err(c) => Err(c),
                };
                if let Err(c) = result {
                    for (ti, pi) in slots {
                        errors[ti][pi] = c;
                    }
                }
            }
        }
        let topics = commit_answer!(
            req,
            errors,
            OffsetCommitResponseTopic,
            OffsetCommitResponsePartition
        );
        OffsetCommitResponse::default().with_topics(topics)
    }

    /// TxnOffsetCommit (v0-4): stage offsets that the producer's
    /// transaction commits (they become the group's when it does). The
    /// member and generation are checked as for OffsetCommit (KIP-447);
    /// the transaction is checked by the store.
    pub async fn txn_offset_commit(
        &self,
        req: TxnOffsetCommitRequest,
        version: i16,
    ) -> TxnOffsetCommitResponse {
        let group_id = req.group_id.0.to_string();
        let group_error = if self.not_mine(&group_id) {
            Some(code(ResponseError::NotCoordinator))
        } else if version >= 3 && (req.generation_id >= 0 || !req.member_id.is_empty()) {
            match self.load(&group_id, false).await {
                Err(c) => Some(c),
                Ok(Some(slot)) => match &mut *lock(&slot.group) {
                    AnyGroup::Classic(g) => g.validate_commit(
                        req.member_id.as_str(),
                        opt_str(&req.group_instance_id).as_deref(),
                        req.generation_id,
                        Instant::now(),
                    ),
                    AnyGroup::Consumer(g) => {
                        g.validate_commit(req.member_id.as_str(), req.generation_id, None)
                    }
                }
                .err(),
                Ok(None) if req.generation_id < 0 => None,
                Ok(None) => Some(code(ResponseError::IllegalGeneration)),
            }
        } else {
            None
        };
        let mut errors: Vec<Vec<i16>> = req
            .topics
            .iter()
            .map(|t| vec![group_error.unwrap_or(NONE); t.partitions.len()])
            .collect();
        if group_error.is_none() {
            let proposed = proposed!(req, version >= 2);
            let (batch, slots) = self.checked_offsets(proposed, &mut errors).await;
            let staged = match self.transactions() {
                None => Err(code(ResponseError::CoordinatorNotAvailable)),
                Some(store) if !batch.is_empty() => store
                    .stage_txn_offsets(
                        req.transactional_id.0.as_str(),
                        req.producer_id.0,
                        req.producer_epoch,
                        &group_id,
                        &batch,
                    )
                    .await
                    .map_err(|e| {
                        tracing::warn!(group = %group_id, error = %Chain(&e), "staging transactional offsets failed");
                        group_meta_error_code(&e)
                    })
                    .and_then(|r| {
                        r.map_err(|why| match why {
                            TxnOffsetRefusal::UnknownProducer => {
                                code(ResponseError::InvalidProducerIdMapping)
                            }
                            TxnOffsetRefusal::Fenced if version < 3 => {
                                code(ResponseError::InvalidProducerEpoch)
                            }
                            TxnOffsetRefusal::Fenced => code(ResponseError::ProducerFenced),
                            TxnOffsetRefusal::InvalidState => code(ResponseError::InvalidTxnState),
                        })
                    }),
                Some(_) => Ok(()),
            };
            if let Err(c) = staged {
                for (ti, pi) in slots {
                    errors[ti][pi] = c;
                }
            }
        }
        let topics = commit_answer!(
            req,
            errors,
            TxnOffsetCommitResponseTopic,
            TxnOffsetCommitResponsePartition
        );
        TxnOffsetCommitResponse::default().with_topics(topics)
    }

    /// Committed offsets of one group. `topics = None` means all. With
    /// `require_stable`, partitions with offsets staged by a transaction
    /// not yet ended answer UNSTABLE_OFFSET_COMMIT (the consumer retries).
    async fn fetch_group(
        &self,
        group_id: &str,
        topics: Option<Vec<(String, Vec<i32>)>>,
        require_stable: bool,
    ) -> FetchedGroup {
        let mut fetched = self.fetch_committed(group_id, topics).await;
        if !require_stable || fetched.error != NONE {
            return fetched;
        }
        let pending = match self.transactions() {
            Some(store) => store.pending_txn_offsets(group_id).await,
            None => Ok(Vec::new()),
        };
        match pending {
            Ok(pending) if pending.is_empty() => {}
            Ok(pending) => {
                let pending: HashSet<(String, i32)> = pending.into_iter().collect();
                for (name, parts) in &mut fetched.topics {
                    for p in parts {
                        if pending.contains(&(name.clone(), p.partition)) {
                            p.error = code(ResponseError::UnstableOffsetCommit);
                            p.offset = -1;
                        }
                    }
                }
            }
            Err(e) => {
                tracing::warn!(group = %group_id, error = %Chain(&e), "reading staged transactional offsets failed");
                let c = group_meta_error_code(&e);
                for (_, parts) in &mut fetched.topics {
                    for p in parts {
                        p.error = c;
                    }
                }
            }
        }
        fetched
    }

    /// Committed offsets of one group. `topics = None` means all.
    async fn fetch_committed(
        &self,
        group_id: &str,
        topics: Option<Vec<(String, Vec<i32>)>>,
    ) -> FetchedGroup {
        let names: Option<Vec<String>> = topics
            .as_ref()
            .map(|ts| ts.iter().map(|(n, _)| n.clone()).collect());
        match self.store.fetch_offsets(group_id, names.as_deref()).await {
            Ok(committed) => {
                let mut by_tp: BTreeMap<(String, i32), CommittedOffset> = BTreeMap::new();
                for c in committed {
                    by_tp.insert((c.topic.clone(), c.partition), c);
                }
                let found = |c: &CommittedOffset| FetchedPartition {
                    partition: c.partition,
                    offset: c.offset,
                    leader_epoch: c.leader_epoch,
                    metadata: Some(c.metadata.clone().unwrap_or_default()),
                    error: NONE,
                };
                let out = match topics {
                    Some(ts) => ts
                        .into_iter()
                        .map(|(name, parts)| {
                            let ps = parts
                                .into_iter()
                                .map(|p| match by_tp.get(&(name.clone(), p)) {
                                    Some(c) => found(c),
                                    None => FetchedPartition {
                                        partition: p,
                                        offset: -1,
                                        leader_epoch: -1,
                                        metadata: Some(String::new()),
                                        error: NONE,
                                    },
                                })
                                .collect();
                            (name, ps)
                        })
                        .collect(),
                    None => {
                        let mut grouped: Vec<(String, Vec<FetchedPartition>)> = Vec::new();
                        for ((topic, _), c) in &by_tp {
                            match grouped.last_mut() {
                                Some((t, ps)) if t == topic => ps.push(found(c)),
                                _ => grouped.push((topic.clone(), vec![found(c)])),
                            }
                        }
                        grouped
                    }
                };
                FetchedGroup {
                    error: NONE,
                    topics: out,
                }
            }
            Err(e) => {
                tracing::warn!(group = %group_id, error = %Chain(&e), "offset fetch failed");
                let c = group_meta_error_code(&e);
                let topics = topics
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(name, parts)| {
                        let ps = parts
                            .into_iter()
                            .map(|p| FetchedPartition {
                                partition: p,
                                offset: -1,
                                leader_epoch: -1,
                                metadata: Some(String::new()),
                                error: c,
                            })
                            .collect();
                        (name, ps)
                    })
                    .collect();
                FetchedGroup { error: c, topics }
            }
        }
    }

    /// OffsetFetch (v1-9; v8+ is the multi-group form). Partitions without a
    /// commit answer offset -1.
    pub async fn offset_fetch(&self, req: OffsetFetchRequest, version: i16) -> OffsetFetchResponse {
        if version >= 8 {
            let mut groups = Vec::with_capacity(req.groups.len());
            for g in &req.groups {
                let topics = g.topics.as_ref().map(|ts| {
                    ts.iter()
                        .map(|t| (t.name.0.to_string(), t.partition_indexes.clone()))
                        .collect()
                });
                // v9: a consumer-group member fetches under its epoch.
                let member = g.member_id.as_ref().filter(|_| g.member_epoch >= 0);
                let refused = member.and_then(|m| {
                    self.get(g.group_id.0.as_str())
                        .and_then(|slot| match &*lock(&slot.group) {
                            AnyGroup::Consumer(cg) => {
                                cg.validate_commit(m.as_str(), g.member_epoch, None).err()
                            }
                            AnyGroup::Classic(_) => None,
                        })
                });
                let fetched = match refused {
                    Some(error) => FetchedGroup {
                        error,
                        topics: Vec::new(),
                    },
                    None => {
                        self.fetch_group(g.group_id.0.as_str(), topics, req.require_stable)
                            .await
                    }
                };
                let topics = fetched
                    .topics
                    .into_iter()
                    .map(|(name, ps)| {
                        OffsetFetchResponseTopics::default()
                            .with_name(TopicName(str_bytes(name)))
                            .with_partitions(
                                ps.into_iter()
                                    .map(|p| {
                                        OffsetFetchResponsePartitions::default()
                                            .with_partition_index(p.partition)
                                            .with_committed_offset(p.offset)
                                            .with_committed_leader_epoch(p.leader_epoch)
                                            .with_metadata(p.metadata.map(str_bytes))
                                            .with_error_code(p.error)
                                    })
                                    .collect(),
                            )
                    })
                    .collect();
                groups.push(
                    OffsetFetchResponseGroup::default()
                        .with_group_id(g.group_id.clone())
                        .with_topics(topics)
                        .with_error_code(fetched.error),
                );
            }
            return OffsetFetchResponse::default().with_groups(groups);
        }
        let topics = req.topics.as_ref().map(|ts| {
            ts.iter()
                .map(|t| (t.name.0.to_string(), t.partition_indexes.clone()))
                .collect()
        });
        let require_stable = version >= 7 && req.require_stable;
        let fetched = self
            .fetch_group(req.group_id.0.as_str(), topics, require_stable)
            .await;
        let topics = fetched
            .topics
            .into_iter()
            .map(|(name, ps)| {
                OffsetFetchResponseTopic::default()
                    .with_name(TopicName(str_bytes(name)))
                    .with_partitions(
                        ps.into_iter()
                            .map(|p| {
                                let mut r = OffsetFetchResponsePartition::default()
                                    .with_partition_index(p.partition)
                                    .with_committed_offset(p.offset)
                                    .with_metadata(p.metadata.map(str_bytes))
                                    .with_error_code(p.error);
                                if version >= 5 {
                                    r.committed_leader_epoch = p.leader_epoch;
                                }
                                r
                            })
                            .collect(),
                    )
            })
            .collect();
        let mut resp = OffsetFetchResponse::default().with_topics(topics);
        if version >= 2 {
            resp.error_code = fetched.error;
        }
        resp
    }

    /// OffsetDelete (v0). Partitions of topics a live consumer group is
    /// subscribed to answer GROUP_SUBSCRIBED_TO_TOPIC.
    pub async fn offset_delete(
        &self,
        req: OffsetDeleteRequest,
        _version: i16,
    ) -> OffsetDeleteResponse {
        let group_id = req.group_id.0.to_string();
        let fail = |error: i16| OffsetDeleteResponse::default().with_error_code(error);
        if group_id.is_empty() {
            return fail(code(ResponseError::InvalidGroupId));
        }
        if self.not_mine(&group_id) {
            return fail(code(ResponseError::NotCoordinator));
        }
        let slot = match self.load(&group_id, false).await {
            Ok(slot) => slot,
            Err(c) => return fail(c),
        };
        let subscribed: HashSet<String> = match slot {
            Some(slot) => {
                let any = lock(&slot.group);
                match &*any {
                    AnyGroup::Consumer(g) if g.is_dead() => {
                        return fail(code(ResponseError::GroupIdNotFound))
                    }
                    AnyGroup::Consumer(g) => g.subscribed_names().into_iter().collect(),
                    AnyGroup::Classic(g) => match g.state {
                        GroupState::Dead => return fail(code(ResponseError::GroupIdNotFound)),
                        GroupState::Empty => HashSet::new(),
                        GroupState::PreparingRebalance
                        | GroupState::CompletingRebalance
                        | GroupState::Stable => {
                            if g.protocol_type.as_deref() != Some("consumer") {
                                return fail(code(ResponseError::NonEmptyGroup));
                            }
                            subscribed_topics(g)
                        }
                    },
                }
            }
            None => match self.store.list_groups().await {
                Ok(ids) if ids.contains(&group_id) => HashSet::new(),
                Ok(_) => return fail(code(ResponseError::GroupIdNotFound)),
                Err(e) => return fail(group_meta_error_code(&e)),
            },
        };
        let topics = self
            .topics_of(req.topics.iter().map(|t| t.name.0.to_string()))
            .await;
        let mut errors: Vec<Vec<i16>> = Vec::with_capacity(req.topics.len());
        let mut to_delete = Vec::new();
        let mut slots = Vec::new();
        for (ti, t) in req.topics.iter().enumerate() {
            let name = t.name.0.to_string();
            let mut errs = Vec::with_capacity(t.partitions.len());
            for (pi, p) in t.partitions.iter().enumerate() {
                let i = p.partition_index;
                let e = match topics.get(&name) {
                    Some(Ok(Some(meta))) if i >= 0 && i < meta.partitions => {
                        if subscribed.contains(&name) {
                            code(ResponseError::GroupSubscribedToTopic)
                        } else {
                            to_delete.push((name.clone(), i));
                            slots.push((ti, pi));
                            NONE
                        }
                    }
                    Some(Err(e)) => *e,
                    Some(Ok(_)) | None => code(ResponseError::UnknownTopicOrPartition),
                };
                errs.push(e);
            }
            errors.push(errs);
        }
        if !to_delete.is_empty() {
            if let Err(e) = self.store.delete_offsets(&group_id, &to_delete).await {
                let c = group_meta_error_code(&e);
                for (ti, pi) in slots {
                    errors[ti][pi] = c;
                }
            }
        }
        let topics = req
            .topics
            .iter()
            .zip(errors)
            .map(|(t, errs)| {
                OffsetDeleteResponseTopic::default()
                    .with_name(t.name.clone())
                    .with_partitions(
                        t.partitions
                            .iter()
                            .zip(errs)
                            .map(|(p, e)| {
                                OffsetDeleteResponsePartition::default()
                                    .with_partition_index(p.partition_index)
                                    .with_error_code(e)
                            })
                            .collect(),
                    )
            })
            .collect();
        OffsetDeleteResponse::default().with_topics(topics)
    }
}

/// The error of committing an offset (OffsetCommit, TxnOffsetCommit) to
/// partition `index` of topic `name`: unknown topic or partition, metadata
/// too large, the topic lookup's failure, or none.
fn commit_error(
    topics: &HashMap<String, Result<Option<TopicMeta>, i16>>,
    name: &str,
    index: i32,
    metadata: Option<&StrBytes>,
) -> i16 {
    match topics.get(name) {
        Some(Ok(Some(meta))) if index >= 0 && index < meta.partitions => {
            if metadata.is_some_and(|m| m.len() > MAX_METADATA_BYTES) {
                code(ResponseError::OffsetMetadataTooLarge)
            } else {
                NONE
            }
        }
        Some(Err(e)) => *e,
        Some(Ok(_)) | None => code(ResponseError::UnknownTopicOrPartition),
    }
}

/// Topics the members subscribe to, read from their consumer-protocol
/// metadata. Members whose metadata cannot be decoded add nothing.
fn subscribed_topics(g: &Group) -> HashSet<String> {
    let mut out = HashSet::new();
    for m in &g.members {
        let mut buf = m.metadata(g.protocol_name.as_deref());
        if buf.remaining() < 2 {
            continue;
        }
        let version = buf.get_i16().clamp(0, 3);
        if let Ok(sub) = ConsumerProtocolSubscription::decode(&mut buf, version) {
            out.extend(sub.topics.iter().map(|t| t.to_string()));
        }
    }
    out
}
