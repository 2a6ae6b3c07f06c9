//! `tributary init` and the object-store pre-flight `serve` runs at start-up.
//!
//! Contract:
//! - `s3://`: HeadBucket; a missing bucket is created with `--create-bucket`
//!   (with a LocationConstraint unless the region is us-east-1) and is an error
//!   otherwise. Then conditional writes are verified: a create-only PutObject
//!   (`If-None-Match: *`) of a probe key `<prefix>/_tributary/probe-<uuid>`
//!   must succeed, a second identical one must fail with 412, and the probe is
//!   deleted. Segment uploads rely on exactly that create-only behaviour.
//! - `file://`: the directory is created and must be writable.
//! - `memory://`: nothing to check.
//! - Every failure is one line (no newline inside) naming the cause, the
//!   bucket and the endpoint, and comes within seconds: connect timeout 2 s,
//!   operation timeout 10 s, at most 2 attempts per request.
//!
//! The AWS SDK is used here, not `object_store`, because only it can create a
//! bucket and tell a missing bucket from rejected credentials.

use std::fmt;
use std::path::Path;
use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{BucketLocationConstraint, CreateBucketConfiguration};
use clap::Args;
use tributary_storage::{ObjectStoreUrl, S3Settings};

use crate::config::{ServeArgs, Settings};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(4);
const OPERATION_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_ATTEMPTS: u32 = 2;

/// Flags of `tributary init` and `tributary serve`: the serve settings (so the
/// object store resolves through the same layering) plus `--create-bucket`.
#[derive(Args, Debug, Default)]
pub struct CheckedArgs {
    #[command(flatten)]
    pub serve: ServeArgs,
    /// Create the s3:// bucket if it does not exist [default: false].
    #[arg(long, env = "TRIBUTARY_CREATE_BUCKET")]
    pub create_bucket: bool,
}

/// `tributary init`: check (and with `--create-bucket` prepare) the object
/// store. The error, if any, is a single line.
pub async fn run(args: CheckedArgs) -> anyhow::Result<()> {
    let settings = Settings::resolve(args.serve)?;
    let url = settings.object_store;
    match preflight(&url, args.create_bucket).await {
        Ok(outcome) => {
            tracing::info!(object_store = %url, %outcome, "object store ready");
            Ok(())
        }
        Err(e) => one_line(e),
    }
}

/// The start-up check `serve` runs: only for s3:// URLs (file:// is created
/// by `open_object_store` anyway), never creates a bucket unless asked.
pub async fn check_serve(url: &str, create_bucket: bool) -> anyhow::Result<()> {
    if !url.starts_with("s3://") {
        return Ok(());
    }
    match preflight(url, create_bucket).await {
        Ok(outcome) => {
            tracing::info!(%outcome, "object store check passed");
            Ok(())
        }
        Err(e) => one_line(e),
    }
}

/// Prints the error as the last line on stderr and exits with code 1.
/// (Returning it to `main` would let anyhow append a backtrace when
/// `RUST_BACKTRACE` is set; the contract is one line.)
fn one_line(e: PreflightError) -> ! {
    eprintln!("error: {e}");
    std::process::exit(1)
}

/// What the pre-flight did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Nothing,
    DirectoryReady,
    BucketExisted,
    BucketCreated,
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Outcome::Nothing => "nothing to check",
            Outcome::DirectoryReady => "directory writable",
            Outcome::BucketExisted => "bucket exists, conditional writes work",
            Outcome::BucketCreated => "bucket created, conditional writes work",
        })
    }
}

