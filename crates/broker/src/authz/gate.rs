//! The one place requests are authorized: which operation each API needs
//! on which resource (as Kafka's `KafkaApis` checks them), and what the
//! parts a principal may not touch are answered with. The router calls
//! [`gate`] before every handler; handlers never check permissions.
//!
//! A rule narrows the request to what is allowed and returns a [`Patch`]
//! that adds the refused parts to the handler's answer (a produce to two
//! topics, one allowed: the handler writes the allowed one, the patch adds
//! TOPIC_AUTHORIZATION_FAILED for the other). When nothing is left the
//! answer is built without the handler. Listings (Metadata of all topics,
//! ListGroups, OffsetFetch of all topics) are filtered afterwards: a
//! principal does not learn the names of what it may not describe.

use std::collections::HashSet;
use std::sync::Arc;

use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;
use tributary_meta::rules::acl::{operation as op, resource as res, CLUSTER_NAME};

use super::Authorizer;
use crate::context::RequestContext;
use crate::Broker;

/// Adds what the gate refused to the handler's answer.
pub type Patch = Box<dyn FnOnce(&mut ResponseKind) + Send>;

/// What happens to a request. (Not boxed: it lives for one call, and a
/// box would cost an allocation per request.)
#[allow(clippy::large_enum_variant)]
pub enum Gate {
    /// Run the handler on this (maybe narrowed) request, then apply the
    /// patch to its answer.
    Pass(RequestKind, Option<Patch>),
    /// Everything was refused: this is the answer.
    Answer(Box<ResponseKind>),
    /// Refused with no answer to carry it (an acks=0 produce): close the
    /// connection, as Kafka does, so the client notices.
    Close,
}

impl std::fmt::Debug for Gate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Pass(_, None) => "Pass",
            Self::Pass(_, Some(_)) => "Pass(patched)",
            Self::Answer(_) => "Answer",
            Self::Close => "Close",
        })
    }
}

/// Operations a resource type has, for the `authorized_operations`
/// bitfields (bit `n` set: operation code `n` allowed).
const TOPIC_OPS: [i8; 8] = [
    op::READ,
    op::WRITE,
    op::CREATE,
    op::DELETE,
    op::ALTER,
    op::DESCRIBE,
    op::DESCRIBE_CONFIGS,
    op::ALTER_CONFIGS,
];
const GROUP_OPS: [i8; 3] = [op::READ, op::DESCRIBE, op::DELETE];
const CLUSTER_OPS: [i8; 7] = [
    op::CREATE,
    op::CLUSTER_ACTION,
    op::DESCRIBE_CONFIGS,
    op::ALTER_CONFIGS,
    op::IDEMPOTENT_WRITE,
    op::ALTER,
    op::DESCRIBE,
];

/// DescribeConfigs / AlterConfigs resource types.
const CONFIG_TOPIC: i8 = 2;
const CONFIG_BROKER: i8 = 4;
const CONFIG_BROKER_LOGGER: i8 = 8;

const TOPIC_DENIED: i16 = 29; // TOPIC_AUTHORIZATION_FAILED
const GROUP_DENIED: i16 = 30; // GROUP_AUTHORIZATION_FAILED
const CLUSTER_DENIED: i16 = 31; // CLUSTER_AUTHORIZATION_FAILED
const TXN_DENIED: i16 = 53; // TRANSACTIONAL_ID_AUTHORIZATION_FAILED

/// Who is asking, and the decisions about them.
#[derive(Clone)]
struct Who {
    authz: Arc<Authorizer>,
    principal: Arc<str>,
    host: String,
    api: &'static str,
}

impl Who {
    /// The decision, counted and logged when it is a refusal.
    fn may(&self, operation: i8, resource_type: i8, name: &str) -> bool {
        let allowed = self.quietly(operation, resource_type, name);
        if !allowed {
            metrics::counter!("tributary_authorization_denials_total", "api" => self.api)
                .increment(1);
            tracing::debug!(
                principal = %self.principal,
                host = %self.host,
                api = self.api,
                operation = operation_name(operation),
                resource_type = resource_name(resource_type),
                resource = name,
                "authorization denied"
            );
        }
        allowed
    }

    /// The decision, not counted (filtering a listing is not a refusal).
    fn quietly(&self, operation: i8, resource_type: i8, name: &str) -> bool {
        self.authz
            .allows(&self.principal, &self.host, operation, resource_type, name)
    }

    fn may_cluster(&self, operation: i8) -> bool {
        self.may(operation, res::CLUSTER, CLUSTER_NAME)
    }

    /// CREATE on the cluster or on the topic (auto-creation, CreateTopics).
    fn may_create(&self, topic: &str) -> bool {
        self.quietly(op::CREATE, res::CLUSTER, CLUSTER_NAME)
            || self.may(op::CREATE, res::TOPIC, topic)
    }

    /// The `authorized_operations` bitfield of a resource.
    fn operations(&self, ops: &[i8], resource_type: i8, name: &str) -> i32 {
        ops.iter()
            .filter(|&&o| self.quietly(o, resource_type, name))
            .fold(0, |bits, &o| bits | (1 << o))
    }
}

/// A rule that keeps the items of `$r.$items` that `$allowed` admits and
/// answers each refused one with `$refuse` (which adds it to `$resp`, the
/// handler's answer, or to an empty answer when nothing is left).
macro_rules! narrow {
    ($r:ident, $Api:ident, $Resp:ty, $items:ident,
     |$item:ident| $allowed:expr, |$resp:ident, $gone:ident| $refuse:expr) => {{
        let (kept, denied) = split(std::mem::take(&mut $r.$items), |$item| $allowed);
        $r.$items = kept;
        if denied.is_empty() {
            return Gate::Pass(RequestKind::$Api($r), None);
        }
        let emptied = $r.$items.is_empty();
        let patch: Patch = Box::new(move |resp| {
            if let ResponseKind::$Api($resp) = resp {
                for $gone in denied {
                    $refuse;
                }
            }
        });
        narrowed(
            RequestKind::$Api($r),
            emptied,
            ResponseKind::$Api(<$Resp>::default()),
            patch,
        )
    }};
}

