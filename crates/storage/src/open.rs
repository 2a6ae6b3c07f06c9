//! Build the object store from a URL.
//!
//! `file:///abs/dir` (created if missing), `memory://`, and
//! `s3://bucket/prefix` (AWS settings from the standard `AWS_*` environment;
//! `endpoint`, `region`, `allow_http` and `path_style` may be given as query
//! parameters for MinIO and LocalStack, e.g.
//! `s3://bucket/prefix?endpoint=http://127.0.0.1:9000&path_style=true`).

use std::sync::Arc;

use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::prefix::PrefixStore;
use object_store::ObjectStore;

use std::time::Duration;

use crate::wrappers::{
    FaultConfig, FaultyStore, MetricsHandle, MetricsStore, RetryPolicy, RetryingStore,
};
use crate::StorageError;

/// A parsed object-store location.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ObjectStoreUrl {
    File(std::path::PathBuf),
    Memory,
    S3 {
        bucket: String,
        prefix: String,
        endpoint: Option<String>,
        region: Option<String>,
        allow_http: bool,
        path_style: bool,
    },
}

impl ObjectStoreUrl {
    /// How long a batch may wait before its segment is sealed, by default,
    /// on this store: every seal is one PUT, which S3 bills, so 250 ms there
    /// (what peers use) and 50 ms on stores where a PUT costs nothing.
    pub fn default_flush_interval(&self) -> std::time::Duration {
        match self {
            Self::S3 { .. } => std::time::Duration::from_millis(250),
            Self::File(_) | Self::Memory => std::time::Duration::from_millis(50),
        }
    }

    /// The default ceiling on seals of segments that are not full, per
    /// second: group commit seals whenever the previous segment is
    /// committed, which on a priced store must not turn a trickle of
    /// appends into a storm of PUTs. 50/s on S3 (at most about 130 million
    /// PUTs, some $650, a month per broker at $0.005 per 1,000; a seal
    /// waits at most 20 ms for its turn); none where a PUT costs nothing.
    pub fn default_max_puts_per_second(&self) -> Option<f64> {
        match self {
            Self::S3 { .. } => Some(50.0),
            Self::File(_) | Self::Memory => None,
        }
    }

    /// Parse `file://`, `memory://` or `s3://` URLs.
    pub fn parse(raw: &str) -> Result<Self, StorageError> {
        let invalid = |reason: &str| StorageError::InvalidUrl {
            url: raw.to_string(),
            reason: reason.to_string(),
        };
        if raw == "memory://" || raw == "memory:///" {
            return Ok(Self::Memory);
        }
        if let Some(path) = raw.strip_prefix("file://") {
            if path.is_empty() {
                return Err(invalid("file:// needs a path"));
            }
            return Ok(Self::File(path.into()));
        }
        let url = url::Url::parse(raw).map_err(|e| invalid(&e.to_string()))?;
        if url.scheme() != "s3" {
            return Err(invalid("scheme must be file, memory or s3"));
        }
        let bucket = url
            .host_str()
            .filter(|b| !b.is_empty())
            .ok_or_else(|| invalid("s3 url needs a bucket"))?
            .to_string();
        let prefix = url.path().trim_matches('/').to_string();
        let mut endpoint = None;
        let mut region = None;
        let mut allow_http = false;
        let mut path_style = false;
        for (k, v) in url.query_pairs() {
            match k.as_ref() {
                "endpoint" => {
                    allow_http |= v.starts_with("http://");
                    endpoint = Some(v.to_string());
                }
                "region" => region = Some(v.to_string()),
                "allow_http" => allow_http = v == "true",
                "path_style" => path_style = v == "true",
                other => return Err(invalid(&format!("unknown option {other}"))),
            }
        }
        Ok(Self::S3 {
            bucket,
            prefix,
            endpoint,
            region,
            allow_http,
            path_style,
        })
    }
}

/// The S3 connection settings a URL resolves to, with the standard AWS
/// environment filling what the URL leaves out. The data path
/// (`object_store`) and the start-up check (the AWS SDK) both use this, so
/// they always talk to the same endpoint the same way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Settings {
    pub bucket: String,
    pub prefix: String,
    /// Custom endpoint (MinIO, LocalStack, ...); `None` is AWS itself.
    pub endpoint: Option<String>,
    pub region: String,
    pub allow_http: bool,
    /// Bucket in the path (`http://host/bucket/key`) rather than the host name.
    pub path_style: bool,
}

/// Region when neither the URL nor the environment names one (the AWS
/// SDK's and `object_store`'s default too).
pub const DEFAULT_S3_REGION: &str = "us-east-1";