/// Why the object store is not usable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cause {
    /// The URL does not parse.
    BadUrl(String),
    /// HeadBucket answered 404 and creating was not asked for.
    MissingBucket,
    /// 403 or a credential error code; carries the code/detail.
    Credentials(String),
    /// Connection refused, DNS failure, connect or operation timeout.
    Unreachable(String),
    /// A second create-only PUT of the same key succeeded.
    NoConditionalWrites(String),
    /// Local directory not creatable or not writable.
    Directory(String),
    /// The broker's own S3 client (object_store) failed a probe round trip.
    DataPath(String),
    /// Anything else the server answered.
    Other(String),
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Cause::BadUrl(d) => write!(f, "invalid object store url ({d})"),
            Cause::MissingBucket => f.write_str(
                "bucket does not exist (run `tributary init --create-bucket` or pass --create-bucket)",
            ),
            Cause::Credentials(d) => write!(f, "credentials rejected ({d})"),
            Cause::Unreachable(d) => write!(f, "endpoint unreachable ({d})"),
            Cause::NoConditionalWrites(d) => write!(f, "no conditional-write support ({d})"),
            Cause::Directory(d) => write!(f, "object directory not writable ({d})"),
            Cause::DataPath(d) => write!(f, "segment uploads would fail ({d})"),
            Cause::Other(d) => write!(f, "unexpected error ({d})"),
        }
    }
}

/// A failed pre-flight: the cause and where. `Display` is one line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreflightError {
    pub cause: Cause,
    pub bucket: String,
    pub endpoint: String,
}

impl fmt::Display for PreflightError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let line = format!(
            "object store check failed: {} bucket={} endpoint={}",
            self.cause, self.bucket, self.endpoint
        );
        // Server messages may carry newlines; the contract is one line.
        f.write_str(&line.replace(['\n', '\r'], " "))
    }
}

impl std::error::Error for PreflightError {}

/// Checks (and possibly prepares) the object store a URL names.
pub async fn preflight(url: &str, create_bucket: bool) -> Result<Outcome, PreflightError> {
    let parsed = ObjectStoreUrl::parse(url).map_err(|e| PreflightError {
        cause: Cause::BadUrl(error_chain(&e)),
        bucket: "-".into(),
        endpoint: "-".into(),
    })?;
    match parsed {
        ObjectStoreUrl::Memory => Ok(Outcome::Nothing),
        ObjectStoreUrl::File(dir) => check_dir(&dir).map(|()| Outcome::DirectoryReady),
        ObjectStoreUrl::S3 { .. } => {
            let settings = S3Settings::from_url(url).map_err(|e| PreflightError {
                cause: Cause::BadUrl(error_chain(&e)),
                bucket: "-".into(),
                endpoint: "-".into(),
            })?;
            let s3 = S3Check::new(&settings).await;
            let outcome = s3.run(create_bucket).await?;
            data_path_round_trip(url, &settings).await?;
            Ok(outcome)
        }
    }
}

/// A create-only PUT, a GET and a DELETE of a probe object through the very
/// client the broker's data path uses (`object_store`, configured from the
/// same [`S3Settings`]): the SDK answering is not proof that segment
/// uploads will work.
async fn data_path_round_trip(url: &str, settings: &S3Settings) -> Result<(), PreflightError> {
    use tributary_storage::object_store::{ObjectStoreExt, PutMode, PutOptions, PutPayload};
    let fail = |detail: String| PreflightError {
        cause: Cause::DataPath(detail),
        bucket: settings.bucket.clone(),
        endpoint: settings.endpoint_for_display(),
    };
    let store = tributary_storage::open_object_store(url).map_err(|e| fail(error_chain(&e)))?;
    let key = tributary_storage::object_store::path::Path::from(format!(
        "_tributary/probe-{}",
        uuid::Uuid::new_v4()
    ));
    let round_trip = async {
        let opts = PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        };
        store
            .put_opts(&key, PutPayload::from_static(b"tributary probe"), opts)
            .await
            .map_err(|e| format!("PUT {key}: {}", error_chain(&e)))?;
        let got = store
            .get(&key)
            .await
            .map_err(|e| format!("GET {key}: {}", error_chain(&e)))?
            .bytes()
            .await
            .map_err(|e| format!("GET {key}: {}", error_chain(&e)))?;
        if got.as_ref() != b"tributary probe" {
            return Err(format!("GET {key} returned other bytes"));
        }
        store
            .delete(&key)
            .await
            .map_err(|e| format!("DELETE {key}: {}", error_chain(&e)))
    };
    match tokio::time::timeout(OPERATION_TIMEOUT * 2, round_trip).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(detail)) => Err(fail(detail)),
        Err(_) => Err(fail(format!(
            "no answer within {}s",
            (OPERATION_TIMEOUT * 2).as_secs()
        ))),
    }
}

