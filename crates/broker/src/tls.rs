//! TLS for `SSL` and `SASL_SSL` listeners (rustls, TLS 1.2 and 1.3 only).
//!
//! The certificate chain and key are PEM files; with a client CA, client
//! certificates are checked (`required`, or `requested`: checked when
//! given). A client's principal is then `User:` followed by its
//! certificate's subject in RFC 4514 form (`User:CN=alice,O=acme`), as
//! Kafka's default `ssl.principal.mapping.rules` gives it; without a
//! certificate it is `User:ANONYMOUS`.
//!
//! The files are read again when they change ([`TlsContext::watch`], every
//! [`RELOAD_INTERVAL`]): new connections get the new certificate, open ones
//! keep theirs, and files that do not load (half written, mismatched key)
//! leave the previous certificate in place with a warning.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use tokio_rustls::TlsAcceptor;
use tributary_runtime::{Background, CancellationToken, TaskHandle, Tick};

/// How often the certificate files are checked for changes.
pub const RELOAD_INTERVAL: Duration = Duration::from_secs(10);

/// Longest a client may take to complete the TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Whether clients must present a certificate (Kafka `ssl.client.auth`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// Certificates are not asked for.
    None,
    /// Asked for and checked when given; a client without one is anonymous.
    Requested,
    /// A client without a valid certificate is refused.
    Required,
}

impl ClientAuth {
    /// `none`, `requested` or `required`.
    pub fn parse(text: &str) -> Option<ClientAuth> {
        match text.to_ascii_lowercase().as_str() {
            "none" => Some(ClientAuth::None),
            "requested" => Some(ClientAuth::Requested),
            "required" => Some(ClientAuth::Required),
            _ => None,
        }
    }
}

/// PEM text: a file (re-read when it changes), or the text itself, as a
/// secret store hands it to a container in an environment variable (like
/// Kafka's `ssl.keystore.certificate.chain`).
#[derive(Clone, PartialEq, Eq)]
pub enum Pem {
    File(PathBuf),
    Inline(String),
}

impl Pem {
    /// A setting's value: PEM text when it starts with `-----BEGIN`, else
    /// a file path.
    pub fn from_setting(value: impl Into<PathBuf>) -> Pem {
        let path: PathBuf = value.into();
        match path.to_str() {
            Some(text) if text.trim_start().starts_with("-----BEGIN") => {
                Pem::Inline(text.to_owned())
            }
            _ => Pem::File(path),
        }
    }

    /// For messages: the path, or "inline PEM" (never the text: it may be
    /// a private key).
    pub fn name(&self) -> String {
        match self {
            Pem::File(p) => p.display().to_string(),
            Pem::Inline(_) => "(inline PEM)".to_owned(),
        }
    }

    fn read(&self) -> Result<Vec<u8>, String> {
        match self {
            Pem::File(p) => std::fs::read(p).map_err(|e| format!("{}: {e}", p.display())),
            Pem::Inline(text) => Ok(text.as_bytes().to_vec()),
        }
    }

    /// Size and modification time of a file (`None` for inline text,
    /// which never changes).
    fn stamp(&self) -> Option<(u64, SystemTime)> {
        let Pem::File(p) = self else {
            return None;
        };
        let m = std::fs::metadata(p).ok()?;
        Some((m.len(), m.modified().ok()?))
    }
}

impl std::fmt::Debug for Pem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name())
    }
}

/// Where the TLS material is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM certificate chain, the broker's certificate first.
    pub cert: Pem,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: Pem,
    /// PEM CA certificates client certificates must chain to.
    pub client_ca: Option<Pem>,
    pub client_auth: ClientAuth,
}

/// The current TLS configuration of a broker's TLS listeners.
#[derive(Debug)]
pub struct TlsContext {
    files: TlsFiles,
    current: RwLock<Arc<ServerConfig>>,
    /// Size and modification time of each file when last loaded.
    loaded: Mutex<Vec<Option<(u64, SystemTime)>>>,
}

impl TlsContext {
    /// Load `files`; `Err` names the file and the problem.
    pub fn load(files: TlsFiles) -> Result<Arc<TlsContext>, String> {
        let stamps = stamps(&files);
        let config = build(&files)?;
        Ok(Arc::new(TlsContext {
            files,
            current: RwLock::new(Arc::new(config)),
            loaded: Mutex::new(stamps),
        }))
    }

