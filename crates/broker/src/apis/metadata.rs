//! Metadata: the broker list (just this broker for now), and topics with
//! their partitions, auto-creating requested topics when allowed.

use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::{BrokerId, MetadataRequest, MetadataResponse};
use kafka_protocol::ResponseError;
use tributary_meta::TopicMeta;
use tributary_runtime::Chain;

use super::{str_bytes, topic_name};
use crate::cluster::{client_zone, leader_among, on_listener};
use crate::context::RequestContext;
use crate::error::meta_error_code;
use crate::topics::{invalid_topic_name, is_internal_topic};
use crate::Broker;
use tributary_meta::BrokerInfo;

pub async fn handle(
    broker: &Broker,
    req: MetadataRequest,
    version: i16,
    ctx: &RequestContext,
) -> MetadataResponse {
    let cfg = &broker.config;
    let live = live_brokers(broker, ctx);
    let controller = live.first().map_or(cfg.node_id, |b| b.node_id);
    let mut resp = MetadataResponse::default()
        .with_brokers(
            live.iter()
                .map(|b| {
                    MetadataResponseBroker::default()
                        .with_node_id(BrokerId(b.node_id))
                        .with_host(str_bytes(&b.host))
                        .with_port(b.port)
                        .with_rack(b.rack.as_deref().map(str_bytes))
                })
                .collect(),
        )
        .with_cluster_id(Some(str_bytes(&cfg.cluster_id)))
        .with_controller_id(BrokerId(controller));
    // v0: an empty list means all topics; v1+: null means all.
    let requested = match req.topics {
        None => None,
        Some(t) if t.is_empty() && version == 0 => None,
        Some(t) => Some(t),
    };
    let Some(requested) = requested else {
        match broker.topic_store.list_topics().await {
            Ok(all) => resp.topics = all.iter().map(|t| topic_entry(&live, t)).collect(),
            Err(e) => {
                tracing::warn!(error = %Chain(&e), "metadata: listing topics failed");
                resp.error_code = meta_error_code(&e);
            }
        }
        return resp;
    };
    let auto_create = cfg.auto_create_topics && (version < 4 || req.allow_auto_topic_creation);
    for t in requested {
        let Some(name) = t.name.as_ref().map(|n| n.0.to_string()) else {
            // Lookup by topic id (v10+ clients may send only ids).
            let entry = match broker.topic_store.get_topic_by_id(t.topic_id).await {
                Ok(Some(topic)) => topic_entry(&live, &topic),
                Ok(None) => MetadataResponseTopic::default()
                    .with_topic_id(t.topic_id)
                    .with_error_code(ResponseError::UnknownTopicId.code()),
                Err(e) => MetadataResponseTopic::default()
                    .with_topic_id(t.topic_id)
                    .with_error_code(meta_error_code(&e)),
            };
            resp.topics.push(entry);
            continue;
        };
        let error_entry = |code: i16| {
            MetadataResponseTopic::default()
                .with_name(Some(topic_name(&name)))
                .with_error_code(code)
        };
        if invalid_topic_name(&name).is_some() {
            resp.topics
                .push(error_entry(ResponseError::InvalidTopicException.code()));
            continue;
        }
        let found = if auto_create {
            broker.topics.get_or_create(&name, cfg.num_partitions).await
        } else {
            broker.topics.get(&name).await
        };
        match found {
            Ok(Some(topic)) => resp.topics.push(topic_entry(&live, &topic)),
            Ok(None) => resp
                .topics
                .push(error_entry(ResponseError::UnknownTopicOrPartition.code())),
            Err(e) => resp.topics.push(error_entry(meta_error_code(&e))),
        }
    }
    resp
}

/// The brokers a client is shown. A client that names its zone sees only
/// that zone's brokers (when the zone has any), so its traffic stays in the
/// zone; and each broker at the address of the listener the client came in
/// on.
pub(crate) fn live_brokers(broker: &Broker, ctx: &RequestContext) -> Vec<BrokerInfo> {
    on_listener(
        broker.cluster.brokers_for_zone(client_zone(&ctx.client_id)),
        ctx.listener,
    )
}

/// The node that leads `partition` of `topic` among `live` (-1: none).
pub(crate) fn leader_of(live: &[BrokerInfo], topic: &TopicMeta, partition: i32) -> i32 {
    leader_among(live, topic.id, partition).map_or(-1, |b| b.node_id)
}

fn topic_entry(live: &[BrokerInfo], topic: &TopicMeta) -> MetadataResponseTopic {
    MetadataResponseTopic::default()
        .with_name(Some(topic_name(&topic.name)))
        .with_topic_id(topic.id)
        .with_is_internal(is_internal_topic(&topic.name))
        .with_partitions(
            (0..topic.partitions)
                .map(|p| {
                    let node = BrokerId(leader_of(live, topic, p));
                    MetadataResponsePartition::default()
                        .with_partition_index(p)
                        .with_leader_id(node)
                        .with_leader_epoch(tributary_storage::reader::LEADER_EPOCH)
                        .with_replica_nodes(vec![node])
                        .with_isr_nodes(vec![node])
                })
                .collect(),
        )
}