/// Authorize one request (see the module docs). `api` names it in the
/// denial metrics.
pub async fn gate(
    broker: &Broker,
    ctx: &RequestContext,
    api: &'static str,
    request: RequestKind,
) -> Gate {
    let fills_operations = matches!(
        request,
        RequestKind::Metadata(_)
            | RequestKind::DescribeCluster(_)
            | RequestKind::DescribeGroups(_)
            | RequestKind::ConsumerGroupDescribe(_)
            | RequestKind::DescribeTopicPartitions(_)
    );
    // Off: everything is allowed; only the authorized-operations fields
    // are filled (with every operation, as Kafka does).
    if !broker.authz.enabled() && !fills_operations {
        return Gate::Pass(request, None);
    }
    let who = Who {
        authz: broker.authz.clone(),
        principal: ctx.principal.clone(),
        host: ctx.peer.ip().to_canonical().to_string(),
        api,
    };
    let v = ctx.version;
    match request {
        RequestKind::ApiVersions(_)
        | RequestKind::SaslHandshake(_)
        | RequestKind::SaslAuthenticate(_) => Gate::Pass(request, None),
        RequestKind::Produce(r) => produce(broker, &who, r).await,
        RequestKind::Fetch(r) => fetch(&who, r),
        RequestKind::ListOffsets(r) => list_offsets(&who, r),
        RequestKind::OffsetForLeaderEpoch(r) => offset_for_leader_epoch(&who, r),
        RequestKind::DescribeTopicPartitions(r) => describe_topic_partitions(&who, r),
        RequestKind::Metadata(r) => metadata(broker, &who, r, v).await,
        RequestKind::DescribeCluster(r) => describe_cluster(&who, r),
        RequestKind::FindCoordinator(r) => find_coordinator(&who, r, v),
        RequestKind::InitProducerId(r) => init_producer_id(&who, r),
        RequestKind::CreateTopics(r) => create_topics(&who, r),
        RequestKind::DeleteTopics(r) => delete_topics(broker, &who, r, v).await,
        RequestKind::CreatePartitions(r) => create_partitions(&who, r),
        RequestKind::DeleteRecords(r) => delete_records(&who, r),
        RequestKind::DescribeConfigs(r) => describe_configs(&who, r),
        RequestKind::AlterConfigs(r) => alter_configs(&who, r),
        RequestKind::IncrementalAlterConfigs(r) => incremental_alter_configs(&who, r),
        RequestKind::JoinGroup(r) => {
            let id = r.group_id.0.clone();
            whole_group(&who, op::READ, &id, RequestKind::JoinGroup(r), || {
                ResponseKind::JoinGroup(
                    JoinGroupResponse::default()
                        .with_error_code(GROUP_DENIED)
                        .with_generation_id(-1),
                )
            })
        }
        RequestKind::SyncGroup(r) => {
            let id = r.group_id.0.clone();
            whole_group(&who, op::READ, &id, RequestKind::SyncGroup(r), || {
                ResponseKind::SyncGroup(SyncGroupResponse::default().with_error_code(GROUP_DENIED))
            })
        }
        RequestKind::Heartbeat(r) => {
            let id = r.group_id.0.clone();
            whole_group(&who, op::READ, &id, RequestKind::Heartbeat(r), || {
                ResponseKind::Heartbeat(HeartbeatResponse::default().with_error_code(GROUP_DENIED))
            })
        }
        RequestKind::LeaveGroup(r) => {
            let id = r.group_id.0.clone();
            whole_group(&who, op::READ, &id, RequestKind::LeaveGroup(r), || {
                ResponseKind::LeaveGroup(
                    LeaveGroupResponse::default().with_error_code(GROUP_DENIED),
                )
            })
        }
        RequestKind::AddPartitionsToTxn(r) => add_partitions_to_txn(&who, r, v),
        RequestKind::AddOffsetsToTxn(r) => {
            let code = if !who.may(op::WRITE, res::TRANSACTIONAL_ID, &r.transactional_id.0) {
                TXN_DENIED
            } else if !who.may(op::READ, res::GROUP, &r.group_id.0) {
                GROUP_DENIED
            } else {
                return Gate::Pass(RequestKind::AddOffsetsToTxn(r), None);
            };
            answer(ResponseKind::AddOffsetsToTxn(
                AddOffsetsToTxnResponse::default().with_error_code(code),
            ))
        }
        RequestKind::EndTxn(r) => {
            if who.may(op::WRITE, res::TRANSACTIONAL_ID, &r.transactional_id.0) {
                return Gate::Pass(RequestKind::EndTxn(r), None);
            }
            answer(ResponseKind::EndTxn(
                EndTxnResponse::default()
                    .with_error_code(TXN_DENIED)
                    .with_producer_id(ProducerId(-1))
                    .with_producer_epoch(-1),
            ))
        }
        RequestKind::TxnOffsetCommit(r) => txn_offset_commit(&who, r),
        RequestKind::DescribeTransactions(mut r) => narrow!(
            r,
            DescribeTransactions,
            DescribeTransactionsResponse,
            transactional_ids,
            |id| who.may(op::DESCRIBE, res::TRANSACTIONAL_ID, &id.0),
            |resp, id| resp.transaction_states.push(
                describe_transactions_response::TransactionState::default()
                    .with_transactional_id(id)
                    .with_error_code(TXN_DENIED)
                    .with_producer_id(ProducerId(-1))
                    .with_producer_epoch(-1)
                    .with_transaction_start_time_ms(-1)
            )
        ),
        RequestKind::DescribeProducers(mut r) => narrow!(
            r,
            DescribeProducers,
            DescribeProducersResponse,
            topics,
            |t| who.may(op::READ, res::TOPIC, &t.name.0),
            |resp, t| resp.topics.push(
                describe_producers_response::TopicResponse::default()
                    .with_name(t.name)
                    .with_partitions(
                        t.partition_indexes
                            .iter()
                            .map(|&p| {
                                describe_producers_response::PartitionResponse::default()
                                    .with_partition_index(p)
                                    .with_error_code(TOPIC_DENIED)
                            })
                            .collect()
                    )
            )
        ),
        RequestKind::ListTransactions(r) => {
            // Listed are only the ids the principal may describe.
            let who = who.clone();
            let patch: Patch = Box::new(move |resp| {
                if let ResponseKind::ListTransactions(resp) = resp {
                    resp.transaction_states.retain(|t| {
                        who.quietly(op::DESCRIBE, res::TRANSACTIONAL_ID, &t.transactional_id.0)
                    });
                }
            });
            Gate::Pass(RequestKind::ListTransactions(r), Some(patch))
        }
        RequestKind::OffsetCommit(r) => offset_commit(&who, r),
        RequestKind::OffsetFetch(r) => offset_fetch(&who, r, v),
        RequestKind::OffsetDelete(r) => offset_delete(&who, r),
        RequestKind::ListGroups(r) => list_groups(&who, r),
        RequestKind::DescribeGroups(r) => describe_groups(&who, r),
        RequestKind::ConsumerGroupHeartbeat(r) => consumer_group_heartbeat(&who, r),
        RequestKind::ConsumerGroupDescribe(r) => consumer_group_describe(&who, r),
        RequestKind::DeleteGroups(r) => delete_groups(&who, r),
        RequestKind::CreateAcls(r) => {
            on_cluster(&who, op::ALTER, r, RequestKind::CreateAcls, |r| {
                ResponseKind::CreateAcls(
                    CreateAclsResponse::default().with_results(
                        r.creations
                            .iter()
                            .map(|_| {
                                create_acls_response::AclCreationResult::default()
                                    .with_error_code(CLUSTER_DENIED)
                            })
                            .collect(),
                    ),
                )
            })
        }
        RequestKind::DeleteAcls(r) => {
            on_cluster(&who, op::ALTER, r, RequestKind::DeleteAcls, |r| {
                ResponseKind::DeleteAcls(
                    DeleteAclsResponse::default().with_filter_results(
                        r.filters
                            .iter()
                            .map(|_| {
                                delete_acls_response::DeleteAclsFilterResult::default()
                                    .with_error_code(CLUSTER_DENIED)
                            })
                            .collect(),
                    ),
                )
            })
        }
        RequestKind::DescribeAcls(r) => {
            on_cluster(&who, op::DESCRIBE, r, RequestKind::DescribeAcls, |_| {
                ResponseKind::DescribeAcls(
                    DescribeAclsResponse::default().with_error_code(CLUSTER_DENIED),
                )
            })
        }
        RequestKind::DescribeUserScramCredentials(r) => on_cluster(
            &who,
            op::DESCRIBE,
            r,
            RequestKind::DescribeUserScramCredentials,
            |_| {
                ResponseKind::DescribeUserScramCredentials(
                    DescribeUserScramCredentialsResponse::default().with_error_code(CLUSTER_DENIED),
                )
            },
        ),
        RequestKind::AlterUserScramCredentials(r) => on_cluster(
            &who,
            op::ALTER,
            r,
            RequestKind::AlterUserScramCredentials,
            |r| {
                let users = r.upsertions.iter().map(|u| u.name.clone());
                let users = users.chain(r.deletions.iter().map(|d| d.name.clone()));
                ResponseKind::AlterUserScramCredentials(
                    AlterUserScramCredentialsResponse::default().with_results(
                        users
                            .map(|user| {
                                alter_user_scram_credentials_response::AlterUserScramCredentialsResult::default()
                                    .with_user(user)
                                    .with_error_code(CLUSTER_DENIED)
                            })
                            .collect(),
                    ),
                )
            },
        ),
        other => {
            // A routed API without a rule here is refused rather than let
            // through unchecked (a test in `router` keeps the two lists
            // together).
            tracing::error!(
                api,
                "no authorization rule for this API; closing connection"
            );
            let _ = other;
            Gate::Close
        }
    }
}