impl S3Settings {
    /// Resolve an `s3://` URL against the process environment.
    pub fn from_url(raw: &str) -> Result<Self, StorageError> {
        Self::resolve(raw, |k| std::env::var(k).ok().filter(|v| !v.is_empty()))
    }

    /// Resolve an `s3://` URL, reading the environment through `env`. Query
    /// parameters win; then `AWS_ENDPOINT_URL_S3`, `AWS_ENDPOINT_URL` (or the
    /// older `AWS_ENDPOINT`), `AWS_REGION` / `AWS_DEFAULT_REGION`,
    /// `AWS_ALLOW_HTTP`. Without `path_style=`, a custom endpoint uses
    /// path-style requests (what MinIO, LocalStack and moto answer without
    /// wildcard DNS) and AWS itself virtual-hosted ones;
    /// `AWS_VIRTUAL_HOSTED_STYLE_REQUEST=true` asks for virtual-hosted ones.
    pub fn resolve(raw: &str, env: impl Fn(&str) -> Option<String>) -> Result<Self, StorageError> {
        let ObjectStoreUrl::S3 {
            bucket,
            prefix,
            endpoint,
            region,
            allow_http,
            path_style,
        } = ObjectStoreUrl::parse(raw)?
        else {
            return Err(StorageError::InvalidUrl {
                url: raw.to_string(),
                reason: "not an s3:// url".into(),
            });
        };
        let url = url::Url::parse(raw).map_err(|cause| StorageError::UnparsableUrl {
            url: raw.to_string(),
            cause,
        })?;
        let given = |key: &str| url.query_pairs().any(|(k, _)| k == key);
        let endpoint = endpoint
            .or_else(|| env("AWS_ENDPOINT_URL_S3"))
            .or_else(|| env("AWS_ENDPOINT_URL"))
            .or_else(|| env("AWS_ENDPOINT"));
        let region = region
            .or_else(|| env("AWS_REGION"))
            .or_else(|| env("AWS_DEFAULT_REGION"))
            .unwrap_or_else(|| DEFAULT_S3_REGION.to_string());
        let truthy =
            |v: Option<String>| v.is_some_and(|v| v.eq_ignore_ascii_case("true") || v == "1");
        let allow_http = if given("allow_http") || given("endpoint") {
            allow_http
        } else {
            truthy(env("AWS_ALLOW_HTTP"))
                || endpoint
                    .as_deref()
                    .is_some_and(|e| e.starts_with("http://"))
        };
        let path_style = if given("path_style") {
            path_style
        } else if env("AWS_VIRTUAL_HOSTED_STYLE_REQUEST").is_some() {
            !truthy(env("AWS_VIRTUAL_HOSTED_STYLE_REQUEST"))
        } else {
            endpoint.is_some()
        };
        Ok(Self {
            bucket,
            prefix,
            endpoint,
            region,
            allow_http,
            path_style,
        })
    }

    /// Where requests go, for messages.
    pub fn endpoint_for_display(&self) -> String {
        self.endpoint
            .clone()
            .unwrap_or_else(|| format!("https://s3.{}.amazonaws.com", self.region))
    }
}

/// An opened object store: the wrapped store the broker uses, plus handles
/// to read its request metrics and steer its fault injection (tests only).
#[derive(Debug, Clone)]
pub struct OpenedStore {
    pub store: Arc<dyn ObjectStore>,
    pub metrics: MetricsHandle,
    pub faults: Option<FaultyStore>,
}

/// Open the object store a URL names, wrapped as
/// `RetryingStore(MetricsStore([FaultyStore](backend)))`: metrics count every
/// attempt, retries included; faults (if asked for) hit below the retries,
/// like a flaky network would.
pub fn open_object_store_with(
    raw: &str,
    faults: Option<FaultConfig>,
    retry: RetryPolicy,
) -> Result<OpenedStore, StorageError> {
    let backend = open_backend(raw)?;
    let (below_metrics, faulty): (Arc<dyn ObjectStore>, Option<FaultyStore>) = match faults {
        Some(config) => {
            let faulty = FaultyStore::new(backend, config);
            (Arc::new(faulty.clone()), Some(faulty))
        }
        None => (backend, None),
    };
    let metrics = MetricsStore::new(below_metrics);
    let handle = metrics.handle();
    let store: Arc<dyn ObjectStore> = Arc::new(RetryingStore::new(Arc::new(metrics), retry));
    Ok(OpenedStore {
        store,
        metrics: handle,
        faults: faulty,
    })
}