fn check_dir(dir: &Path) -> Result<(), PreflightError> {
    let fail = |detail: String| PreflightError {
        cause: Cause::Directory(detail),
        bucket: "-".into(),
        endpoint: format!("file://{}", dir.display()),
    };
    std::fs::create_dir_all(dir).map_err(|e| fail(format!("cannot create: {e}")))?;
    let probe = dir.join(format!(".tributary-probe-{}", uuid::Uuid::new_v4()));
    std::fs::write(&probe, b"probe").map_err(|e| fail(format!("cannot write: {e}")))?;
    std::fs::remove_file(&probe).map_err(|e| fail(format!("cannot delete probe: {e}")))?;
    Ok(())
}

struct S3Check {
    client: aws_sdk_s3::Client,
    bucket: String,
    prefix: String,
    endpoint: String,
    region: String,
}

impl S3Check {
    async fn new(settings: &S3Settings) -> Self {
        let timeouts = TimeoutConfig::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .operation_attempt_timeout(ATTEMPT_TIMEOUT)
            .operation_timeout(OPERATION_TIMEOUT)
            .build();
        let shared = aws_config::defaults(BehaviorVersion::latest())
            .timeout_config(timeouts)
            .retry_config(RetryConfig::standard().with_max_attempts(MAX_ATTEMPTS))
            .region(Region::new(settings.region.clone()))
            .load()
            .await;
        // Endpoint, region and addressing exactly as the data path resolved
        // them (S3Settings), not as the SDK's own environment lookup would.
        let mut config = aws_sdk_s3::config::Builder::from(&shared)
            .region(Region::new(settings.region.clone()))
            .force_path_style(settings.path_style);
        if let Some(endpoint) = &settings.endpoint {
            config = config.endpoint_url(endpoint);
        }
        Self {
            client: aws_sdk_s3::Client::from_conf(config.build()),
            bucket: settings.bucket.clone(),
            prefix: settings.prefix.clone(),
            endpoint: settings.endpoint_for_display(),
            region: settings.region.clone(),
        }
    }

    fn fail(&self, cause: Cause) -> PreflightError {
        PreflightError {
            cause,
            bucket: self.bucket.clone(),
            endpoint: self.endpoint.clone(),
        }
    }

    async fn run(&self, create_bucket: bool) -> Result<Outcome, PreflightError> {
        let outcome = match self.client.head_bucket().bucket(&self.bucket).send().await {
            Ok(_) => Outcome::BucketExisted,
            Err(e) if status(&e) == Some(404) => {
                if !create_bucket {
                    return Err(self.fail(Cause::MissingBucket));
                }
                self.create().await?;
                Outcome::BucketCreated
            }
            Err(e) if status(&e) == Some(403) => {
                // HEAD answers carry no body, so no error code: ask again with
                // a GET to learn whether the key, the signature or the
                // permission is at fault.
                let detail = match self
                    .client
                    .list_objects_v2()
                    .bucket(&self.bucket)
                    .max_keys(1)
                    .send()
                    .await
                {
                    Err(e) if e.code().is_some() => describe(&e),
                    _ => "HeadBucket 403 Forbidden".to_string(),
                };
                return Err(self.fail(Cause::Credentials(detail)));
            }
            Err(e) => return Err(self.fail(classify(&e))),
        };
        self.check_conditional_writes().await?;
        Ok(outcome)
    }