/// The APIs [`gate`] has a rule for.
pub fn has_rule(key: ApiKey) -> bool {
    use ApiKey::*;
    matches!(
        key,
        ApiVersions
            | SaslHandshake
            | SaslAuthenticate
            | Produce
            | Fetch
            | ListOffsets
            | OffsetForLeaderEpoch
            | DescribeTopicPartitions
            | Metadata
            | DescribeCluster
            | FindCoordinator
            | InitProducerId
            | CreateTopics
            | DeleteTopics
            | CreatePartitions
            | DeleteRecords
            | DescribeConfigs
            | AlterConfigs
            | IncrementalAlterConfigs
            | JoinGroup
            | SyncGroup
            | Heartbeat
            | LeaveGroup
            | AddPartitionsToTxn
            | AddOffsetsToTxn
            | EndTxn
            | TxnOffsetCommit
            | DescribeTransactions
            | DescribeProducers
            | ListTransactions
            | OffsetCommit
            | OffsetFetch
            | OffsetDelete
            | ListGroups
            | DescribeGroups
            | ConsumerGroupHeartbeat
            | ConsumerGroupDescribe
            | DeleteGroups
            | CreateAcls
            | DeleteAcls
            | DescribeAcls
            | DescribeUserScramCredentials
            | AlterUserScramCredentials
    )
}

fn answer(response: ResponseKind) -> Gate {
    Gate::Answer(Box::new(response))
}

/// Pass `request` on with `patch`, or, when the rule left nothing of it
/// (`emptied`), answer with `patch` applied to `empty`.
fn narrowed(request: RequestKind, emptied: bool, empty: ResponseKind, patch: Patch) -> Gate {
    if emptied {
        let mut response = empty;
        patch(&mut response);
        answer(response)
    } else {
        Gate::Pass(request, Some(patch))
    }
}

/// Split `items` into those `allowed` and the rest.
fn split<T>(items: Vec<T>, mut allowed: impl FnMut(&T) -> bool) -> (Vec<T>, Vec<T>) {
    items.into_iter().partition(|t| allowed(t))
}

/// A request on the cluster, all or nothing: `refused` answers it.
fn on_cluster<T>(
    who: &Who,
    operation: i8,
    request: T,
    wrap: fn(T) -> RequestKind,
    refused: impl FnOnce(&T) -> ResponseKind,
) -> Gate {
    if who.may_cluster(operation) {
        Gate::Pass(wrap(request), None)
    } else {
        answer(refused(&request))
    }
}

/// A request about one group, all or nothing.
fn whole_group(
    who: &Who,
    operation: i8,
    group: &str,
    request: RequestKind,
    denied: impl FnOnce() -> ResponseKind,
) -> Gate {
    if who.may(operation, res::GROUP, group) {
        Gate::Pass(request, None)
    } else {
        answer(denied())
    }
}

/// Produce: WRITE on each topic (and on the transactional id). Auto-creating
/// a missing topic needs CREATE; without it the topic is unknown.
async fn produce(broker: &Broker, who: &Who, mut r: ProduceRequest) -> Gate {
    let txn_denied = r
        .transactional_id
        .as_ref()
        .is_some_and(|id| !who.may(op::WRITE, res::TRANSACTIONAL_ID, &id.0));
    let mut kept = Vec::with_capacity(r.topic_data.len());
    let mut denied = Vec::new();
    for t in std::mem::take(&mut r.topic_data) {
        let code = if txn_denied {
            Some(TXN_DENIED)
        } else if !who.may(op::WRITE, res::TOPIC, &t.name.0) {
            Some(TOPIC_DENIED)
        } else if broker.config.auto_create_topics
            && !who.may_create(&t.name.0)
            && matches!(broker.topics.get(&t.name.0).await, Ok(None))
        {
            Some(ResponseError::UnknownTopicOrPartition.code())
        } else {
            None
        };
        match code {
            Some(code) => {
                let parts: Vec<i32> = t.partition_data.iter().map(|p| p.index).collect();
                denied.push((t.name, parts, code));
            }
            None => kept.push(t),
        }
    }
    r.topic_data = kept;
    if denied.is_empty() {
        return Gate::Pass(RequestKind::Produce(r), None);
    }
    if r.acks == 0 {
        return Gate::Close;
    }
    let emptied = r.topic_data.is_empty();
    let patch: Patch = Box::new(move |resp| {
        if let ResponseKind::Produce(resp) = resp {
            for (name, parts, code) in denied {
                resp.responses.push(
                    produce_response::TopicProduceResponse::default()
                        .with_name(name)
                        .with_partition_responses(
                            parts
                                .into_iter()
                                .map(|i| {
                                    produce_response::PartitionProduceResponse::default()
                                        .with_index(i)
                                        .with_error_code(code)
                                        .with_base_offset(-1)
                                        .with_log_append_time_ms(-1)
                                        .with_log_start_offset(-1)
                                })
                                .collect(),
                        ),
                );
            }
        }
    });
    narrowed(
        RequestKind::Produce(r),
        emptied,
        ResponseKind::Produce(ProduceResponse::default()),
        patch,
    )
}

