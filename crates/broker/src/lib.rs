//! The Tributary broker: speaks the Kafka protocol over TCP and serves every
//! partition from the shared object store and metadata store. It owns no
//! state of its own beyond caches and the in-memory group coordinator.
//!
//! [`server::run`] accepts connections; [`connection`] frames requests and
//! answers them in order, knowing no API by name; [`router`] is the one
//! table that maps each API key and version to its handler in [`apis`] (or
//! the group coordinator), names its metrics, and answers ApiVersions.

pub mod apis;
pub mod authz;
pub mod cluster;
pub mod config;
pub mod connection;
pub mod context;
mod error;
pub mod fetch_sessions;
pub mod groups;
pub mod listener;
pub mod memory;
pub mod router;
pub mod sasl;
pub mod server;
pub mod tls;
pub mod topics;
pub mod txn;

use std::sync::Arc;

use tributary_meta::{LogStore, SecurityStore, Stores, TopicStore};
use tributary_storage::{Fetcher, SegmentWriter, Watermarks};

pub use config::BrokerConfig;

/// Everything a request handler needs. Shared by all connections.
#[derive(Debug)]
pub struct Broker {
    pub config: BrokerConfig,
    /// Topics and their configs (admin APIs, Metadata).
    pub topic_store: Arc<dyn TopicStore>,
    /// Log boundaries and producer ids (ListOffsets, DeleteRecords,
    /// InitProducerId).
    pub log: Arc<dyn LogStore>,
    /// Users' credentials (SASL).
    pub security: Arc<dyn SecurityStore>,
    /// The ACLs and the decision every request goes through
    /// ([`authz::gate`]).
    pub authz: Arc<authz::Authorizer>,
    /// OAUTHBEARER's key set (empty unless offered).
    pub oauth: Arc<sasl::oauthbearer::Keys>,
    /// Recent authentication failures per client address.
    pub auth_failures: sasl::Failures,
    pub writer: SegmentWriter,
    pub fetcher: Fetcher,
    pub watermarks: Watermarks,
    pub groups: Arc<groups::GroupCoordinator>,
    /// The transaction coordinator of the ids this broker is assigned.
    pub txns: Arc<txn::TxnCoordinator>,
    pub topics: topics::TopicCache,
    pub cluster: Arc<cluster::Cluster>,
    /// [`BrokerConfig::max_inflight_request_bytes`].
    pub request_memory: Arc<memory::RequestMemory>,
    /// Cancelled when the broker starts draining: parked fetches answer
    /// with what they have.
    pub draining: tokio_util::sync::CancellationToken,
    /// Incremental fetch sessions (KIP-227).
    pub fetch_sessions: fetch_sessions::FetchSessions,
}

impl Broker {
    /// Assemble a broker from its parts.
    pub fn new(
        config: BrokerConfig,
        meta: &Stores,
        writer: SegmentWriter,
        fetcher: Fetcher,
        watermarks: Watermarks,
        cluster: Arc<cluster::Cluster>,
    ) -> Arc<Self> {
        let groups = groups::GroupCoordinator::new(
            meta.groups.clone(),
            meta.topics.clone(),
            config.groups.clone(),
            config.clock.clone(),
        );
        let owner = cluster.clone();
        groups.set_owner_check(
            cluster.me().node_id,
            Arc::new(move |group: &str| owner.is_coordinator(group)),
        );
        // Groups that moved to another broker are dropped at once, so
        // members parked here in a join are sent to the new coordinator.
        let weak = Arc::downgrade(&groups);
        cluster.on_change(Box::new(move || {
            if let Some(groups) = weak.upgrade() {
                groups.release_moved_groups();
            }
        }));
        groups.set_transactions(meta.transactions.clone());
        let txns = txn::TxnCoordinator::new(
            meta.transactions.clone(),
            meta.log.clone(),
            meta.registry.clone(),
            writer.clone(),
            cluster.clone(),
            config.transactions.clone(),
            config.clock.clone(),
        );
        let draining = tokio_util::sync::CancellationToken::new();
        if tokio::runtime::Handle::try_current().is_ok() {
            txns.spawn_reaper(draining.clone());
        }
        let topics = topics::TopicCache::new(meta.topics.clone());
        let oauth = sasl::oauthbearer::Keys::new(config.sasl.oauth.clone());
        let authz = authz::Authorizer::new(config.authorizer.clone(), meta.security.clone());
        Arc::new(Self {
            request_memory: memory::RequestMemory::new(config.max_inflight_request_bytes),
            fetch_sessions: fetch_sessions::FetchSessions::new(config.fetch_session_slots),
            draining,
            config,
            topic_store: meta.topics.clone(),
            log: meta.log.clone(),
            security: meta.security.clone(),
            authz,
            oauth,
            auth_failures: sasl::Failures::default(),
            writer,
            fetcher,
            watermarks,
            groups,
            txns,
            topics,
            cluster,
        })
    }
}
