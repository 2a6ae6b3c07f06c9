//! `serve` settings, layered: built-in defaults → `--config FILE` (TOML) →
//! `TRIBUTARY_*` environment variables → command-line flags. Every key is
//! documented here and in the README with its default.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use serde::Deserialize;
use tributary_broker::authz::AuthorizerConfig;
use tributary_broker::listener::{parse_listeners, ListenerConfig, SecurityProtocol};
use tributary_broker::sasl::oauthbearer::OAuthConfig;
use tributary_broker::sasl::{Mechanism as SaslMechanism, SaslConfig};
use tributary_broker::tls::{ClientAuth, Pem, TlsFiles};
use tributary_broker::BrokerConfig;
use tributary_meta::parse_metadata_url;
use tributary_storage::writer::min_safe_grace;
use tributary_storage::{MaintenanceConfig, ObjectStoreUrl, ReadCache, WriterConfig};

/// Where the data lives: the flags `serve` and `export` share.
#[derive(Args, Deserialize, Debug, Default, Clone)]
#[serde(deny_unknown_fields)]
pub struct StoreArgs {
    /// TOML file with any of serve's settings (snake_case, e.g. `data_dir`).
    #[arg(long, env = "TRIBUTARY_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Directory for the default object store and metadata [default: ./data].
    #[arg(long, env = "TRIBUTARY_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Object store URL: file:///dir, memory://, s3://bucket/prefix [default: file://<data-dir>/objects].
    #[arg(long, env = "TRIBUTARY_OBJECT_STORE")]
    pub object_store: Option<String>,
    /// Metadata store URL: sqlite://path.db, sqlite::memory:, postgres://user:pass@host:port/db[?schema=name] [default: sqlite://<data-dir>/metadata.db].
    #[arg(long, env = "TRIBUTARY_METADATA")]
    pub metadata: Option<String>,
}