/// Fetch: READ on each topic.
fn fetch(who: &Who, mut r: FetchRequest) -> Gate {
    narrow!(
        r,
        Fetch,
        FetchResponse,
        topics,
        |t| who.may(op::READ, res::TOPIC, &t.topic.0),
        |resp, t| resp.responses.push(
            fetch_response::FetchableTopicResponse::default()
                .with_topic(t.topic)
                .with_topic_id(t.topic_id)
                .with_partitions(
                    t.partitions
                        .iter()
                        .map(|p| {
                            fetch_response::PartitionData::default()
                                .with_partition_index(p.partition)
                                .with_error_code(TOPIC_DENIED)
                                .with_high_watermark(-1)
                        })
                        .collect()
                )
        )
    )
}

/// ListOffsets: DESCRIBE on each topic.
fn list_offsets(who: &Who, mut r: ListOffsetsRequest) -> Gate {
    narrow!(
        r,
        ListOffsets,
        ListOffsetsResponse,
        topics,
        |t| who.may(op::DESCRIBE, res::TOPIC, &t.name.0),
        |resp, t| resp.topics.push(
            list_offsets_response::ListOffsetsTopicResponse::default()
                .with_name(t.name)
                .with_partitions(
                    t.partitions
                        .iter()
                        .map(|p| {
                            list_offsets_response::ListOffsetsPartitionResponse::default()
                                .with_partition_index(p.partition_index)
                                .with_error_code(TOPIC_DENIED)
                                .with_offset(-1)
                                .with_timestamp(-1)
                        })
                        .collect()
                )
        )
    )
}

/// OffsetForLeaderEpoch: DESCRIBE on each topic (what a consumer
/// validating its position needs).
fn offset_for_leader_epoch(who: &Who, mut r: OffsetForLeaderEpochRequest) -> Gate {
    narrow!(
        r,
        OffsetForLeaderEpoch,
        OffsetForLeaderEpochResponse,
        topics,
        |t| who.may(op::DESCRIBE, res::TOPIC, &t.topic.0),
        |resp, t| resp.topics.push(
            offset_for_leader_epoch_response::OffsetForLeaderTopicResult::default()
                .with_topic(t.topic)
                .with_partitions(
                    t.partitions
                        .iter()
                        .map(|p| {
                            offset_for_leader_epoch_response::EpochEndOffset::default()
                                .with_partition(p.partition)
                                .with_error_code(TOPIC_DENIED)
                                .with_leader_epoch(-1)
                                .with_end_offset(-1)
                        })
                        .collect()
                )
        )
    )
}

/// DescribeTopicPartitions: DESCRIBE on each topic; a listing shows only
/// the topics the principal may DESCRIBE, and every listed topic carries
/// its authorized operations.
fn describe_topic_partitions(who: &Who, mut r: DescribeTopicPartitionsRequest) -> Gate {
    let (kept, denied) = split(std::mem::take(&mut r.topics), |t| {
        who.may(op::DESCRIBE, res::TOPIC, &t.name.0)
    });
    // Every topic named was refused: answer without listing all topics.
    let emptied = kept.is_empty() && !denied.is_empty();
    r.topics = kept;
    let who = who.clone();
    let patch: Patch = Box::new(move |resp| {
        let ResponseKind::DescribeTopicPartitions(resp) = resp else {
            return;
        };
        resp.topics.retain(|t| {
            t.name
                .as_ref()
                .is_none_or(|n| t.error_code != 0 || who.quietly(op::DESCRIBE, res::TOPIC, &n.0))
        });
        for t in &mut resp.topics {
            if let (Some(name), 0) = (&t.name, t.error_code) {
                t.topic_authorized_operations = who.operations(&TOPIC_OPS, res::TOPIC, &name.0);
            }
        }
        for t in denied {
            resp.topics.push(
                describe_topic_partitions_response::DescribeTopicPartitionsResponseTopic::default()
                    .with_name(Some(t.name))
                    .with_error_code(TOPIC_DENIED),
            );
        }
    });
    narrowed(
        RequestKind::DescribeTopicPartitions(r),
        emptied,
        ResponseKind::DescribeTopicPartitions(DescribeTopicPartitionsResponse::default()),
        patch,
    )
}

/// Metadata: only topics the principal may DESCRIBE are listed; a named
/// one it may not is TOPIC_AUTHORIZATION_FAILED, as is one that would be
/// auto-created without CREATE. Fills the authorized-operations fields.
async fn metadata(broker: &Broker, who: &Who, mut r: MetadataRequest, version: i16) -> Gate {
    let topic_ops = version >= 8 && r.include_topic_authorized_operations;
    let cluster_ops = (8..=10).contains(&version) && r.include_cluster_authorized_operations;
    let listing = match &r.topics {
        None => true,
        Some(t) => t.is_empty() && version == 0,
    };
    let mut denied = Vec::new();
    let mut asked: Option<HashSet<String>> = None;
    if !listing {
        let auto_create =
            broker.config.auto_create_topics && (version < 4 || r.allow_auto_topic_creation);
        let mut kept = Vec::new();
        let mut names = HashSet::new();
        for t in r.topics.take().unwrap_or_default() {
            let name = match &t.name {
                Some(n) => n.0.to_string(),
                None => match broker.topic_store.get_topic_by_id(t.topic_id).await {
                    Ok(Some(topic)) => topic.name,
                    // Unknown ids are the handler's to answer.
                    _ => {
                        kept.push(t);
                        continue;
                    }
                },
            };
            let refused = !who.may(op::DESCRIBE, res::TOPIC, &name)
                || (auto_create
                    && !who.may_create(&name)
                    && matches!(broker.topics.get(&name).await, Ok(None)));
            if refused {
                denied.push(
                    metadata_response::MetadataResponseTopic::default()
                        .with_name(t.name)
                        .with_topic_id(t.topic_id)
                        .with_error_code(TOPIC_DENIED),
                );
            } else {
                names.insert(name);
                kept.push(t);
            }
        }
        // v0 reads an empty list as "all topics": then nothing is asked.
        if kept.is_empty() && version == 0 {
            names.clear();
        }
        r.topics = Some(kept);
        asked = Some(names);
    }
    let who = who.clone();
    let patch: Patch = Box::new(move |resp| {
        let ResponseKind::Metadata(resp) = resp else {
            return;
        };
        resp.topics.retain(|t| {
            let Some(name) = t.name.as_ref().map(|n| n.0.as_str()) else {
                return true;
            };
            asked.as_ref().is_none_or(|a| a.contains(name))
                && who.quietly(op::DESCRIBE, res::TOPIC, name)
        });
        if topic_ops {
            for t in &mut resp.topics {
                if let (Some(name), 0) = (&t.name, t.error_code) {
                    t.topic_authorized_operations = who.operations(&TOPIC_OPS, res::TOPIC, &name.0);
                }
            }
        }
        resp.topics.extend(denied);
        if cluster_ops {
            resp.cluster_authorized_operations = cluster_operations(&who);
        }
    });
    Gate::Pass(RequestKind::Metadata(r), Some(patch))
}