/// Open the object store a URL names with default retries and no faults.
pub fn open_object_store(raw: &str) -> Result<Arc<dyn ObjectStore>, StorageError> {
    Ok(open_object_store_with(raw, None, RetryPolicy::default())?.store)
}

/// Faults to inject (testing only): object-store faults, plus the share of
/// metadata commits whose answer is lost (`tributary_meta::faults::LoseAnswers`).
#[derive(Debug, Clone, Default)]
pub struct FaultSpec {
    pub store: FaultConfig,
    pub commit_lost: f64,
}

/// Parse a fault-injection spec (testing only), e.g.
/// `put_fail=0.1,get_fail=0.1,put_lost=0.05,latency_ms=5-50,seed=7,commit_lost=0.1`.
pub fn parse_fault_spec(spec: &str) -> Result<FaultSpec, String> {
    let mut config = FaultConfig::default();
    let mut commit_lost = 0.0;
    for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, v) = part
            .split_once('=')
            .ok_or_else(|| format!("fault spec item {part:?} is not key=value"))?;
        let ratio = |v: &str| -> Result<f64, String> {
            match v.parse::<f64>() {
                Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
                _ => Err(format!("{k} must be a ratio between 0 and 1, got {v:?}")),
            }
        };
        match k {
            "put_fail" => config.fail_put_ratio = ratio(v)?,
            "get_fail" => config.fail_get_ratio = ratio(v)?,
            "put_lost" => config.put_succeeds_then_errors_ratio = ratio(v)?,
            "commit_lost" => commit_lost = ratio(v)?,
            "first_puts" => {
                config.fail_first_n_puts = v.parse().map_err(|_| format!("bad first_puts {v:?}"))?
            }
            "first_gets" => {
                config.fail_first_n_gets = v.parse().map_err(|_| format!("bad first_gets {v:?}"))?
            }
            "seed" => config.seed = v.parse().map_err(|_| format!("bad seed {v:?}"))?,
            "latency_ms" => {
                let (lo, hi) = v.split_once('-').unwrap_or((v, v));
                let lo: u64 = lo.parse().map_err(|_| format!("bad latency_ms {v:?}"))?;
                let hi: u64 = hi.parse().map_err(|_| format!("bad latency_ms {v:?}"))?;
                if lo > hi {
                    return Err(format!("latency_ms range is reversed: {v:?}"));
                }
                config.latency = Some((Duration::from_millis(lo), Duration::from_millis(hi)));
            }
            other => return Err(format!("unknown fault spec key {other}")),
        }
    }
    Ok(FaultSpec {
        store: config,
        commit_lost,
    })
}