impl StoreArgs {
    /// The keys of these settings in the `--config` file.
    const FILE_KEYS: [&'static str; 3] = ["data_dir", "object_store", "metadata"];

    /// `self` over `file`.
    fn over(self, file: StoreArgs) -> StoreArgs {
        StoreArgs {
            config: self.config,
            data_dir: self.data_dir.or(file.data_dir),
            object_store: self.object_store.or(file.object_store),
            metadata: self.metadata.or(file.metadata),
        }
    }
}

/// Declares `serve`'s settings once. Each field becomes a flag (`--name`),
/// an environment variable (its `env`) and a key of the `--config` file
/// (`name`), and takes part in the layering ([`ServeArgs::over`]); its
/// default is the component's own (`BrokerConfig::default()`, ...), applied
/// in [`Settings::layer`]. A new setting: a field here, a line there.
macro_rules! serve_settings {
    ($( $(#[$attr:meta])* $name:ident: $ty:ty, )*) => {
        /// Flags of `tributary serve`. Each also reads `TRIBUTARY_<NAME>`
        /// and the `--config` file.
        #[derive(Args, Deserialize, Debug, Default)]
        #[serde(deny_unknown_fields)]
        pub struct ServeArgs {
            #[command(flatten)]
            #[serde(skip)]
            pub stores: StoreArgs,
            $( $(#[$attr])* pub $name: Option<$ty>, )*
        }

        impl ServeArgs {
            /// `self` (flags and environment) over `file`.
            pub fn over(self, file: ServeArgs) -> ServeArgs {
                ServeArgs {
                    stores: self.stores.over(file.stores),
                    $( $name: self.$name.or(file.$name), )*
                }
            }
        }
    };
}

serve_settings! {
    /// Address to accept Kafka clients on [default: 127.0.0.1:9092].
    #[arg(long, env = "TRIBUTARY_LISTEN")]
    listen: String,
    /// HOST:PORT clients are told to connect to [default: the listen address].
    #[arg(long, env = "TRIBUTARY_ADVERTISED_LISTENER")]
    advertised_listener: String,
    /// Listeners, as Kafka writes them, instead of --listen:
    /// `PLAINTEXT://127.0.0.1:9092,SSL://0.0.0.0:9093` (names: PLAINTEXT,
    /// SSL, SASL_PLAINTEXT, SASL_SSL; each at most once) [default: PLAINTEXT://<listen>].
    #[arg(long, env = "TRIBUTARY_LISTENERS")]
    listeners: String,
    /// Addresses clients are told, per listener:
    /// `SSL://broker-1.example.com:9093` [default: each listener's bind address].
    #[arg(long, env = "TRIBUTARY_ADVERTISED_LISTENERS")]
    advertised_listeners: String,
    /// PEM certificate chain of the SSL and SASL_SSL listeners (re-read when
    /// it changes), or the PEM text itself (e.g. from a secret store).
    #[arg(long, env = "TRIBUTARY_TLS_CERT", allow_hyphen_values = true)]
    tls_cert: PathBuf,
    /// PEM private key of --tls-cert (re-read when it changes), or the PEM
    /// text itself.
    #[arg(long, env = "TRIBUTARY_TLS_KEY", allow_hyphen_values = true)]
    tls_key: PathBuf,
    /// PEM CA certificates client certificates must chain to (mTLS); the
    /// principal is `User:<certificate subject>` [default: none].
    #[arg(long, env = "TRIBUTARY_TLS_CLIENT_CA", allow_hyphen_values = true)]
    tls_client_ca: PathBuf,
    /// Client certificates: none, requested or required [default: required
    /// with --tls-client-ca, else none].
    #[arg(long, env = "TRIBUTARY_TLS_CLIENT_AUTH")]
    tls_client_auth: String,
    /// SASL mechanisms of the SASL_PLAINTEXT and SASL_SSL listeners:
    /// SCRAM-SHA-512, SCRAM-SHA-256, PLAIN, OAUTHBEARER [default: SCRAM-SHA-512,SCRAM-SHA-256].
    #[arg(long, env = "TRIBUTARY_SASL_MECHANISMS")]
    sasl_mechanisms: String,
    /// OAUTHBEARER: the identity provider's keys, a JWKS file (re-read when
    /// it changes) or an `https://` URL (fetched every 5 min) (Kafka
    /// `sasl.oauthbearer.jwks.endpoint.url`) [default: none].
    #[arg(long, env = "TRIBUTARY_SASL_OAUTHBEARER_JWKS")]
    sasl_oauthbearer_jwks: String,
    /// OAUTHBEARER: the `iss` tokens must carry [default: not checked].
    #[arg(long, env = "TRIBUTARY_SASL_OAUTHBEARER_ISSUER")]
    sasl_oauthbearer_issuer: String,
    /// OAUTHBEARER: accepted `aud` values, comma-separated [default: not checked].
    #[arg(long, env = "TRIBUTARY_SASL_OAUTHBEARER_AUDIENCE")]
    sasl_oauthbearer_audience: String,
    /// OAUTHBEARER: the claim naming the principal [default: sub].
    #[arg(long, env = "TRIBUTARY_SASL_OAUTHBEARER_SUB_CLAIM")]
    sasl_oauthbearer_sub_claim: String,
    /// OAUTHBEARER: allowance for clocks that disagree, on exp and nbf [default: 30].
    #[arg(long, env = "TRIBUTARY_SASL_OAUTHBEARER_CLOCK_SKEW_SECONDS")]
    sasl_oauthbearer_clock_skew_seconds: u64,
    /// Longest a SASL login lasts before the client must re-authenticate on
    /// its connection (KIP-368); an OAUTHBEARER login also ends with its
    /// token; 0: no limit (Kafka `connections.max.reauth.ms`) [default: 0].
    #[arg(long, env = "TRIBUTARY_CONNECTIONS_MAX_REAUTH_MS")]
    connections_max_reauth_ms: u64,
    /// Wait before answering a failed authentication, then close the
    /// connection (Kafka `connection.failed.authentication.delay.ms`) [default: 100].
    #[arg(long, env = "TRIBUTARY_FAILED_AUTHENTICATION_DELAY_MS")]
    failed_authentication_delay_ms: u64,
    /// Check ACLs on every request: `acl`, or `none` to allow everything
    /// (Kafka `authorizer.class.name`) [default: none].
    #[arg(long, env = "TRIBUTARY_AUTHORIZER")]
    authorizer: String,
    /// Principals allowed everything with --authorizer acl, comma-separated
    /// (`User:admin,User:CN=ops`; Kafka `super.users`, which separates them
    /// with `;`, also accepted) [default: none].
    #[arg(long, env = "TRIBUTARY_SUPER_USERS")]
    super_users: String,
    /// With --authorizer acl, allow access to resources no ACL names
    /// (Kafka `allow.everyone.if.no.acl.found`) [default: false].
    #[arg(long, env = "TRIBUTARY_ALLOW_EVERYONE_IF_NO_ACL_FOUND")]
    allow_everyone_if_no_acl_found: bool,
    /// Create topics on first use [default: true].
    #[arg(long, env = "TRIBUTARY_AUTO_CREATE_TOPICS")]
    auto_create_topics: bool,
    /// Partitions of auto-created topics [default: 1].
    #[arg(long, env = "TRIBUTARY_NUM_PARTITIONS")]
    num_partitions: i32,
    /// Seal a segment after its oldest batch waited this long [default: 50 for file://, 250 for s3://].
    #[arg(long, env = "TRIBUTARY_FLUSH_INTERVAL_MS")]
    flush_interval_ms: u64,
    /// Seal a segment once it is this big [default: 8388608].
    #[arg(long, env = "TRIBUTARY_MAX_SEGMENT_BYTES")]
    max_segment_bytes: usize,
    /// Most segments sealed per second before they are full; 0 for no
    /// ceiling [default: 50 for s3://, none for file:// and memory://].
    #[arg(long, env = "TRIBUTARY_MAX_PUTS_PER_SECOND")]
    max_puts_per_second: f64,
    /// Largest record batch accepted [default: 1048588].
    #[arg(long, env = "TRIBUTARY_MAX_MESSAGE_BYTES")]
    max_message_bytes: i64,
    /// Largest request frame accepted [default: 104857600].
    #[arg(long, env = "TRIBUTARY_MAX_REQUEST_BYTES")]
    max_request_bytes: usize,
    /// Request bytes held at once across connections before the broker
    /// stops reading new requests [default: 67108864].
    #[arg(long, env = "TRIBUTARY_MAX_INFLIGHT_REQUEST_BYTES")]
    max_inflight_request_bytes: usize,
    /// Slowest a request frame may arrive, in bytes per second over 5 s
    /// windows, before its connection is closed [default: 16384].
    #[arg(long, env = "TRIBUTARY_REQUEST_MIN_BYTES_PER_SEC")]
    request_min_bytes_per_sec: usize,
    /// Most record bytes in one Fetch answer (Kafka `fetch.max.bytes`)
    /// [default: 57671680].
    #[arg(long, env = "TRIBUTARY_FETCH_MAX_BYTES")]
    fetch_max_bytes: usize,
    /// Incremental fetch sessions (KIP-227) kept; 0 turns them off (Kafka
    /// `max.incremental.fetch.session.cache.slots`) [default: 1000].
    #[arg(long, env = "TRIBUTARY_MAX_INCREMENTAL_FETCH_SESSION_CACHE_SLOTS")]
    max_incremental_fetch_session_cache_slots: usize,
    /// A KIP-848 consumer-group member silent this long is removed (Kafka
    /// `group.consumer.session.timeout.ms`) [default: 45000].
    #[arg(long, env = "TRIBUTARY_GROUP_CONSUMER_SESSION_TIMEOUT_MS")]
    group_consumer_session_timeout_ms: u64,
    /// How often stable KIP-848 consumer-group members heartbeat (Kafka
    /// `group.consumer.heartbeat.interval.ms`) [default: 5000].
    #[arg(long, env = "TRIBUTARY_GROUP_CONSUMER_HEARTBEAT_INTERVAL_MS")]
    group_consumer_heartbeat_interval_ms: u64,
    /// Bytes of answers one connection may have waiting to be written
    /// before its requests stop being read [default: 1048576].
    #[arg(long, env = "TRIBUTARY_MAX_QUEUED_ANSWER_BYTES")]
    max_queued_answer_bytes: usize,
    /// Concurrent client connections; more are closed at once (Kafka
    /// `max.connections`) [default: 10000].
    #[arg(long, env = "TRIBUTARY_MAX_CONNECTIONS")]
    max_connections: usize,
    /// Concurrent connections from one client address (Kafka
    /// `max.connections.per.ip`) [default: 1000].
    #[arg(long, env = "TRIBUTARY_MAX_CONNECTIONS_PER_IP")]
    max_connections_per_ip: usize,
    /// Close a connection idle this long (Kafka `connections.max.idle.ms`)
    /// [default: 600000].
    #[arg(long, env = "TRIBUTARY_CONNECTIONS_MAX_IDLE_MS")]
    connections_max_idle_ms: u64,
    /// Read cache size in bytes [default: 268435456].
    #[arg(long, env = "TRIBUTARY_CACHE_BYTES")]
    cache_bytes: u64,
    /// Broker id reported to clients, or `auto`: the lowest id no live
    /// broker holds (for autoscaled brokers) [default: 0].
    #[arg(long, env = "TRIBUTARY_NODE_ID", value_parser = parse_node_id)]
    node_id: NodeId,
    /// Time between retention/compaction/janitor passes [default: 30000].
    #[arg(long, env = "TRIBUTARY_MAINTENANCE_INTERVAL_MS")]
    maintenance_interval_ms: u64,
    /// How long unreferenced segments and orphan uploads are kept before deletion [default: 600000].
    #[arg(long, env = "TRIBUTARY_SEGMENT_GRACE_MS")]
    segment_grace_ms: u64,
    /// A sealed segment not uploaded and committed within this time is
    /// abandoned and its produces fail with a retriable error; the metadata
    /// store refuses later commits of it. Must be at most half of
    /// segment_grace_ms [default: 120000].
    #[arg(long, env = "TRIBUTARY_SEGMENT_COMMIT_DEADLINE_MS")]
    segment_commit_deadline_ms: u64,
    /// Forget an idempotent producer's state once it has not written for
    /// this long (Kafka's producer.id.expiration.ms) [default: 86400000].
    #[arg(long, env = "TRIBUTARY_PRODUCER_ID_EXPIRATION_MS")]
    producer_id_expiration_ms: u64,
    /// Largest transaction.timeout.ms a transactional producer may ask for
    /// (Kafka's transaction.max.timeout.ms) [default: 900000].
    #[arg(long, env = "TRIBUTARY_TRANSACTION_MAX_TIMEOUT_MS")]
    transaction_max_timeout_ms: u64,
    /// How often the transaction coordinator aborts timed-out transactions
    /// and finishes interrupted ones (Kafka's
    /// transaction.abort.timed.out.transaction.cleanup.interval.ms) [default: 10000].
    #[arg(long, env = "TRIBUTARY_TRANSACTION_ABORT_INTERVAL_MS")]
    transaction_abort_interval_ms: u64,
    /// Forget a transactional id unused for this long with no transaction
    /// open (Kafka's transactional.id.expiration.ms) [default: 604800000].
    #[arg(long, env = "TRIBUTARY_TRANSACTIONAL_ID_EXPIRATION_MS")]
    transactional_id_expiration_ms: u64,
    /// Drop a consumer group's committed offsets once it has had no member
    /// and no commit for this long (Kafka's offsets.retention.minutes) [default: 10080].
    #[arg(long, env = "TRIBUTARY_OFFSETS_RETENTION_MINUTES")]
    offsets_retention_minutes: u64,
    /// Merge small segments into per-partition objects [default: true].
    #[arg(long, env = "TRIBUTARY_COMPACTION")]
    compaction: bool,
    /// Only compact data older than this [default: 60000].
    #[arg(long, env = "TRIBUTARY_COMPACTION_MIN_AGE_MS")]
    compaction_min_age_ms: u64,
    /// Rack / availability zone of this broker, reported to clients [default: none].
    #[arg(long, env = "TRIBUTARY_RACK")]
    rack: String,
    /// Serve Prometheus metrics on HOST:PORT at /metrics [default: off].
    #[arg(long, env = "TRIBUTARY_METRICS_LISTEN")]
    metrics_listen: String,
    /// A metric series not updated for this long leaves /metrics (deleted
    /// topics, gone groups); 0 keeps every series [default: 600000].
    #[arg(long, env = "TRIBUTARY_METRICS_IDLE_TIMEOUT_MS")]
    metrics_idle_timeout_ms: u64,
}

/// Default `--metrics-idle-timeout-ms`: a series not updated for 10 min
/// leaves `/metrics`.
const DEFAULT_METRICS_IDLE_TIMEOUT_MS: u64 = 600_000;

/// Resolved settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Where clients connect, and how (at least one).
    pub listeners: Vec<ListenerConfig>,
    /// The certificate of the TLS listeners.
    pub tls: Option<TlsFiles>,
    pub data_dir: PathBuf,
    pub object_store: String,
    pub metadata: String,
    pub cache_bytes: u64,
    pub cache_block_bytes: u64,
    pub writer: WriterConfig,
    pub broker: BrokerConfig,
    pub maintenance: MaintenanceConfig,
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Series idle this long leave /metrics (`None`: never).
    pub metrics_idle_timeout: Option<Duration>,
    /// Pick the lowest free node id at start-up (`--node-id auto`).
    pub node_id_auto: bool,
}

impl Settings {
    pub fn resolve(args: ServeArgs) -> anyhow::Result<Self> {
        let file = match &args.stores.config {
            Some(path) => read_file(path)?,
            None => ServeArgs::default(),
        };
        Self::layer(args.over(file))
    }

    /// Settings from command-line flags (as after `tributary serve`), the
    /// environment and any `--config` file: for programs and tests that
    /// start a [`crate::node::Node`] themselves.
    pub fn from_flags<'a>(flags: impl IntoIterator<Item = &'a str>) -> anyhow::Result<Self> {
        #[derive(clap::Parser)]
        struct Flags {
            #[command(flatten)]
            serve: ServeArgs,
        }
        let parsed = <Flags as clap::Parser>::try_parse_from(
            std::iter::once("tributary-serve").chain(flags),
        )?;
        Self::resolve(parsed.serve)
    }

    /// The layered settings `a` over the components' defaults.
    pub fn layer(a: ServeArgs) -> anyhow::Result<Self> {
        let listeners = listeners(&a)?;
        let tls = tls_files(&a, &listeners)?;
        let authorizer = authorizer(&a)?;
        let sasl_mechanisms = match &a.sasl_mechanisms {
            Some(list) => Some(
                SaslMechanism::parse_list(list)
                    .map_err(|e| anyhow::anyhow!("bad --sasl-mechanisms: {e}"))?,
            ),
            None => None,
        };
        let oauth = oauth(
            &a,
            sasl_mechanisms
                .as_deref()
                .unwrap_or(&SaslConfig::default().mechanisms),
        )?;
        let data_dir = a.stores.data_dir.unwrap_or_else(|| "data".into());
        let abs_data = if data_dir.is_absolute() {
            data_dir.clone()
        } else {
            std::env::current_dir()
                .context("cannot read the current directory")?
                .join(&data_dir)
        };
        let object_store = a
            .stores
            .object_store
            .unwrap_or_else(|| format!("file://{}", abs_data.join("objects").display()));
        let metadata = a
            .stores
            .metadata
            .unwrap_or_else(|| format!("sqlite://{}", abs_data.join("metadata.db").display()));

        let mut writer = WriterConfig::default();
        // Each PUT of a priced store is billed: the store picks the default.
        if let Ok(url) = ObjectStoreUrl::parse(&object_store) {
            writer.flush_interval = url.default_flush_interval();
            writer.max_puts_per_second = url.default_max_puts_per_second();
        }
        if let Some(rate) = a.max_puts_per_second {
            if !rate.is_finite() || rate < 0.0 {
                bail!("max_puts_per_second must be 0 (no ceiling) or positive, got {rate}");
            }
            writer.max_puts_per_second = (rate > 0.0).then_some(rate);
        }
        set(
            &mut writer.flush_interval,
            a.flush_interval_ms.map(Duration::from_millis),
        );
        set(&mut writer.max_segment_bytes, a.max_segment_bytes);
        if let Some(ms) = a.segment_commit_deadline_ms {
            if ms == 0 {
                bail!("segment_commit_deadline_ms must be positive");
            }
            writer.commit_deadline = Duration::from_millis(ms);
        }

        let mut broker = BrokerConfig::default();
        // Brokers sharing the metadata store: parked fetches also poll for
        // the others' commits.
        if parse_metadata_url(&metadata).is_ok_and(|m| m.is_shared()) {
            broker.fetch_poll_interval = Some(BrokerConfig::SHARED_METADATA_FETCH_POLL);
        }
        set(&mut broker.auto_create_topics, a.auto_create_topics);
        if let Some(v) = a.num_partitions {
            if v <= 0 {
                bail!("num_partitions must be positive, got {v}");
            }
            broker.num_partitions = v;
        }
        set(&mut broker.max_message_bytes, a.max_message_bytes);
        set(&mut broker.max_request_bytes, a.max_request_bytes);
        set(
            &mut broker.max_inflight_request_bytes,
            a.max_inflight_request_bytes,
        );
        set(
            &mut broker.request_min_bytes_per_sec,
            a.request_min_bytes_per_sec,
        );
        set(&mut broker.fetch_max_bytes, a.fetch_max_bytes);
        set(
            &mut broker.fetch_session_slots,
            a.max_incremental_fetch_session_cache_slots,
        );
        set(
            &mut broker.groups.consumer.session_timeout,
            a.group_consumer_session_timeout_ms
                .map(Duration::from_millis),
        );
        set(
            &mut broker.groups.consumer.heartbeat_interval,
            a.group_consumer_heartbeat_interval_ms
                .map(Duration::from_millis),
        );
        if broker.groups.consumer.heartbeat_interval.is_zero()
            || broker.groups.consumer.heartbeat_interval >= broker.groups.consumer.session_timeout
        {
            bail!(
                "group_consumer_heartbeat_interval_ms must be positive and below group_consumer_session_timeout_ms"
            );
        }
        set(
            &mut broker.max_queued_answer_bytes,
            a.max_queued_answer_bytes,
        );
        set(&mut broker.max_connections, a.max_connections);
        set(&mut broker.max_connections_per_ip, a.max_connections_per_ip);
        set(
            &mut broker.connections_max_idle,
            a.connections_max_idle_ms.map(Duration::from_millis),
        );
        let mut node_id_auto = false;
        match a.node_id {
            Some(NodeId::Fixed(v)) => broker.node_id = v,
            Some(NodeId::Auto) => node_id_auto = true,
            None => {}
        }
        set(&mut broker.sasl.mechanisms, sasl_mechanisms);
        set(
            &mut broker.sasl.failed_delay,
            a.failed_authentication_delay_ms.map(Duration::from_millis),
        );
        broker.sasl.oauth = oauth;
        broker.sasl.max_reauth = a
            .connections_max_reauth_ms
            .filter(|&ms| ms > 0)
            .map(Duration::from_millis);
        broker.rack = a.rack;
        broker.authorizer = authorizer;

        let ms = |v: Option<u64>| v.map(Duration::from_millis);
        let txn = &mut broker.transactions;
        set(&mut txn.max_timeout, ms(a.transaction_max_timeout_ms));
        set(&mut txn.abort_interval, ms(a.transaction_abort_interval_ms));
        set(&mut txn.id_expiration, ms(a.transactional_id_expiration_ms));
        if txn.abort_interval.is_zero() || txn.max_timeout.is_zero() {
            bail!("transaction_abort_interval_ms and transaction_max_timeout_ms must be above 0");
        }
        let mut maintenance = MaintenanceConfig::default();
        set(&mut maintenance.interval, ms(a.maintenance_interval_ms));
        set(&mut maintenance.grace, ms(a.segment_grace_ms));
        set(&mut maintenance.compaction, a.compaction);
        set(
            &mut maintenance.producer_id_expiration,
            ms(a.producer_id_expiration_ms),
        );
        set(
            &mut maintenance.offsets_retention,
            a.offsets_retention_minutes
                .map(|m| Duration::from_secs(m.saturating_mul(60))),
        );
        set(&mut maintenance.min_age, ms(a.compaction_min_age_ms));

        // The janitor deletes uploads no commit recorded once they are
        // older than the grace; the writer and the metadata store stop
        // committing a segment at the deadline. Below twice the deadline,
        // clocks that disagree could let a commit index a deleted object.
        let min_grace = min_safe_grace(writer.commit_deadline);
        if maintenance.grace < min_grace {
            bail!(
                "segment_grace_ms ({}) must be at least twice segment_commit_deadline_ms ({}): \
                 lower the deadline or raise the grace",
                maintenance.grace.as_millis(),
                writer.commit_deadline.as_millis()
            );
        }
        let metrics_listen = match a.metrics_listen {
            Some(l) => Some(
                l.parse()
                    .with_context(|| format!("bad --metrics-listen {l}: expected IP:PORT"))?,
            ),
            None => None,
        };
        let metrics_idle_timeout = match a
            .metrics_idle_timeout_ms
            .unwrap_or(DEFAULT_METRICS_IDLE_TIMEOUT_MS)
        {
            0 => None,
            ms => Some(Duration::from_millis(ms)),
        };
        Ok(Self {
            metrics_listen,
            metrics_idle_timeout,
            node_id_auto,
            maintenance,
            listeners,
            tls,
            data_dir,
            object_store,
            metadata,
            cache_bytes: a.cache_bytes.unwrap_or(ReadCache::DEFAULT_BYTES),
            cache_block_bytes: ReadCache::DEFAULT_BLOCK_BYTES,
            writer,
            broker,
        })
    }
}

/// Replace `field` with the layered value, if one was given.
fn set<T>(field: &mut T, value: Option<T>) {
    if let Some(v) = value {
        *field = v;
    }
}

/// `--node-id`: a number, or `auto`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "NodeIdValue")]
pub enum NodeId {
    Fixed(i32),
    Auto,
}

fn parse_node_id(s: &str) -> Result<NodeId, String> {
    if s == "auto" {
        return Ok(NodeId::Auto);
    }
    s.parse::<i32>()
        .ok()
        .filter(|id| *id >= 0)
        .map(NodeId::Fixed)
        .ok_or_else(|| format!("node id must be a number >= 0 or `auto`, not {s:?}"))
}

/// `node_id` in the config file: a number or `"auto"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum NodeIdValue {
    Id(i32),
    Word(String),
}

impl TryFrom<NodeIdValue> for NodeId {
    type Error = String;

    fn try_from(v: NodeIdValue) -> Result<Self, String> {
        match v {
            NodeIdValue::Id(id) => parse_node_id(&id.to_string()),
            NodeIdValue::Word(w) => parse_node_id(&w),
        }
    }
}

fn read_file(path: &Path) -> anyhow::Result<ServeArgs> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read config file {}", path.display()))?;
    parse_file(&text).with_context(|| format!("bad config file {}", path.display()))
}

/// The contents of a `--config` file: the keys of [`ServeArgs`] and of
/// [`StoreArgs`] (unknown keys are refused).
pub fn parse_file(text: &str) -> anyhow::Result<ServeArgs> {
    let mut table: toml::Table = toml::from_str(text)?;
    let mut stores = toml::Table::new();
    for key in StoreArgs::FILE_KEYS {
        if let Some(v) = table.remove(key) {
            stores.insert(key.to_owned(), v);
        }
    }
    let mut args: ServeArgs = table.try_into()?;
    args.stores = stores.try_into()?;
    Ok(args)
}

/// The listeners: `--listeners`/`--advertised-listeners`, or one PLAINTEXT
/// listener from `--listen`/`--advertised-listener` (not both forms).
fn listeners(a: &ServeArgs) -> anyhow::Result<Vec<ListenerConfig>> {
    let listeners = match &a.listeners {
        Some(spec) => {
            if a.listen.is_some() {
                bail!(
                    "give --listeners or --listen (TRIBUTARY_LISTENERS or TRIBUTARY_LISTEN), not both; \
                     the container image sets TRIBUTARY_LISTENERS=PLAINTEXT://0.0.0.0:9092"
                );
            }
            let mut listeners = parse_listeners(spec, a.advertised_listeners.as_deref())
                .map_err(anyhow::Error::msg)?;
            // The one-listener shorthand still advertises a lone listener.
            if let Some(l) = &a.advertised_listener {
                if a.advertised_listeners.is_some() || listeners.len() != 1 {
                    bail!("--advertised-listener names the address of a lone listener; with several, use --advertised-listeners");
                }
                listeners[0].advertised = Some(
                    parse_host_port(l).with_context(|| format!("bad --advertised-listener {l}"))?,
                );
            }
            listeners
        }
        None => {
            if a.advertised_listeners.is_some() {
                bail!("--advertised-listeners needs --listeners");
            }
            let advertised = match &a.advertised_listener {
                Some(l) => Some(
                    parse_host_port(l).with_context(|| format!("bad --advertised-listener {l}"))?,
                ),
                None => None,
            };
            vec![ListenerConfig {
                protocol: SecurityProtocol::Plaintext,
                bind: a.listen.clone().unwrap_or_else(|| "127.0.0.1:9092".into()),
                advertised,
            }]
        }
    };
    Ok(listeners)
}

/// `--authorizer`, `--super-users`, `--allow-everyone-if-no-acl-found`.
fn authorizer(a: &ServeArgs) -> anyhow::Result<AuthorizerConfig> {
    let enabled = match a.authorizer.as_deref().map(str::trim) {
        None | Some("none") | Some("") => false,
        Some("acl") => true,
        Some(other) => bail!("bad --authorizer {other:?}: expected acl or none"),
    };
    let super_users =
        principal_list(a.super_users.as_deref().unwrap_or_default()).map_err(|bad| {
            anyhow::anyhow!("bad --super-users entry {bad:?}: expected TYPE:NAME, e.g. User:admin")
        })?;
    if !enabled && (!super_users.is_empty() || a.allow_everyone_if_no_acl_found.is_some()) {
        bail!("--super-users and --allow-everyone-if-no-acl-found need --authorizer acl");
    }
    Ok(AuthorizerConfig {
        enabled,
        super_users,
        allow_if_no_acl: a.allow_everyone_if_no_acl_found.unwrap_or(false),
    })
}

/// The `--sasl-oauthbearer-*` settings; they go with OAUTHBEARER in
/// `--sasl-mechanisms`.
fn oauth(a: &ServeArgs, mechanisms: &[SaslMechanism]) -> anyhow::Result<Option<OAuthConfig>> {
    let offered = mechanisms.contains(&SaslMechanism::OAuthBearer);
    let Some(jwks) = a.sasl_oauthbearer_jwks.as_deref().filter(|j| !j.is_empty()) else {
        if offered {
            bail!("OAUTHBEARER needs --sasl-oauthbearer-jwks (a JWKS file or https:// URL)");
        }
        let others = a.sasl_oauthbearer_issuer.is_some()
            || a.sasl_oauthbearer_audience.is_some()
            || a.sasl_oauthbearer_sub_claim.is_some()
            || a.sasl_oauthbearer_clock_skew_seconds.is_some();
        if others {
            bail!("the --sasl-oauthbearer-* settings need --sasl-oauthbearer-jwks");
        }
        return Ok(None);
    };
    if !offered {
        bail!("--sasl-oauthbearer-jwks is set but OAUTHBEARER is not in --sasl-mechanisms");
    }
    let mut config = OAuthConfig::new(jwks);
    config.issuer = a.sasl_oauthbearer_issuer.clone().filter(|i| !i.is_empty());
    config.audience = a
        .sasl_oauthbearer_audience
        .as_deref()
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    set(&mut config.sub_claim, a.sasl_oauthbearer_sub_claim.clone());
    set(
        &mut config.clock_skew,
        a.sasl_oauthbearer_clock_skew_seconds
            .map(Duration::from_secs),
    );
    Ok(Some(config))
}

/// A list of principals: separated by `;` (Kafka's `super.users`) or, when
/// there is none, by `,`. Certificate principals hold commas
/// (`User:CN=ops,O=Example`): a comma piece that is not `TYPE:NAME` belongs
/// to the principal before it. `Err`: an entry that is not `TYPE:NAME`.
fn principal_list(list: &str) -> Result<Vec<String>, String> {
    let mut out: Vec<String> = Vec::new();
    if list.contains(';') {
        out.extend(list.split(';').map(str::trim).map(str::to_owned));
    } else {
        for piece in list.split(',').map(str::trim) {
            match out.last_mut() {
                Some(last) if !piece.contains(':') => {
                    last.push(',');
                    last.push_str(piece);
                }
                _ => out.push(piece.to_owned()),
            }
        }
    }
    out.retain(|p| !p.is_empty());
    match out.iter().find(|p| !p.contains(':')) {
        Some(bad) => Err(bad.clone()),
        None => Ok(out),
    }
}

/// The TLS files, required when a listener speaks TLS.
fn tls_files(a: &ServeArgs, listeners: &[ListenerConfig]) -> anyhow::Result<Option<TlsFiles>> {
    let needed = listeners.iter().find(|l| l.protocol.tls());
    let client_auth = match &a.tls_client_auth {
        Some(v) => ClientAuth::parse(v).with_context(|| {
            format!("bad --tls-client-auth {v:?}: expected none, requested or required")
        })?,
        None if a.tls_client_ca.is_some() => ClientAuth::Required,
        None => ClientAuth::None,
    };
    match (&a.tls_cert, &a.tls_key) {
        (Some(cert), Some(key)) => Ok(Some(TlsFiles {
            cert: Pem::from_setting(cert.clone()),
            key: Pem::from_setting(key.clone()),
            client_ca: a.tls_client_ca.clone().map(Pem::from_setting),
            client_auth,
        })),
        (None, None) => match needed {
            Some(l) => bail!("the {} listener needs --tls-cert and --tls-key", l.name()),
            None => Ok(None),
        },
        _ => bail!("--tls-cert and --tls-key go together"),
    }
}

fn parse_host_port(s: &str) -> anyhow::Result<(String, i32)> {
    let (host, port) = s.rsplit_once(':').context("expected HOST:PORT")?;
    let port: u16 = port.parse().context("port must be a number 0-65535")?;
    if host.is_empty() {
        bail!("host is empty");
    }
    Ok((host.to_string(), i32::from(port)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layers_flags_over_file_over_defaults() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("t.toml");
        std::fs::write(&file, "num_partitions = 3\nlisten = \"127.0.0.1:1\"\n").expect("write");
        let s = Settings::resolve(ServeArgs {
            stores: StoreArgs {
                config: Some(file),
                ..Default::default()
            },
            listen: Some("127.0.0.1:2".into()),
            ..Default::default()
        })
        .expect("resolve");
        assert_eq!(s.listeners.len(), 1);
        assert_eq!(s.listeners[0].bind, "127.0.0.1:2");
        assert_eq!(s.listeners[0].protocol, SecurityProtocol::Plaintext);
        assert_eq!(s.broker.num_partitions, 3);
        assert!(s.object_store.starts_with("file://"));
        assert!(s.metadata.starts_with("sqlite://"));
    }

    #[test]
    fn listeners_and_tls_settings() {
        let l = |listeners: Option<&str>, listen: Option<&str>, cert: bool| {
            Settings::layer(ServeArgs {
                listeners: listeners.map(Into::into),
                listen: listen.map(Into::into),
                tls_cert: cert.then(|| PathBuf::from("c.pem")),
                tls_key: cert.then(|| PathBuf::from("k.pem")),
                ..Default::default()
            })
        };
        let s = l(Some("PLAINTEXT://:9092,SSL://127.0.0.1:9093"), None, true).expect("valid");
        assert_eq!(s.listeners.len(), 2);
        assert_eq!(
            s.tls.as_ref().map(|t| t.client_auth),
            Some(ClientAuth::None)
        );
        let err = |r: anyhow::Result<Settings>| r.expect_err("refused").to_string();
        assert!(err(l(Some("SSL://:9093"), None, false)).contains("needs --tls-cert"));
        assert!(err(l(Some("SSL://:9093"), Some("127.0.0.1:1"), true)).contains("not both"));
        // The image sets TRIBUTARY_LISTENERS; the shorthand advertised
        // address still applies to a lone listener.
        let lone = Settings::layer(ServeArgs {
            listeners: Some("PLAINTEXT://0.0.0.0:9092".into()),
            advertised_listener: Some("broker-1.example.com:9092".into()),
            ..Default::default()
        })
        .expect("lone listener");
        assert_eq!(
            lone.listeners[0].advertised,
            Some(("broker-1.example.com".into(), 9092))
        );
        assert!(l(Some("SASL_SSL://:9094"), None, true).is_ok());
        assert!(err(l(Some("SASL_SSL://:9094"), None, false)).contains("needs --tls-cert"));
        assert!(l(Some("SASL_PLAINTEXT://:9094"), None, false).is_ok());
        let s = Settings::layer(ServeArgs {
            tls_cert: Some("c.pem".into()),
            tls_key: Some("k.pem".into()),
            tls_client_ca: Some("ca.pem".into()),
            ..Default::default()
        })
        .expect("valid");
        assert_eq!(
            s.tls.map(|t| t.client_auth),
            Some(ClientAuth::Required),
            "a client CA means client certificates are required unless said otherwise"
        );
    }

    #[test]
    fn authorizer_settings() {
        let a = |authorizer: Option<&str>, supers: Option<&str>, open: Option<bool>| {
            Settings::layer(ServeArgs {
                authorizer: authorizer.map(Into::into),
                super_users: supers.map(Into::into),
                allow_everyone_if_no_acl_found: open,
                ..Default::default()
            })
            .map(|s| s.broker.authorizer)
        };
        assert!(!a(None, None, None).expect("default").enabled);
        let on = a(Some("acl"), Some("User:admin; User:CN=ops,O=x"), None).expect("acl");
        assert!(on.enabled && !on.allow_if_no_acl);
        assert_eq!(on.super_users, ["User:admin", "User:CN=ops,O=x"]);
        let commas = a(Some("acl"), Some("User:a,User:CN=ops,O=x,User:b"), None).expect("commas");
        assert_eq!(commas.super_users, ["User:a", "User:CN=ops,O=x", "User:b"]);
        assert!(
            a(Some("acl"), None, Some(true))
                .expect("open")
                .allow_if_no_acl
        );
        let err = |r: anyhow::Result<AuthorizerConfig>| r.expect_err("refused").to_string();
        assert!(err(a(Some("ranger"), None, None)).contains("expected acl or none"));
        assert!(err(a(None, Some("User:admin"), None)).contains("need --authorizer acl"));
        assert!(err(a(Some("acl"), Some("admin"), None)).contains("TYPE:NAME"));
    }

    #[test]
    fn oauthbearer_settings() {
        let o = |mechanisms: &str, jwks: Option<&str>, audience: Option<&str>| {
            Settings::layer(ServeArgs {
                sasl_mechanisms: Some(mechanisms.into()),
                sasl_oauthbearer_jwks: jwks.map(Into::into),
                sasl_oauthbearer_audience: audience.map(Into::into),
                ..Default::default()
            })
            .map(|s| s.broker.sasl.oauth)
        };
        let on = o("OAUTHBEARER", Some("jwks.json"), Some("a, b"))
            .expect("valid")
            .expect("configured");
        assert_eq!(on.audience, ["a", "b"]);
        assert_eq!(on.sub_claim, "sub");
        assert!(o("SCRAM-SHA-512", None, None).expect("valid").is_none());
        let err = |r: anyhow::Result<Option<OAuthConfig>>| r.expect_err("refused").to_string();
        assert!(err(o("OAUTHBEARER", None, None)).contains("needs --sasl-oauthbearer-jwks"));
        assert!(err(o("PLAIN", Some("j.json"), None)).contains("not in --sasl-mechanisms"));
        assert!(err(o("PLAIN", None, Some("a"))).contains("need --sasl-oauthbearer-jwks"));
    }

    #[test]
    fn refuses_a_grace_the_commit_deadline_does_not_fit() {
        let resolve = |grace: u64, deadline: Option<u64>| {
            Settings::resolve(ServeArgs {
                segment_grace_ms: Some(grace),
                segment_commit_deadline_ms: deadline,
                ..Default::default()
            })
        };
        let err = resolve(1000, None).expect_err("1 s grace with the 120 s default deadline");
        assert!(err.to_string().contains("segment_grace_ms (1000)"), "{err}");
        assert!(resolve(1000, Some(501)).is_err());
        let s = resolve(1000, Some(500)).expect("half the grace");
        assert_eq!(s.writer.commit_deadline, Duration::from_millis(500));
        assert!(resolve(600_000, None).is_ok(), "the defaults fit");
        assert!(resolve(600_000, Some(0)).is_err());
    }

    /// The README's configuration table is the reference users read: every
    /// flag of `serve` has its row, with its environment variable.
    #[test]
    fn readme_lists_every_setting() {
        let readme = include_str!("../../../README.md");
        let cmd = <ServeArgs as clap::Args>::augment_args(clap::Command::new("serve"));
        for arg in cmd.get_arguments() {
            let Some(long) = arg.get_long() else { continue };
            if arg.is_hide_set() {
                continue;
            }
            let row = readme
                .lines()
                .find(|l| l.starts_with(&format!("| `--{long}` |")))
                .unwrap_or_else(|| panic!("README configuration table has no row for --{long}"));
            let env = arg.get_env().expect("every setting has an env var");
            assert!(
                row.contains(&format!("`{}`", env.to_string_lossy())),
                "README row of --{long} does not name {env:?}: {row}"
            );
        }
    }

    #[test]
    fn file_keys_are_the_settings() {
        let a = parse_file("data_dir = \"/d\"\nnode_id = \"auto\"\nnum_partitions = 2\n")
            .expect("known keys");
        assert_eq!(a.stores.data_dir, Some(PathBuf::from("/d")));
        assert_eq!(a.node_id, Some(NodeId::Auto));
        assert_eq!(a.num_partitions, Some(2));
        assert_eq!(
            parse_file("node_id = 3\n").expect("id").node_id,
            Some(NodeId::Fixed(3))
        );
        assert!(parse_file("node_id = -1\n").is_err());
        assert!(
            parse_file("inject_faults = \"put_fail=1\"\n").is_err(),
            "test-only"
        );
        assert!(parse_file("config = \"other.toml\"\n").is_err());
    }

    #[test]
    fn defaults_come_from_the_components() {
        let s = Settings::resolve(ServeArgs::default()).expect("defaults");
        assert_eq!(
            s.writer.max_segment_bytes,
            WriterConfig::default().max_segment_bytes
        );
        assert_eq!(
            s.writer.flush_interval,
            Duration::from_millis(50),
            "file:// default"
        );
        assert_eq!(
            s.broker.max_message_bytes,
            BrokerConfig::default().max_message_bytes
        );
        assert_eq!(s.broker.fetch_poll_interval, None, "one SQLite broker");
        assert_eq!(s.cache_bytes, ReadCache::DEFAULT_BYTES);
        let s3 = Settings::resolve(ServeArgs {
            stores: StoreArgs {
                object_store: Some("s3://bucket/prefix".into()),
                metadata: Some("postgres://u@127.0.0.1/db".into()),
                ..Default::default()
            },
            ..Default::default()
        })
        .expect("s3 and postgres");
        assert_eq!(
            s3.writer.flush_interval,
            Duration::from_millis(250),
            "PUTs are billed"
        );
        assert_eq!(
            s3.broker.fetch_poll_interval,
            Some(BrokerConfig::SHARED_METADATA_FETCH_POLL)
        );
    }

    #[test]
    fn rejects_unknown_file_keys_and_bad_listener() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("t.toml");
        std::fs::write(&file, "bogus = 1\n").expect("write");
        assert!(Settings::resolve(ServeArgs {
            stores: StoreArgs {
                config: Some(file),
                ..Default::default()
            },
            ..Default::default()
        })
        .is_err());
        assert!(parse_host_port("nohost").is_err());
        assert_eq!(parse_host_port("h:9").expect("ok"), ("h".into(), 9));
    }
}