/// The cluster's authorized-operations bitfield: 0 without DESCRIBE.
fn cluster_operations(who: &Who) -> i32 {
    if who.quietly(op::DESCRIBE, res::CLUSTER, CLUSTER_NAME) {
        who.operations(&CLUSTER_OPS, res::CLUSTER, CLUSTER_NAME)
    } else {
        0
    }
}

/// DescribeCluster: open to all (like Metadata); fills the cluster's
/// authorized operations when asked.
fn describe_cluster(who: &Who, r: DescribeClusterRequest) -> Gate {
    if !r.include_cluster_authorized_operations {
        return Gate::Pass(RequestKind::DescribeCluster(r), None);
    }
    let who = who.clone();
    let patch: Patch = Box::new(move |resp| {
        if let ResponseKind::DescribeCluster(resp) = resp {
            resp.cluster_authorized_operations = cluster_operations(&who);
        }
    });
    Gate::Pass(RequestKind::DescribeCluster(r), Some(patch))
}

/// FindCoordinator: DESCRIBE on the group or transactional id.
fn find_coordinator(who: &Who, mut r: FindCoordinatorRequest, version: i16) -> Gate {
    let (resource_type, code) = match r.key_type {
        1 => (res::TRANSACTIONAL_ID, TXN_DENIED),
        _ => (res::GROUP, GROUP_DENIED),
    };
    if version < 4 {
        if who.may(op::DESCRIBE, resource_type, &r.key) {
            return Gate::Pass(RequestKind::FindCoordinator(r), None);
        }
        return answer(ResponseKind::FindCoordinator(
            FindCoordinatorResponse::default()
                .with_error_code(code)
                .with_node_id(BrokerId(-1))
                .with_port(-1),
        ));
    }
    let (kept, denied) = split(std::mem::take(&mut r.coordinator_keys), |k| {
        who.may(op::DESCRIBE, resource_type, k)
    });
    r.coordinator_keys = kept;
    if denied.is_empty() {
        return Gate::Pass(RequestKind::FindCoordinator(r), None);
    }
    let emptied = r.coordinator_keys.is_empty();
    let patch: Patch = Box::new(move |resp| {
        if let ResponseKind::FindCoordinator(resp) = resp {
            resp.coordinators.extend(denied.into_iter().map(|key| {
                find_coordinator_response::Coordinator::default()
                    .with_key(key)
                    .with_node_id(BrokerId(-1))
                    .with_port(-1)
                    .with_error_code(code)
            }));
        }
    });
    narrowed(
        RequestKind::FindCoordinator(r),
        emptied,
        ResponseKind::FindCoordinator(FindCoordinatorResponse::default()),
        patch,
    )
}

/// InitProducerId: WRITE on the transactional id; an idempotent producer
/// needs IDEMPOTENT_WRITE on the cluster or WRITE on some topic.
fn init_producer_id(who: &Who, r: InitProducerIdRequest) -> Gate {
    let code = match &r.transactional_id {
        Some(id) if !who.may(op::WRITE, res::TRANSACTIONAL_ID, &id.0) => TXN_DENIED,
        Some(_) => return Gate::Pass(RequestKind::InitProducerId(r), None),
        None if who.quietly(op::IDEMPOTENT_WRITE, res::CLUSTER, CLUSTER_NAME)
            || who
                .authz
                .allows_some(&who.principal, &who.host, op::WRITE, res::TOPIC) =>
        {
            return Gate::Pass(RequestKind::InitProducerId(r), None)
        }
        None => {
            who.may_cluster(op::IDEMPOTENT_WRITE);
            CLUSTER_DENIED
        }
    };
    answer(ResponseKind::InitProducerId(
        InitProducerIdResponse::default()
            .with_error_code(code)
            .with_producer_id(ProducerId(-1))
            .with_producer_epoch(-1),
    ))
}

/// AddPartitionsToTxn: WRITE on the transactional id and on every topic
/// (all or nothing, as Kafka: with a refused topic the others are not
/// attempted). The batched form (v4) is for brokers: CLUSTER_ACTION.
fn add_partitions_to_txn(who: &Who, r: AddPartitionsToTxnRequest, version: i16) -> Gate {
    if version >= 4 {
        if who.may_cluster(op::CLUSTER_ACTION) {
            return Gate::Pass(RequestKind::AddPartitionsToTxn(r), None);
        }
        return answer(ResponseKind::AddPartitionsToTxn(
            AddPartitionsToTxnResponse::default().with_error_code(CLUSTER_DENIED),
        ));
    }
    let txn_ok = who.may(
        op::WRITE,
        res::TRANSACTIONAL_ID,
        &r.v3_and_below_transactional_id.0,
    );
    let denied: HashSet<StrBytes> = r
        .v3_and_below_topics
        .iter()
        .filter(|t| !txn_ok || !who.may(op::WRITE, res::TOPIC, &t.name.0))
        .map(|t| t.name.0.clone())
        .collect();
    if denied.is_empty() {
        return Gate::Pass(RequestKind::AddPartitionsToTxn(r), None);
    }
    let not_attempted = ResponseError::OperationNotAttempted.code();
    let results = r
        .v3_and_below_topics
        .iter()
        .map(|t| {
            let code = match (txn_ok, denied.contains(&t.name.0)) {
                (false, _) => TXN_DENIED,
                (true, true) => TOPIC_DENIED,
                (true, false) => not_attempted,
            };
            crate::apis::transactions::topic_result(t, |_| code)
        })
        .collect();
    answer(ResponseKind::AddPartitionsToTxn(
        AddPartitionsToTxnResponse::default().with_results_by_topic_v3_and_below(results),
    ))
}