/// The bare backend a URL names.
fn open_backend(raw: &str) -> Result<Arc<dyn ObjectStore>, StorageError> {
    let setup = |source| StorageError::Setup {
        url: raw.to_string(),
        source,
    };
    match ObjectStoreUrl::parse(raw)? {
        ObjectStoreUrl::Memory => Ok(Arc::new(InMemory::new())),
        ObjectStoreUrl::File(dir) => {
            std::fs::create_dir_all(&dir).map_err(|source| StorageError::Io {
                path: dir.display().to_string(),
                source,
            })?;
            let fs = LocalFileSystem::new_with_prefix(&dir)
                .map_err(setup)?
                .with_automatic_cleanup(true)
                // A PUT returns only once the file and its directory are on
                // disk: the metadata store (SQLite synchronous=FULL, or
                // PostgreSQL) must never index an object a power loss can undo.
                .with_fsync(true);
            Ok(Arc::new(fs))
        }
        ObjectStoreUrl::S3 { .. } => {
            let S3Settings {
                bucket,
                prefix,
                endpoint,
                region,
                allow_http,
                path_style,
            } = S3Settings::from_url(raw)?;
            let mut builder = AmazonS3Builder::from_env()
                .with_bucket_name(&bucket)
                .with_region(region)
                .with_allow_http(allow_http)
                .with_virtual_hosted_style_request(!path_style);
            if let Some(endpoint) = endpoint {
                builder = builder.with_endpoint(endpoint);
            }
            let s3 = builder.build().map_err(setup)?;
            if prefix.is_empty() {
                Ok(Arc::new(s3))
            } else {
                Ok(Arc::new(PrefixStore::new(s3, prefix.as_str())))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_urls() {
        assert_eq!(
            ObjectStoreUrl::parse("memory://").expect("memory"),
            ObjectStoreUrl::Memory
        );
        assert_eq!(
            ObjectStoreUrl::parse("file:///tmp/x").expect("file"),
            ObjectStoreUrl::File("/tmp/x".into())
        );
        let s3 = ObjectStoreUrl::parse(
            "s3://bkt/a/b?endpoint=http://127.0.0.1:9000&path_style=true&region=us-east-1",
        )
        .expect("s3");
        assert_eq!(
            s3,
            ObjectStoreUrl::S3 {
                bucket: "bkt".into(),
                prefix: "a/b".into(),
                endpoint: Some("http://127.0.0.1:9000".into()),
                region: Some("us-east-1".into()),
                allow_http: true,
                path_style: true,
            }
        );
        assert!(ObjectStoreUrl::parse("gs://x").is_err());
        assert!(ObjectStoreUrl::parse("s3://b?bogus=1").is_err());
    }

    /// Defect 13: with the endpoint given the standard AWS way
    /// (`AWS_ENDPOINT_URL`) the data path kept virtual-hosted, https-only
    /// requests, so every PUT failed against the URL without the bucket.
    #[test]
    fn s3_settings_follow_the_aws_environment() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(key, _)| *key == k)
                    .map(|(_, v)| (*v).to_string())
            }
        };
        let s = S3Settings::resolve(
            "s3://bkt/pre",
            env(&[
                ("AWS_ENDPOINT_URL", "http://127.0.0.1:4566"),
                ("AWS_DEFAULT_REGION", "eu-west-1"),
            ]),
        )
        .expect("resolve");
        assert_eq!(s.endpoint.as_deref(), Some("http://127.0.0.1:4566"));
        assert_eq!(s.region, "eu-west-1");
        assert!(s.allow_http && s.path_style, "{s:?}");
        assert_eq!((s.bucket.as_str(), s.prefix.as_str()), ("bkt", "pre"));

        // The S3-specific variable wins; AWS_REGION over the default region.
        let s = S3Settings::resolve(
            "s3://bkt",
            env(&[
                ("AWS_ENDPOINT_URL", "http://other:1"),
                ("AWS_ENDPOINT_URL_S3", "https://minio.example:9000"),
                ("AWS_REGION", "ap-south-1"),
                ("AWS_DEFAULT_REGION", "eu-west-1"),
            ]),
        )
        .expect("resolve");
        assert_eq!(s.endpoint.as_deref(), Some("https://minio.example:9000"));
        assert_eq!(s.region, "ap-south-1");
        assert!(!s.allow_http && s.path_style);

        // The URL wins over the environment; AWS itself is virtual-hosted.
        let s = S3Settings::resolve(
            "s3://bkt?endpoint=http://127.0.0.1:9000&path_style=false&region=x",
            env(&[("AWS_ENDPOINT_URL", "http://other:1"), ("AWS_REGION", "y")]),
        )
        .expect("resolve");
        assert_eq!(s.endpoint.as_deref(), Some("http://127.0.0.1:9000"));
        assert_eq!(s.region, "x");
        assert!(s.allow_http && !s.path_style);
        let aws = S3Settings::resolve("s3://bkt", env(&[])).expect("resolve");
        assert_eq!(aws.endpoint, None);
        assert_eq!(aws.region, DEFAULT_S3_REGION);
        assert!(!aws.allow_http && !aws.path_style);
        assert!(S3Settings::resolve("file:///x", env(&[])).is_err());
    }

    /// Defect: file:// segment objects were never fsynced, while SQLite
    /// commits with synchronous=FULL, so after a power loss the index could
    /// point at a missing or empty file.
    #[test]
    fn local_store_syncs_its_writes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open_backend(&format!("file://{}", dir.path().display())).expect("open");
        let described = format!("{store:?}");
        assert!(described.contains("fsync: true"), "{described}");
    }

    #[test]
    fn parses_fault_specs() {
        let spec = parse_fault_spec(
            "put_fail=0.1,get_fail=0.2,put_lost=0.05,latency_ms=5-50,seed=7,commit_lost=0.3",
        )
        .expect("spec");
        assert_eq!(spec.commit_lost, 0.3);
        let c = spec.store;
        assert_eq!(c.fail_put_ratio, 0.1);
        assert_eq!(c.fail_get_ratio, 0.2);
        assert_eq!(c.put_succeeds_then_errors_ratio, 0.05);
        assert_eq!(c.seed, 7);
        assert_eq!(
            c.latency,
            Some((Duration::from_millis(5), Duration::from_millis(50)))
        );
        assert!(parse_fault_spec("put_fail=2").is_err());
        assert!(parse_fault_spec("bogus=1").is_err());
        assert!(parse_fault_spec("latency_ms=9-1").is_err());
    }
}
