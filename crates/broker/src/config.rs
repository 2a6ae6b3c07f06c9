//! Broker settings (plain data; the CLI layers defaults, file, env and flags).

use std::collections::BTreeMap;

use std::sync::Arc;

use tributary_meta::{topic_config, Clock};

use crate::authz::AuthorizerConfig;
use crate::groups::GroupConfig;
use crate::sasl::SaslConfig;
use crate::txn::TxnConfig;

/// Settings of one broker.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    /// This broker's id in Metadata responses.
    pub node_id: i32,
    /// Host clients should connect to.
    pub advertised_host: String,
    /// Port clients should connect to.
    pub advertised_port: i32,
    /// Cluster id reported to clients.
    pub cluster_id: String,
    /// Create unknown topics on Metadata/Produce.
    pub auto_create_topics: bool,
    /// Partitions of auto-created topics and CreateTopics with -1.
    pub num_partitions: i32,
    /// Largest record batch accepted (topic config `max.message.bytes` overrides).
    pub max_message_bytes: i64,
    /// Largest request frame accepted; bigger frames close the connection.
    pub max_request_bytes: usize,
    /// Bytes of request frames held at once across all connections (read,
    /// not yet answered). While the total is at or over it, a connection
    /// waits before reading its next frame of 64 KiB or more, which pushes
    /// back on the client through TCP. This bounds the memory produce data
    /// takes between socket and segment: a producer with a deep queue cannot
    /// make the broker buffer it all. See [`crate::memory`].
    pub max_inflight_request_bytes: usize,
    /// Slowest a request frame may arrive, in bytes per second, measured
    /// over 5 s windows (or the rest of the frame, if less); a slower frame
    /// closes its connection. Frames are counted against the request-memory
    /// budget as their bytes arrive, so this is about not keeping buffers
    /// and connections for clients that trickle.
    pub request_min_bytes_per_sec: usize,
    /// Most record bytes in one Fetch answer, whatever the request's
    /// `max_bytes` says (Kafka `fetch.max.bytes`, 55 MiB); the first batch
    /// is still returned whole if it is bigger.
    pub fetch_max_bytes: usize,
    /// Incremental fetch sessions kept (Kafka
    /// `max.incremental.fetch.session.cache.slots`, 1000); 0 turns them
    /// off.
    pub fetch_session_slots: usize,
    /// Bytes of encoded answers one connection may have waiting to be
    /// written before the broker stops reading its requests (answers also
    /// count against `max_inflight_request_bytes`, and while that is full a
    /// connection with any answer waiting is not read). A client that does
    /// not read its answers thus holds at most this plus one answer.
    pub max_queued_answer_bytes: usize,
    /// Concurrent connections accepted (Kafka `max.connections`); past it a
    /// new connection is accepted and closed at once.
    pub max_connections: usize,
    /// Concurrent connections accepted from one client address (Kafka
    /// `max.connections.per.ip`). Kafka's default is unlimited; ours keeps
    /// one address from taking every connection. Behind a load balancer that
    /// hides client addresses (SNAT), raise it to `max_connections`.
    pub max_connections_per_ip: usize,
    /// A connection with no request for this long, and no answer pending,
    /// is closed (Kafka `connections.max.idle.ms`, 10 min).
    pub connections_max_idle: std::time::Duration,
    /// Requests of one connection awaiting their answer (answers stay in
    /// order). Produce answers wait for a flush, so clients that pipeline
    /// (librdkafka allows up to 1M in flight) need a deep queue: with 32 and
    /// a 250 ms flush, a connection could not exceed 128 produces/s.
    pub max_inflight_per_connection: usize,
    /// Rack / availability zone of this broker, reported in Metadata.
    pub rack: Option<String>,
    /// Consumer-group coordinator settings.
    pub groups: GroupConfig,
    /// Transaction coordinator settings.
    pub transactions: TxnConfig,
    /// SASL mechanisms and the failed-authentication delay.
    pub sasl: SaslConfig,
    /// ACL checks (`--authorizer acl`, super users).
    pub authorizer: AuthorizerConfig,
    /// How often a parked fetch re-reads the partition offsets, to notice
    /// commits made by other brokers sharing the metadata store. `None` (one
    /// broker) relies on this broker's own commit notifications only.
    pub fetch_poll_interval: Option<std::time::Duration>,
    /// Wall-clock time (LogAppendTime stamps, offset-commit times).
    pub clock: Arc<dyn Clock>,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        Self {
            node_id: 0,
            advertised_host: "127.0.0.1".into(),
            advertised_port: 9092,
            cluster_id: "tributary".into(),
            auto_create_topics: true,
            num_partitions: 1,
            max_message_bytes: 1_048_588,
            max_request_bytes: 100 * 1024 * 1024,
            max_inflight_request_bytes: 64 * 1024 * 1024,
            request_min_bytes_per_sec: 16 * 1024,
            fetch_max_bytes: 55 * 1024 * 1024,
            fetch_session_slots: 1000,
            max_queued_answer_bytes: 1024 * 1024,
            max_connections: 10_000,
            max_connections_per_ip: 1_000,
            connections_max_idle: std::time::Duration::from_secs(600),
            max_inflight_per_connection: 1024,
            rack: None,
            groups: GroupConfig::default(),
            transactions: TxnConfig::default(),
            sasl: SaslConfig::default(),
            authorizer: AuthorizerConfig::default(),
            fetch_poll_interval: None,
            clock: tributary_meta::clock::system(),
        }
    }
}