/// TxnOffsetCommit: WRITE on the transactional id, READ on the group (all
/// or nothing) and READ on each topic.
fn txn_offset_commit(who: &Who, mut r: TxnOffsetCommitRequest) -> Gate {
    let whole = if !who.may(op::WRITE, res::TRANSACTIONAL_ID, &r.transactional_id.0) {
        Some(TXN_DENIED)
    } else if !who.may(op::READ, res::GROUP, &r.group_id.0) {
        Some(GROUP_DENIED)
    } else {
        None
    };
    narrow!(
        r,
        TxnOffsetCommit,
        TxnOffsetCommitResponse,
        topics,
        |t| whole.is_none() && who.may(op::READ, res::TOPIC, &t.name.0),
        |resp, t| resp.topics.push(
            txn_offset_commit_response::TxnOffsetCommitResponseTopic::default()
                .with_name(t.name)
                .with_partitions(
                    t.partitions
                        .iter()
                        .map(|p| {
                            txn_offset_commit_response::TxnOffsetCommitResponsePartition::default()
                                .with_partition_index(p.partition_index)
                                .with_error_code(whole.unwrap_or(TOPIC_DENIED))
                        })
                        .collect()
                )
        )
    )
}

/// An error entry of a topic-level admin answer.
fn refusal(code: i16) -> Option<StrBytes> {
    let why = match code {
        TOPIC_DENIED => "not authorized for this topic",
        CLUSTER_DENIED => "not authorized for the cluster",
        _ => "not authorized",
    };
    Some(StrBytes::from_static_str(why))
}

/// CreateTopics: CREATE on the cluster or the topic.
fn create_topics(who: &Who, mut r: CreateTopicsRequest) -> Gate {
    narrow!(
        r,
        CreateTopics,
        CreateTopicsResponse,
        topics,
        |t| who.may_create(&t.name.0),
        |resp, t| resp.topics.push(
            create_topics_response::CreatableTopicResult::default()
                .with_name(t.name)
                .with_error_code(TOPIC_DENIED)
                .with_error_message(refusal(TOPIC_DENIED))
                .with_topic_config_error_code(TOPIC_DENIED)
                .with_num_partitions(-1)
                .with_replication_factor(-1)
        )
    )
}

/// DeleteTopics: DELETE on each topic (named, or by id when the id is known).
async fn delete_topics(broker: &Broker, who: &Who, mut r: DeleteTopicsRequest, v: i16) -> Gate {
    let mut denied: Vec<(Option<TopicName>, uuid::Uuid)> = Vec::new();
    if v >= 6 {
        let mut kept = Vec::new();
        for t in std::mem::take(&mut r.topics) {
            let name = match &t.name {
                Some(n) => Some(n.0.to_string()),
                None => match broker.topic_store.get_topic_by_id(t.topic_id).await {
                    Ok(found) => found.map(|t| t.name),
                    Err(_) => None,
                },
            };
            match name {
                Some(n) if !who.may(op::DELETE, res::TOPIC, &n) => {
                    denied.push((t.name, t.topic_id))
                }
                _ => kept.push(t),
            }
        }
        r.topics = kept;
    } else {
        let (kept, refused) = split(std::mem::take(&mut r.topic_names), |n| {
            who.may(op::DELETE, res::TOPIC, &n.0)
        });
        r.topic_names = kept;
        denied.extend(refused.into_iter().map(|n| (Some(n), uuid::Uuid::nil())));
    }
    if denied.is_empty() {
        return Gate::Pass(RequestKind::DeleteTopics(r), None);
    }
    let emptied = r.topics.is_empty() && r.topic_names.is_empty();
    let patch: Patch = Box::new(move |resp| {
        if let ResponseKind::DeleteTopics(resp) = resp {
            resp.responses.extend(denied.into_iter().map(|(name, id)| {
                delete_topics_response::DeletableTopicResult::default()
                    .with_name(name)
                    .with_topic_id(id)
                    .with_error_code(TOPIC_DENIED)
                    .with_error_message(refusal(TOPIC_DENIED))
            }));
        }
    });
    narrowed(
        RequestKind::DeleteTopics(r),
        emptied,
        ResponseKind::DeleteTopics(DeleteTopicsResponse::default()),
        patch,
    )
}

/// CreatePartitions: ALTER on each topic.
fn create_partitions(who: &Who, mut r: CreatePartitionsRequest) -> Gate {
    narrow!(
        r,
        CreatePartitions,
        CreatePartitionsResponse,
        topics,
        |t| who.may(op::ALTER, res::TOPIC, &t.name.0),
        |resp, t| resp.results.push(
            create_partitions_response::CreatePartitionsTopicResult::default()
                .with_name(t.name)
                .with_error_code(TOPIC_DENIED)
                .with_error_message(refusal(TOPIC_DENIED))
        )
    )
}

/// DeleteRecords: DELETE on each topic.
fn delete_records(who: &Who, mut r: DeleteRecordsRequest) -> Gate {
    narrow!(
        r,
        DeleteRecords,
        DeleteRecordsResponse,
        topics,
        |t| who.may(op::DELETE, res::TOPIC, &t.name.0),
        |resp, t| resp.topics.push(
            delete_records_response::DeleteRecordsTopicResult::default()
                .with_name(t.name)
                .with_partitions(
                    t.partitions
                        .iter()
                        .map(|p| {
                            delete_records_response::DeleteRecordsPartitionResult::default()
                                .with_partition_index(p.partition_index)
                                .with_low_watermark(-1)
                                .with_error_code(TOPIC_DENIED)
                        })
                        .collect()
                )
        )
    )
}

/// May `who` do `operation` (DESCRIBE_CONFIGS or ALTER_CONFIGS) on a
/// config resource: a topic, or the cluster for brokers? Other types are
/// the handler's to refuse as unsupported.
fn may_config(who: &Who, operation: i8, resource_type: i8, name: &str) -> bool {
    match resource_type {
        CONFIG_TOPIC => who.may(operation, res::TOPIC, name),
        CONFIG_BROKER | CONFIG_BROKER_LOGGER => who.may_cluster(operation),
        _ => true,
    }
}

/// The refusal code of a config resource [`may_config`] refused.
fn config_denied(resource_type: i8) -> i16 {
    if resource_type == CONFIG_TOPIC {
        TOPIC_DENIED
    } else {
        CLUSTER_DENIED
    }
}

/// DescribeConfigs: DESCRIBE_CONFIGS on each topic, or on the cluster for
/// brokers.
fn describe_configs(who: &Who, mut r: DescribeConfigsRequest) -> Gate {
    narrow!(
        r,
        DescribeConfigs,
        DescribeConfigsResponse,
        resources,
        |c| may_config(who, op::DESCRIBE_CONFIGS, c.resource_type, &c.resource_name),
        |resp, c| resp.results.push(
            describe_configs_response::DescribeConfigsResult::default()
                .with_error_code(config_denied(c.resource_type))
                .with_error_message(refusal(config_denied(c.resource_type)))
                .with_resource_type(c.resource_type)
                .with_resource_name(c.resource_name)
        )
    )
}