    async fn create(&self) -> Result<(), PreflightError> {
        let mut request = self.client.create_bucket().bucket(&self.bucket);
        if self.region != "us-east-1" {
            request = request.create_bucket_configuration(
                CreateBucketConfiguration::builder()
                    .location_constraint(BucketLocationConstraint::from(self.region.as_str()))
                    .build(),
            );
        }
        match request.send().await {
            Ok(_) => {
                tracing::info!(bucket = %self.bucket, endpoint = %self.endpoint, "bucket created");
                Ok(())
            }
            // Created concurrently by another `init`: fine.
            Err(e) if e.code() == Some("BucketAlreadyOwnedByYou") => Ok(()),
            Err(e) => Err(self.fail(classify(&e))),
        }
    }

    async fn check_conditional_writes(&self) -> Result<(), PreflightError> {
        let key = if self.prefix.is_empty() {
            format!("_tributary/probe-{}", uuid::Uuid::new_v4())
        } else {
            format!("{}/_tributary/probe-{}", self.prefix, uuid::Uuid::new_v4())
        };
        let put = || {
            self.client
                .put_object()
                .bucket(&self.bucket)
                .key(&key)
                .if_none_match("*")
                .body(ByteStream::from_static(b"tributary probe"))
                .send()
        };
        if let Err(e) = put().await {
            return Err(self.fail(match status(&e) {
                Some(412) => Cause::Other(format!("probe key {key} already exists")),
                Some(501) => Cause::NoConditionalWrites(format!(
                    "PutObject with If-None-Match rejected: {}",
                    describe(&e)
                )),
                _ => classify(&e),
            }));
        }
        let second = put().await;
        let deleted = self
            .client
            .delete_object()
            .bucket(&self.bucket)
            .key(&key)
            .send()
            .await;
        match second {
            Err(e) if status(&e) == Some(412) || e.code() == Some("PreconditionFailed") => {}
            // 409 ConditionalRequestConflict: a concurrent write, still create-only.
            Err(e) if status(&e) == Some(409) => {}
            Ok(_) => {
                return Err(self.fail(Cause::NoConditionalWrites(format!(
                    "a second PutObject with If-None-Match: * of {key} succeeded"
                ))))
            }
            Err(e) => {
                return Err(self.fail(match status(&e) {
                    Some(400 | 501) => Cause::NoConditionalWrites(describe(&e)),
                    _ => classify(&e),
                }))
            }
        }
        if let Err(e) = deleted {
            return Err(self.fail(Cause::Other(format!(
                "cannot delete probe {key}: {}",
                describe(&e)
            ))));
        }
        Ok(())
    }
}

type HttpResponse = aws_sdk_s3::config::http::HttpResponse;

fn status<E>(e: &SdkError<E, HttpResponse>) -> Option<u16> {
    e.raw_response().map(|r| r.status().as_u16())
}

/// Short description of a service error: `Code: message (HTTP status)`.
fn describe<E>(e: &SdkError<E, HttpResponse>) -> String
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let status = status(e).map_or(String::new(), |s| format!(" (HTTP {s})"));
    match (e.code(), e.message()) {
        (Some(code), Some(msg)) => format!("{code}: {msg}{status}"),
        (Some(code), None) => format!("{code}{status}"),
        _ => format!("{}{status}", error_chain(e)),
    }
}

/// Error codes S3 and compatible servers use for unusable credentials.
const CREDENTIAL_CODES: &[&str] = &[
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "AccessDenied",
    "ExpiredToken",
    "InvalidToken",
    "InvalidClientTokenId",
    "AuthorizationHeaderMalformed",
];