    /// An acceptor with the current configuration.
    pub fn acceptor(&self) -> TlsAcceptor {
        let config = self
            .current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        TlsAcceptor::from(config)
    }

    /// Load the files again if any changed since the last load. Returns
    /// whether a new configuration is in place.
    pub fn reload_if_changed(&self) -> bool {
        let now = stamps(&self.files);
        {
            let mut loaded = self.loaded.lock().unwrap_or_else(|e| e.into_inner());
            if *loaded == now {
                return false;
            }
            *loaded = now;
        }
        match build(&self.files) {
            Ok(config) => {
                *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(config);
                tracing::info!(cert = %self.files.cert.name(), "TLS certificate reloaded");
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "TLS files changed but do not load; keeping the previous certificate");
                false
            }
        }
    }

    /// Check the files every [`RELOAD_INTERVAL`] until `stop`.
    pub fn watch(self: &Arc<Self>, stop: CancellationToken) -> TaskHandle {
        tributary_runtime::spawn("tls-reload", Reload(self.clone()), stop)
    }
}

struct Reload(Arc<TlsContext>);

#[async_trait]
impl Background for Reload {
    type Event = ();

    fn first(&self) -> Tick {
        Tick::In(RELOAD_INTERVAL)
    }

    async fn tick(&mut self) -> Tick {
        let context = self.0.clone();
        // File reads and key parsing are blocking work.
        let _ = tokio::task::spawn_blocking(move || context.reload_if_changed()).await;
        Tick::In(RELOAD_INTERVAL)
    }
}

fn stamps(files: &TlsFiles) -> Vec<Option<(u64, SystemTime)>> {
    let mut out = vec![files.cert.stamp(), files.key.stamp()];
    out.extend(files.client_ca.as_ref().map(Pem::stamp));
    out
}

fn certificates(pem: &Pem, what: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let text = pem.read().map_err(|e| format!("cannot read {what} {e}"))?;
    let certs = CertificateDer::pem_slice_iter(&text)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("cannot read {what} {}: {e}", pem.name()))?;
    if certs.is_empty() {
        return Err(format!("{what} {} holds no PEM certificate", pem.name()));
    }
    Ok(certs)
}

/// The rustls configuration for `files`.
fn build(files: &TlsFiles) -> Result<ServerConfig, String> {
    let chain = certificates(&files.cert, "TLS certificate")?;
    let key = files
        .key
        .read()
        .and_then(|text| PrivateKeyDer::from_pem_slice(&text).map_err(|e| e.to_string()))
        .map_err(|e| format!("cannot read TLS key {}: {e}", files.key.name()))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| format!("TLS setup: {e}"))?;
    let verifier = match (&files.client_ca, files.client_auth) {
        (_, ClientAuth::None) => WebPkiClientVerifier::no_client_auth(),
        (None, _) => {
            return Err("--tls-client-auth requested|required needs --tls-client-ca".into());
        }
        (Some(ca), auth) => {
            let mut roots = RootCertStore::empty();
            for cert in certificates(ca, "TLS client CA")? {
                roots
                    .add(cert)
                    .map_err(|e| format!("TLS client CA {}: {e}", ca.name()))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let verifier = match auth {
                ClientAuth::Requested => verifier.allow_unauthenticated(),
                _ => verifier,
            };
            verifier
                .build()
                .map_err(|e| format!("TLS client CA {}: {e}", ca.name()))?
        }
    };
    builder
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| {
            format!(
                "TLS certificate {} and key {} do not make a server identity: {e}",
                files.cert.name(),
                files.key.name()
            )
        })
}

/// The principal of an authenticated TLS client: `User:` and the subject
/// of its certificate (RFC 4514), or `None` without a certificate.
pub fn principal_of(connection: &rustls::ServerConnection) -> Option<String> {
    use x509_cert::der::Decode;
    let leaf = connection.peer_certificates()?.first()?;
    let cert = x509_cert::Certificate::from_der(leaf.as_ref()).ok()?;
    Some(format!("User:{}", cert.tbs_certificate.subject))
}