/// AlterConfigs: ALTER_CONFIGS on each topic, or on the cluster for brokers.
fn alter_configs(who: &Who, mut r: AlterConfigsRequest) -> Gate {
    narrow!(
        r,
        AlterConfigs,
        AlterConfigsResponse,
        resources,
        |c| may_config(who, op::ALTER_CONFIGS, c.resource_type, &c.resource_name),
        |resp, c| resp.responses.push(
            alter_configs_response::AlterConfigsResourceResponse::default()
                .with_error_code(config_denied(c.resource_type))
                .with_error_message(refusal(config_denied(c.resource_type)))
                .with_resource_type(c.resource_type)
                .with_resource_name(c.resource_name)
        )
    )
}

/// IncrementalAlterConfigs: as AlterConfigs.
fn incremental_alter_configs(who: &Who, mut r: IncrementalAlterConfigsRequest) -> Gate {
    narrow!(
        r,
        IncrementalAlterConfigs,
        IncrementalAlterConfigsResponse,
        resources,
        |c| may_config(who, op::ALTER_CONFIGS, c.resource_type, &c.resource_name),
        |resp, c| resp.responses.push(
            incremental_alter_configs_response::AlterConfigsResourceResponse::default()
                .with_error_code(config_denied(c.resource_type))
                .with_error_message(refusal(config_denied(c.resource_type)))
                .with_resource_type(c.resource_type)
                .with_resource_name(c.resource_name)
        )
    )
}

/// OffsetCommit: READ on the group, then READ on each topic.
fn offset_commit(who: &Who, mut r: OffsetCommitRequest) -> Gate {
    let group_ok = who.may(op::READ, res::GROUP, &r.group_id.0);
    if !group_ok && r.topics.is_empty() {
        // Nothing to refuse item by item, and nothing for the handler.
        return answer(ResponseKind::OffsetCommit(OffsetCommitResponse::default()));
    }
    let code = if group_ok { TOPIC_DENIED } else { GROUP_DENIED };
    narrow!(
        r,
        OffsetCommit,
        OffsetCommitResponse,
        topics,
        |t| group_ok && who.may(op::READ, res::TOPIC, &t.name.0),
        |resp, t| resp.topics.push(
            offset_commit_response::OffsetCommitResponseTopic::default()
                .with_name(t.name)
                .with_partitions(
                    t.partitions
                        .iter()
                        .map(|p| {
                            offset_commit_response::OffsetCommitResponsePartition::default()
                                .with_partition_index(p.partition_index)
                                .with_error_code(code)
                        })
                        .collect()
                )
        )
    )
}

/// OffsetFetch: DESCRIBE on each group; named topics need DESCRIBE
/// (TOPIC_AUTHORIZATION_FAILED), a request for all topics lists only the
/// describable ones.
fn offset_fetch(who: &Who, mut r: OffsetFetchRequest, version: i16) -> Gate {
    if version < 8 {
        if !who.may(op::DESCRIBE, res::GROUP, &r.group_id.0) {
            let topics = r
                .topics
                .unwrap_or_default()
                .into_iter()
                .map(|t| {
                    offset_fetch_response::OffsetFetchResponseTopic::default()
                        .with_name(t.name)
                        .with_partitions(
                            t.partition_indexes
                                .into_iter()
                                .map(|p| {
                                    offset_fetch_response::OffsetFetchResponsePartition::default()
                                        .with_partition_index(p)
                                        .with_committed_offset(-1)
                                        .with_error_code(GROUP_DENIED)
                                })
                                .collect(),
                        )
                })
                .collect();
            return answer(ResponseKind::OffsetFetch(
                OffsetFetchResponse::default()
                    .with_error_code(GROUP_DENIED)
                    .with_topics(topics),
            ));
        }
        let denied = match r.topics.take() {
            Some(topics) => {
                let (kept, denied) =
                    split(topics, |t| who.may(op::DESCRIBE, res::TOPIC, &t.name.0));
                r.topics = Some(kept);
                denied
            }
            None => Vec::new(),
        };
        let who = who.clone();
        let patch: Patch = Box::new(move |resp| {
            let ResponseKind::OffsetFetch(resp) = resp else {
                return;
            };
            resp.topics
                .retain(|t| who.quietly(op::DESCRIBE, res::TOPIC, &t.name.0));
            resp.topics.extend(denied.into_iter().map(|t| {
                offset_fetch_response::OffsetFetchResponseTopic::default()
                    .with_name(t.name)
                    .with_partitions(
                        t.partition_indexes
                            .into_iter()
                            .map(|p| {
                                offset_fetch_response::OffsetFetchResponsePartition::default()
                                    .with_partition_index(p)
                                    .with_committed_offset(-1)
                                    .with_error_code(TOPIC_DENIED)
                            })
                            .collect(),
                    )
            }));
        });
        return Gate::Pass(RequestKind::OffsetFetch(r), Some(patch));
    }
    // v8+: several groups.
    let (mut kept, refused) = split(std::mem::take(&mut r.groups), |g| {
        who.may(op::DESCRIBE, res::GROUP, &g.group_id.0)
    });
    let mut denied_topics = Vec::new();
    for g in &mut kept {
        if let Some(topics) = g.topics.take() {
            let (ok, no) = split(topics, |t| who.may(op::DESCRIBE, res::TOPIC, &t.name.0));
            g.topics = Some(ok);
            if !no.is_empty() {
                denied_topics.push((g.group_id.clone(), no));
            }
        }
    }
    r.groups = kept;
    let emptied = r.groups.is_empty();
    let who = who.clone();
    let patch: Patch = Box::new(move |resp| {
        let ResponseKind::OffsetFetch(resp) = resp else {
            return;
        };
        for g in &mut resp.groups {
            g.topics
                .retain(|t| who.quietly(op::DESCRIBE, res::TOPIC, &t.name.0));
            if let Some((_, topics)) = denied_topics.iter().find(|(id, _)| *id == g.group_id) {
                g.topics.extend(topics.iter().map(|t| {
                    offset_fetch_response::OffsetFetchResponseTopics::default()
                        .with_name(t.name.clone())
                        .with_partitions(
                            t.partition_indexes
                                .iter()
                                .map(|&p| {
                                    offset_fetch_response::OffsetFetchResponsePartitions::default()
                                        .with_partition_index(p)
                                        .with_committed_offset(-1)
                                        .with_error_code(TOPIC_DENIED)
                                })
                                .collect(),
                        )
                }));
            }
        }
        resp.groups.extend(refused.into_iter().map(|g| {
            offset_fetch_response::OffsetFetchResponseGroup::default()
                .with_group_id(g.group_id)
                .with_error_code(GROUP_DENIED)
        }));
    });
    narrowed(
        RequestKind::OffsetFetch(r),
        emptied,
        ResponseKind::OffsetFetch(OffsetFetchResponse::default()),
        patch,
    )
}