/// Sorts an SDK failure into a cause.
fn classify<E>(e: &SdkError<E, HttpResponse>) -> Cause
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    match e {
        SdkError::TimeoutError(_) => Cause::Unreachable(format!(
            "no answer, timed out (connect {}s, attempt {}s, operation {}s)",
            CONNECT_TIMEOUT.as_secs(),
            ATTEMPT_TIMEOUT.as_secs(),
            OPERATION_TIMEOUT.as_secs()
        )),
        SdkError::DispatchFailure(d) => {
            let chain = error_chain(e);
            if d.is_timeout() {
                Cause::Unreachable(format!("timed out: {}", innermost(e)))
            } else if d.is_io() {
                Cause::Unreachable(innermost(e))
            } else if chain.to_ascii_lowercase().contains("credentials") {
                Cause::Credentials(format!("no usable credentials: {chain}"))
            } else {
                Cause::Other(chain)
            }
        }
        SdkError::ConstructionFailure(_) => {
            let chain = error_chain(e);
            if chain.to_ascii_lowercase().contains("credential") {
                Cause::Credentials(chain)
            } else {
                Cause::Other(chain)
            }
        }
        _ => {
            let code = e.code().unwrap_or_default();
            if status(e) == Some(403) || CREDENTIAL_CODES.contains(&code) {
                Cause::Credentials(describe(e))
            } else if status(e) == Some(404) && code == "NoSuchBucket" {
                Cause::MissingBucket
            } else {
                Cause::Other(describe(e))
            }
        }
    }
}

/// Every message in the source chain, joined with ": ".
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![e.to_string()];
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = s.source();
    }
    parts.join(": ")
}

/// The deepest message in the source chain: for I/O failures the OS error
/// ("Connection refused (os error 111)", a DNS failure, ...).
fn innermost(e: &(dyn std::error::Error + 'static)) -> String {
    let mut last: &(dyn std::error::Error + 'static) = e;
    while let Some(s) = last.source() {
        last = s;
    }
    last.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(cause: Cause) -> PreflightError {
        PreflightError {
            cause,
            bucket: "bkt".into(),
            endpoint: "http://127.0.0.1:9".into(),
        }
    }

    #[test]
    fn messages_are_one_line_and_name_bucket_endpoint_cause() {
        let cases = [
            (Cause::MissingBucket, "bucket does not exist"),
            (
                Cause::Credentials(
                    "InvalidAccessKeyId: The AWS Access Key Id\nyou provided".into(),
                ),
                "credentials rejected (InvalidAccessKeyId",
            ),
            (
                Cause::Unreachable("Connection refused (os error 111)".into()),
                "endpoint unreachable (Connection refused",
            ),
            (
                Cause::NoConditionalWrites("second put succeeded".into()),
                "no conditional-write support",
            ),
        ];
        for (cause, needle) in cases {
            let line = err(cause).to_string();
            assert!(!line.contains('\n'), "{line}");
            assert!(line.contains(needle), "{line}");
            assert!(line.contains("bucket=bkt"), "{line}");
            assert!(line.contains("endpoint=http://127.0.0.1:9"), "{line}");
        }
    }

    #[tokio::test]
    async fn memory_needs_nothing_and_file_must_be_writable() {
        assert_eq!(
            preflight("memory://", false).await.expect("memory"),
            Outcome::Nothing
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let objects = dir.path().join("a/objects");
        let url = format!("file://{}", objects.display());
        assert_eq!(
            preflight(&url, false).await.expect("file"),
            Outcome::DirectoryReady
        );
        assert!(objects.is_dir());
        assert_eq!(std::fs::read_dir(&objects).expect("ls").count(), 0);
        // A regular file where the directory should be.
        let blocker = dir.path().join("blocker");
        std::fs::write(&blocker, b"x").expect("write");
        let e = preflight(&format!("file://{}/sub", blocker.display()), false)
            .await
            .expect_err("not a directory");
        assert!(matches!(e.cause, Cause::Directory(_)), "{e}");
    }

    #[tokio::test]
    async fn bad_url_is_reported() {
        let e = preflight("gs://x", false).await.expect_err("bad url");
        assert!(matches!(e.cause, Cause::BadUrl(_)), "{e}");
    }
}
