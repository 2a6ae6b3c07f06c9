//! DescribeCluster: the live brokers (at the addresses of the listener the
//! client came in on) and the cluster id.

use kafka_protocol::messages::describe_cluster_response::DescribeClusterBroker;
use kafka_protocol::messages::{BrokerId, DescribeClusterRequest, DescribeClusterResponse};

use super::str_bytes;
use crate::cluster::on_listener;
use crate::context::RequestContext;
use crate::Broker;

pub fn handle(
    broker: &Broker,
    _req: DescribeClusterRequest,
    _version: i16,
    ctx: &RequestContext,
) -> DescribeClusterResponse {
    let live = on_listener(broker.cluster.brokers(), ctx.listener);
    let controller = live.first().map_or(broker.config.node_id, |b| b.node_id);
    DescribeClusterResponse::default()
        .with_cluster_id(str_bytes(&broker.config.cluster_id))
        .with_controller_id(BrokerId(controller))
        .with_endpoint_type(1)
        .with_brokers(
            live.iter()
                .map(|b| {
                    DescribeClusterBroker::default()
                        .with_broker_id(BrokerId(b.node_id))
                        .with_host(str_bytes(&b.host))
                        .with_port(b.port)
                        .with_rack(b.rack.as_deref().map(str_bytes))
                })
                .collect(),
        )
}