/// OffsetDelete: DELETE on the group, READ on each topic.
fn offset_delete(who: &Who, mut r: OffsetDeleteRequest) -> Gate {
    if !who.may(op::DELETE, res::GROUP, &r.group_id.0) {
        return answer(ResponseKind::OffsetDelete(
            OffsetDeleteResponse::default().with_error_code(GROUP_DENIED),
        ));
    }
    narrow!(
        r,
        OffsetDelete,
        OffsetDeleteResponse,
        topics,
        |t| who.may(op::READ, res::TOPIC, &t.name.0),
        |resp, t| resp.topics.push(
            offset_delete_response::OffsetDeleteResponseTopic::default()
                .with_name(t.name)
                .with_partitions(
                    t.partitions
                        .iter()
                        .map(|p| {
                            offset_delete_response::OffsetDeleteResponsePartition::default()
                                .with_partition_index(p.partition_index)
                                .with_error_code(TOPIC_DENIED)
                        })
                        .collect()
                )
        )
    )
}

/// ListGroups: everything with DESCRIBE on the cluster, else the groups the
/// principal may DESCRIBE.
fn list_groups(who: &Who, r: ListGroupsRequest) -> Gate {
    if who.quietly(op::DESCRIBE, res::CLUSTER, CLUSTER_NAME) {
        return Gate::Pass(RequestKind::ListGroups(r), None);
    }
    let who = who.clone();
    let patch: Patch = Box::new(move |resp| {
        if let ResponseKind::ListGroups(resp) = resp {
            resp.groups
                .retain(|g| who.quietly(op::DESCRIBE, res::GROUP, &g.group_id.0));
        }
    });
    Gate::Pass(RequestKind::ListGroups(r), Some(patch))
}

/// DescribeGroups: DESCRIBE on each group; fills the groups' authorized
/// operations when asked.
fn describe_groups(who: &Who, mut r: DescribeGroupsRequest) -> Gate {
    let (kept, denied) = split(std::mem::take(&mut r.groups), |g| {
        who.may(op::DESCRIBE, res::GROUP, &g.0)
    });
    r.groups = kept;
    let fill = r.include_authorized_operations;
    if denied.is_empty() && !fill {
        return Gate::Pass(RequestKind::DescribeGroups(r), None);
    }
    let emptied = r.groups.is_empty();
    let who = who.clone();
    let patch: Patch = Box::new(move |resp| {
        let ResponseKind::DescribeGroups(resp) = resp else {
            return;
        };
        if fill {
            for g in &mut resp.groups {
                g.authorized_operations = who.operations(&GROUP_OPS, res::GROUP, &g.group_id.0);
            }
        }
        resp.groups.extend(denied.into_iter().map(|id| {
            describe_groups_response::DescribedGroup::default()
                .with_group_id(id)
                .with_error_code(GROUP_DENIED)
        }));
    });
    narrowed(
        RequestKind::DescribeGroups(r),
        emptied,
        ResponseKind::DescribeGroups(DescribeGroupsResponse::default()),
        patch,
    )
}

/// ConsumerGroupHeartbeat: READ on the group, and DESCRIBE on every topic
/// subscribed by name (as Kafka checks).
fn consumer_group_heartbeat(who: &Who, r: ConsumerGroupHeartbeatRequest) -> Gate {
    let denied = |code: i16| {
        answer(ResponseKind::ConsumerGroupHeartbeat(
            ConsumerGroupHeartbeatResponse::default().with_error_code(code),
        ))
    };
    if !who.may(op::READ, res::GROUP, &r.group_id.0) {
        return denied(GROUP_DENIED);
    }
    let topics_denied = r
        .subscribed_topic_names
        .iter()
        .flatten()
        .any(|t| !who.may(op::DESCRIBE, res::TOPIC, &t.0));
    if topics_denied {
        return denied(TOPIC_DENIED);
    }
    Gate::Pass(RequestKind::ConsumerGroupHeartbeat(r), None)
}

/// ConsumerGroupDescribe: DESCRIBE on each group; fills the groups'
/// authorized operations when asked.
fn consumer_group_describe(who: &Who, mut r: ConsumerGroupDescribeRequest) -> Gate {
    let (kept, denied) = split(std::mem::take(&mut r.group_ids), |g| {
        who.may(op::DESCRIBE, res::GROUP, &g.0)
    });
    r.group_ids = kept;
    let fill = r.include_authorized_operations;
    if denied.is_empty() && !fill {
        return Gate::Pass(RequestKind::ConsumerGroupDescribe(r), None);
    }
    let emptied = r.group_ids.is_empty();
    let who = who.clone();
    let patch: Patch = Box::new(move |resp| {
        let ResponseKind::ConsumerGroupDescribe(resp) = resp else {
            return;
        };
        if fill {
            for g in &mut resp.groups {
                g.authorized_operations = who.operations(&GROUP_OPS, res::GROUP, &g.group_id.0);
            }
        }
        resp.groups.extend(denied.into_iter().map(|id| {
            consumer_group_describe_response::DescribedGroup::default()
                .with_group_id(id)
                .with_error_code(GROUP_DENIED)
        }));
    });
    narrowed(
        RequestKind::ConsumerGroupDescribe(r),
        emptied,
        ResponseKind::ConsumerGroupDescribe(ConsumerGroupDescribeResponse::default()),
        patch,
    )
}

/// DeleteGroups: DELETE on each group.
fn delete_groups(who: &Who, mut r: DeleteGroupsRequest) -> Gate {
    narrow!(
        r,
        DeleteGroups,
        DeleteGroupsResponse,
        groups_names,
        |g| who.may(op::DELETE, res::GROUP, &g.0),
        |resp, id| resp.results.push(
            delete_groups_response::DeletableGroupResult::default()
                .with_group_id(id)
                .with_error_code(GROUP_DENIED)
        )
    )
}

/// Kafka's name of an operation code, for logs.
pub fn operation_name(code: i8) -> &'static str {
    match code {
        op::ALL => "All",
        op::READ => "Read",
        op::WRITE => "Write",
        op::CREATE => "Create",
        op::DELETE => "Delete",
        op::ALTER => "Alter",
        op::DESCRIBE => "Describe",
        op::CLUSTER_ACTION => "ClusterAction",
        op::DESCRIBE_CONFIGS => "DescribeConfigs",
        op::ALTER_CONFIGS => "AlterConfigs",
        op::IDEMPOTENT_WRITE => "IdempotentWrite",
        op::CREATE_TOKENS => "CreateTokens",
        op::DESCRIBE_TOKENS => "DescribeTokens",
        _ => "Unknown",
    }
}

/// Kafka's name of a resource type code, for logs.
pub fn resource_name(code: i8) -> &'static str {
    match code {
        res::TOPIC => "Topic",
        res::GROUP => "Group",
        res::CLUSTER => "Cluster",
        res::TRANSACTIONAL_ID => "TransactionalId",
        res::DELEGATION_TOKEN => "DelegationToken",
        res::USER => "User",
        _ => "Unknown",
    }
}
