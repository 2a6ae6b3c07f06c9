//! `serve` settings, layered: built-in defaults → `--config FILE` (TOML) →
//! `TRIBUTARY_*` environment variables → command-line flags. Every key is
//! documented here and in the README with its default.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use serde::Deserialize;
use tributary_broker::BrokerConfig;
use tributary_storage::wrappers::FaultConfig;
use tributary_storage::writer::min_safe_grace;
use tributary_storage::{parse_fault_spec, MaintenanceConfig, WriterConfig};

/// Where the data lives: the flags `serve` and `export` share.
#[derive(Args, Debug, Default, Clone)]
pub struct StoreArgs {
    /// TOML file with any of serve's settings (snake_case, e.g. `data_dir`).
    #[arg(long, env = "TRIBUTARY_CONFIG")]
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

/// Flags of `tributary serve`. Each also reads `TRIBUTARY_<NAME>`.
#[derive(Args, Debug, Default)]
pub struct ServeArgs {
    #[command(flatten)]
    pub stores: StoreArgs,
    /// Address to accept Kafka clients on [default: 127.0.0.1:9092].
    #[arg(long, env = "TRIBUTARY_LISTEN")]
    pub listen: Option<String>,
    /// HOST:PORT clients are told to connect to [default: the listen address].
    #[arg(long, env = "TRIBUTARY_ADVERTISED_LISTENER")]
    pub advertised_listener: Option<String>,
    /// Create topics on first use [default: true].
    #[arg(long, env = "TRIBUTARY_AUTO_CREATE_TOPICS")]
    pub auto_create_topics: Option<bool>,
    /// Partitions of auto-created topics [default: 1].
    #[arg(long, env = "TRIBUTARY_NUM_PARTITIONS")]
    pub num_partitions: Option<i32>,
    /// Seal a segment after its oldest batch waited this long [default: 50 for file://, 250 for s3://].
    #[arg(long, env = "TRIBUTARY_FLUSH_INTERVAL_MS")]
    pub flush_interval_ms: Option<u64>,
    /// Seal a segment once it is this big [default: 8388608].
    #[arg(long, env = "TRIBUTARY_MAX_SEGMENT_BYTES")]
    pub max_segment_bytes: Option<usize>,
    /// Largest record batch accepted [default: 1048588].
    #[arg(long, env = "TRIBUTARY_MAX_MESSAGE_BYTES")]
    pub max_message_bytes: Option<i64>,
    /// Largest request frame accepted [default: 104857600].
    #[arg(long, env = "TRIBUTARY_MAX_REQUEST_BYTES")]
    pub max_request_bytes: Option<usize>,
    /// Request bytes held at once across connections before the broker
    /// stops reading new requests [default: 67108864].
    #[arg(long, env = "TRIBUTARY_MAX_INFLIGHT_REQUEST_BYTES")]
    pub max_inflight_request_bytes: Option<usize>,
    /// Slowest a request frame may arrive, in bytes per second over 5 s
    /// windows, before its connection is closed [default: 16384].
    #[arg(long, env = "TRIBUTARY_REQUEST_MIN_BYTES_PER_SEC")]
    pub request_min_bytes_per_sec: Option<usize>,
    /// Most record bytes in one Fetch answer (Kafka `fetch.max.bytes`)
    /// [default: 57671680].
    #[arg(long, env = "TRIBUTARY_FETCH_MAX_BYTES")]
    pub fetch_max_bytes: Option<usize>,
    /// Bytes of answers one connection may have waiting to be written
    /// before its requests stop being read [default: 1048576].
    #[arg(long, env = "TRIBUTARY_MAX_QUEUED_ANSWER_BYTES")]
    pub max_queued_answer_bytes: Option<usize>,
    /// Concurrent client connections; more are closed at once (Kafka
    /// `max.connections`) [default: 10000].
    #[arg(long, env = "TRIBUTARY_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// Concurrent connections from one client address (Kafka
    /// `max.connections.per.ip`) [default: 1000].
    #[arg(long, env = "TRIBUTARY_MAX_CONNECTIONS_PER_IP")]
    pub max_connections_per_ip: Option<usize>,
    /// Close a connection idle this long (Kafka `connections.max.idle.ms`)
    /// [default: 600000].
    #[arg(long, env = "TRIBUTARY_CONNECTIONS_MAX_IDLE_MS")]
    pub connections_max_idle_ms: Option<u64>,
    /// Read cache size in bytes [default: 268435456].
    #[arg(long, env = "TRIBUTARY_CACHE_BYTES")]
    pub cache_bytes: Option<u64>,
    /// Broker id reported to clients, or `auto`: the lowest id no live
    /// broker holds (for autoscaled brokers) [default: 0].
    #[arg(long, env = "TRIBUTARY_NODE_ID", value_parser = parse_node_id)]
    pub node_id: Option<NodeId>,
    /// Time between retention/compaction/janitor passes [default: 30000].
    #[arg(long, env = "TRIBUTARY_MAINTENANCE_INTERVAL_MS")]
    pub maintenance_interval_ms: Option<u64>,
    /// How long unreferenced segments and orphan uploads are kept before deletion [default: 600000].
    #[arg(long, env = "TRIBUTARY_SEGMENT_GRACE_MS")]
    pub segment_grace_ms: Option<u64>,
    /// A sealed segment not uploaded and committed within this time is
    /// abandoned and its produces fail with a retriable error; the metadata
    /// store refuses later commits of it. Must be at most half of
    /// segment_grace_ms [default: 120000].
    #[arg(long, env = "TRIBUTARY_SEGMENT_COMMIT_DEADLINE_MS")]
    pub segment_commit_deadline_ms: Option<u64>,
    /// Forget an idempotent producer's state once it has not written for
    /// this long (Kafka's producer.id.expiration.ms) [default: 86400000].
    #[arg(long, env = "TRIBUTARY_PRODUCER_ID_EXPIRATION_MS")]
    pub producer_id_expiration_ms: Option<u64>,
    /// Drop a consumer group's committed offsets once it has had no member
    /// and no commit for this long (Kafka's offsets.retention.minutes) [default: 10080].
    #[arg(long, env = "TRIBUTARY_OFFSETS_RETENTION_MINUTES")]
    pub offsets_retention_minutes: Option<u64>,
    /// Merge small segments into per-partition objects [default: true].
    #[arg(long, env = "TRIBUTARY_COMPACTION")]
    pub compaction: Option<bool>,
    /// Only compact data older than this [default: 60000].
    #[arg(long, env = "TRIBUTARY_COMPACTION_MIN_AGE_MS")]
    pub compaction_min_age_ms: Option<u64>,
    /// Rack / availability zone of this broker, reported to clients [default: none].
    #[arg(long, env = "TRIBUTARY_RACK")]
    pub rack: Option<String>,
    /// Serve Prometheus metrics on HOST:PORT at /metrics [default: off].
    #[arg(long, env = "TRIBUTARY_METRICS_LISTEN")]
    pub metrics_listen: Option<String>,
    /// A metric series not updated for this long leaves /metrics (deleted
    /// topics, gone groups); 0 keeps every series [default: 600000].
    #[arg(long, env = "TRIBUTARY_METRICS_IDLE_TIMEOUT_MS")]
    pub metrics_idle_timeout_ms: Option<u64>,
    /// TESTING ONLY: inject object-store faults, e.g.
    /// `put_fail=0.1,get_fail=0.1,put_lost=0.05,latency_ms=5-50,seed=7`.
    #[arg(long, env = "TRIBUTARY_INJECT_FAULTS", hide = true)]
    pub inject_faults: Option<String>,
}

/// The same keys, from a TOML file.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    listen: Option<String>,
    advertised_listener: Option<String>,
    data_dir: Option<PathBuf>,
    object_store: Option<String>,
    metadata: Option<String>,
    auto_create_topics: Option<bool>,
    num_partitions: Option<i32>,
    flush_interval_ms: Option<u64>,
    max_segment_bytes: Option<usize>,
    max_message_bytes: Option<i64>,
    max_request_bytes: Option<usize>,
    max_inflight_request_bytes: Option<usize>,
    request_min_bytes_per_sec: Option<usize>,
    max_queued_answer_bytes: Option<usize>,
    fetch_max_bytes: Option<usize>,
    max_connections: Option<usize>,
    max_connections_per_ip: Option<usize>,
    connections_max_idle_ms: Option<u64>,
    cache_bytes: Option<u64>,
    node_id: Option<NodeIdValue>,
    maintenance_interval_ms: Option<u64>,
    segment_grace_ms: Option<u64>,
    segment_commit_deadline_ms: Option<u64>,
    producer_id_expiration_ms: Option<u64>,
    offsets_retention_minutes: Option<u64>,
    compaction: Option<bool>,
    compaction_min_age_ms: Option<u64>,
    metrics_listen: Option<String>,
    metrics_idle_timeout_ms: Option<u64>,
    rack: Option<String>,
}