impl BrokerConfig {
    /// `fetch_poll_interval` when brokers share the metadata store.
    pub const SHARED_METADATA_FETCH_POLL: std::time::Duration =
        std::time::Duration::from_millis(200);

    /// Topic configs with their defaults, as DescribeConfigs reports them
    /// ([`topic_config::KEYS`]).
    pub fn topic_defaults(&self) -> BTreeMap<&'static str, String> {
        topic_config::defaults(self.max_message_bytes)
    }

    /// Broker configs clients read through DescribeConfigs: [`BROKER_KEYS`]
    /// and the topic defaults under their broker names.
    pub fn broker_configs(&self) -> BTreeMap<&'static str, String> {
        let mut m = topic_config::broker_defaults(self.max_message_bytes);
        m.extend(BROKER_KEYS.iter().map(|(name, value)| (*name, value(self))));
        m
    }
}

/// How a broker config's value is read from the settings.
type ReadSetting = fn(&BrokerConfig) -> String;

/// The broker settings with a Kafka name, and how each is read.
const BROKER_KEYS: &[(&str, ReadSetting)] = &[
    ("auto.create.topics.enable", |c| {
        c.auto_create_topics.to_string()
    }),
    ("broker.id", |c| c.node_id.to_string()),
    ("connections.max.idle.ms", |c| {
        c.connections_max_idle.as_millis().to_string()
    }),
    ("default.replication.factor", |_| "1".to_owned()),
    ("fetch.max.bytes", |c| c.fetch_max_bytes.to_string()),
    ("group.consumer.assignors", |_| "uniform,range".to_owned()),
    ("group.consumer.heartbeat.interval.ms", |c| {
        c.groups.consumer.heartbeat_interval.as_millis().to_string()
    }),
    ("group.consumer.max.size", |c| {
        c.groups.consumer.max_size.to_string()
    }),
    ("group.consumer.session.timeout.ms", |c| {
        c.groups.consumer.session_timeout.as_millis().to_string()
    }),
    ("group.coordinator.rebalance.protocols", |_| {
        "classic,consumer".to_owned()
    }),
    ("group.initial.rebalance.delay.ms", |c| {
        c.groups.initial_rebalance_delay_ms.to_string()
    }),
    ("group.max.session.timeout.ms", |c| {
        c.groups.max_session_timeout_ms.to_string()
    }),
    ("group.min.session.timeout.ms", |c| {
        c.groups.min_session_timeout_ms.to_string()
    }),
    ("max.connections", |c| c.max_connections.to_string()),
    ("max.connections.per.ip", |c| {
        c.max_connections_per_ip.to_string()
    }),
    ("max.incremental.fetch.session.cache.slots", |c| {
        c.fetch_session_slots.to_string()
    }),
    ("num.partitions", |c| c.num_partitions.to_string()),
    ("offsets.topic.replication.factor", |_| "1".to_owned()),
    ("queued.max.request.bytes", |c| {
        c.max_inflight_request_bytes.to_string()
    }),
    ("socket.request.max.bytes", |c| {
        c.max_request_bytes.to_string()
    }),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_configs_follow_the_settings() {
        let mut c = BrokerConfig {
            num_partitions: 6,
            max_message_bytes: 2_000_000,
            ..BrokerConfig::default()
        };
        c.groups.initial_rebalance_delay_ms = 3000;
        let m = c.broker_configs();
        assert_eq!(m["num.partitions"], "6");
        assert_eq!(m["message.max.bytes"], "2000000");
        assert_eq!(m["group.initial.rebalance.delay.ms"], "3000");
        assert_eq!(
            m["log.retention.ms"],
            topic_config::DEFAULT_RETENTION_MS.to_string()
        );
        let names: Vec<_> = BROKER_KEYS.iter().map(|(n, _)| *n).collect();
        let mut sorted = names.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(names, sorted, "BROKER_KEYS sorted, each once");
    }
}