/// Resolved settings.
#[derive(Debug, Clone)]
pub struct Settings {
    pub listen: String,
    pub advertised: Option<(String, i32)>,
    pub data_dir: PathBuf,
    pub object_store: String,
    pub metadata: String,
    pub cache_bytes: u64,
    pub cache_block_bytes: u64,
    pub writer: WriterConfig,
    pub broker: BrokerConfig,
    pub maintenance: MaintenanceConfig,
    pub faults: Option<FaultConfig>,
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
            None => FileConfig::default(),
        };
        Self::layer(args, file)
    }

    /// `args` over `file` over the defaults.
    pub fn layer(args: ServeArgs, file: FileConfig) -> anyhow::Result<Self> {
        let listen = args
            .listen
            .or(file.listen)
            .unwrap_or_else(|| "127.0.0.1:9092".into());
        let data_dir = args
            .stores
            .data_dir
            .or(file.data_dir)
            .unwrap_or_else(|| "data".into());
        let abs_data = if data_dir.is_absolute() {
            data_dir.clone()
        } else {
            std::env::current_dir()
                .context("cannot read the current directory")?
                .join(&data_dir)
        };
        let object_store = args
            .stores
            .object_store
            .or(file.object_store)
            .unwrap_or_else(|| format!("file://{}", abs_data.join("objects").display()));
        let metadata = args
            .stores
            .metadata
            .or(file.metadata)
            .unwrap_or_else(|| format!("sqlite://{}", abs_data.join("metadata.db").display()));
        let advertised = match args.advertised_listener.or(file.advertised_listener) {
            Some(a) => Some(
                parse_host_port(&a).with_context(|| format!("bad --advertised-listener {a}"))?,
            ),
            None => None,
        };
        let default_flush = if object_store.starts_with("s3://") {
            250
        } else {
            50
        };
        let flush_ms = args
            .flush_interval_ms
            .or(file.flush_interval_ms)
            .unwrap_or(default_flush);
        let writer = WriterConfig {
            max_segment_bytes: args
                .max_segment_bytes
                .or(file.max_segment_bytes)
                .unwrap_or(8 << 20),
            flush_interval: Duration::from_millis(flush_ms),
            ..WriterConfig::default()
        };
        let mut broker = BrokerConfig::default();
        // Several brokers may share a PostgreSQL store: parked fetches poll
        // for their commits.
        if metadata.starts_with("postgres://") || metadata.starts_with("postgresql://") {
            broker.fetch_poll_interval = Some(Duration::from_millis(200));
        }
        if let Some((host, port)) = &advertised {
            broker.advertised_host = host.clone();
            broker.advertised_port = *port;
        }
        if let Some(v) = args.auto_create_topics.or(file.auto_create_topics) {
            broker.auto_create_topics = v;
        }
        if let Some(v) = args.num_partitions.or(file.num_partitions) {
            if v <= 0 {
                bail!("num_partitions must be positive, got {v}");
            }
            broker.num_partitions = v;
        }
        if let Some(v) = args.max_message_bytes.or(file.max_message_bytes) {
            broker.max_message_bytes = v;
        }
        if let Some(v) = args.max_request_bytes.or(file.max_request_bytes) {
            broker.max_request_bytes = v;
        }
        if let Some(v) = args
            .max_inflight_request_bytes
            .or(file.max_inflight_request_bytes)
        {
            broker.max_inflight_request_bytes = v;
        }
        if let Some(v) = args
            .request_min_bytes_per_sec
            .or(file.request_min_bytes_per_sec)
        {
            broker.request_min_bytes_per_sec = v;
        }
        if let Some(v) = args.fetch_max_bytes.or(file.fetch_max_bytes) {
            broker.fetch_max_bytes = v;
        }
        if let Some(v) = args
            .max_queued_answer_bytes
            .or(file.max_queued_answer_bytes)
        {
            broker.max_queued_answer_bytes = v;
        }
        if let Some(v) = args.max_connections.or(file.max_connections) {
            broker.max_connections = v;
        }
        if let Some(v) = args.max_connections_per_ip.or(file.max_connections_per_ip) {
            broker.max_connections_per_ip = v;
        }
        if let Some(v) = args
            .connections_max_idle_ms
            .or(file.connections_max_idle_ms)
        {
            broker.connections_max_idle = Duration::from_millis(v);
        }
        let file_node_id = match file.node_id {
            Some(NodeIdValue::Id(id)) => Some(NodeId::Fixed(id)),
            Some(NodeIdValue::Word(w)) => Some(parse_node_id(&w).map_err(anyhow::Error::msg)?),
            None => None,
        };
        let mut node_id_auto = false;
        match args.node_id.or(file_node_id) {
            Some(NodeId::Fixed(v)) => broker.node_id = v,
            Some(NodeId::Auto) => node_id_auto = true,
            None => {}
        }
        broker.rack = args.rack.or(file.rack);
        let defaults = MaintenanceConfig::default();
        let maintenance = MaintenanceConfig {
            interval: args
                .maintenance_interval_ms
                .or(file.maintenance_interval_ms)
                .map_or(defaults.interval, Duration::from_millis),
            grace: args
                .segment_grace_ms
                .or(file.segment_grace_ms)
                .map_or(defaults.grace, Duration::from_millis),
            compaction: args
                .compaction
                .or(file.compaction)
                .unwrap_or(defaults.compaction),
            producer_id_expiration: args
                .producer_id_expiration_ms
                .or(file.producer_id_expiration_ms)
                .map_or(defaults.producer_id_expiration, Duration::from_millis),
            offsets_retention: args
                .offsets_retention_minutes
                .or(file.offsets_retention_minutes)
                .map_or(defaults.offsets_retention, |m| {
                    Duration::from_secs(m.saturating_mul(60))
                }),
            min_age: args
                .compaction_min_age_ms
                .or(file.compaction_min_age_ms)
                .map_or(defaults.min_age, Duration::from_millis),
            ..defaults
        };
        let mut writer = writer;
        if let Some(ms) = args
            .segment_commit_deadline_ms
            .or(file.segment_commit_deadline_ms)
        {
            if ms == 0 {
                bail!("segment_commit_deadline_ms must be positive");
            }
            writer.commit_deadline = Duration::from_millis(ms);
        }
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
        let faults = match &args.inject_faults {
            Some(spec) => {
                let spec = parse_fault_spec(spec)
                    .map_err(|e| anyhow::anyhow!("bad --inject-faults: {e}"))?;
                writer.inject_commit_lost = spec.commit_lost;
                Some(spec.store)
            }
            None => None,
        };
        let metrics_listen = match args.metrics_listen.or(file.metrics_listen) {
            Some(a) => Some(
                a.parse()
                    .with_context(|| format!("bad --metrics-listen {a}: expected IP:PORT"))?,
            ),
            None => None,
        };
        let metrics_idle_timeout = match args
            .metrics_idle_timeout_ms
            .or(file.metrics_idle_timeout_ms)
            .unwrap_or(600_000)
        {
            0 => None,
            ms => Some(Duration::from_millis(ms)),
        };
        Ok(Self {
            metrics_listen,
            metrics_idle_timeout,
            node_id_auto,
            faults,
            maintenance,
            listen,
            advertised,
            data_dir,
            object_store,
            metadata,
            cache_bytes: args.cache_bytes.or(file.cache_bytes).unwrap_or(256 << 20),
            cache_block_bytes: 1 << 20,
            writer,
            broker,
        })
    }
}

/// `--node-id`: a number, or `auto`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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

fn read_file(path: &Path) -> anyhow::Result<FileConfig> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read config file {}", path.display()))?;
    parse_file(&text).with_context(|| format!("bad config file {}", path.display()))
}

/// The contents of a `--config` file.
pub fn parse_file(text: &str) -> anyhow::Result<FileConfig> {
    Ok(toml::from_str(text)?)
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
        assert_eq!(s.listen, "127.0.0.1:2");
        assert_eq!(s.broker.num_partitions, 3);
        assert!(s.object_store.starts_with("file://"));
        assert!(s.metadata.starts_with("sqlite://"));
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
