//! TLS to PostgreSQL with libpq's `sslmode` meanings (rustls, aws-lc-rs).
//!
//! | `sslmode` | encrypted | server certificate checked |
//! |---|---|---|
//! | `disable` | no | - |
//! | `prefer` (default, as libpq) | if the server offers TLS | no |
//! | `require` | yes | no; with `sslrootcert`, as `verify-ca` (as libpq) |
//! | `verify-ca` | yes | chain to `sslrootcert` (or the system roots) |
//! | `verify-full` | yes | chain, and the certificate names the host |
//!
//! `sslrootcert=PATH` names a PEM file of trusted CA certificates (managed
//! databases publish theirs, e.g. Amazon RDS's global bundle); without it the
//! system's roots are used. Both keys are taken off the URL here, because
//! `tokio-postgres` knows only `disable`/`prefer`/`require` and leaves
//! certificate checks to the TLS connector.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio_postgres::config::SslMode;
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::{MetaError, Result};

/// libpq's `sslmode` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(super) enum TlsMode {
    Disable,
    #[default]
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl TlsMode {
    pub(super) fn parse(value: &str) -> Result<Self> {
        Ok(match value {
            "disable" => TlsMode::Disable,
            "allow" | "prefer" => TlsMode::Prefer,
            "require" => TlsMode::Require,
            "verify-ca" => TlsMode::VerifyCa,
            "verify-full" => TlsMode::VerifyFull,
            other => {
                return Err(MetaError::InvalidArgument(format!(
                    "postgres url sslmode={other} is not one of disable, prefer, require, \
                     verify-ca, verify-full"
                )))
            }
        })
    }

    /// What `tokio-postgres` is told: whether TLS is tried and required.
    pub(super) fn ssl_mode(self) -> SslMode {
        match self {
            TlsMode::Disable => SslMode::Disable,
            TlsMode::Prefer => SslMode::Prefer,
            TlsMode::Require | TlsMode::VerifyCa | TlsMode::VerifyFull => SslMode::Require,
        }
    }
}

/// The connector for `mode`, trusting the CA certificates in `root_cert`
/// (a PEM file) or else the system's roots.
pub(super) fn connector(mode: TlsMode, root_cert: Option<&str>) -> Result<MakeRustlsConnect> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let check = match (mode, root_cert) {
        (TlsMode::Disable | TlsMode::Prefer, _) | (TlsMode::Require, None) => Check::Nothing,
        (TlsMode::Require | TlsMode::VerifyCa, _) => Check::Chain,
        (TlsMode::VerifyFull, _) => Check::ChainAndName,
    };
    let verifier: Arc<dyn ServerCertVerifier> = match check {
        Check::Nothing => Arc::new(AcceptAny(provider.clone())),
        Check::Chain | Check::ChainAndName => {
            let roots = Arc::new(roots(root_cert)?);
            let webpki = WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
                .build()
                .map_err(|e| invalid(format!("TLS verifier error={e}")))?;
            if check == Check::Chain {
                Arc::new(ChainOnly(webpki))
            } else {
                webpki
            }
        }
    };
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid(format!("TLS versions error={e}")))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Ok(MakeRustlsConnect::new(config))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Check {
    Nothing,
    Chain,
    ChainAndName,
}

fn invalid(what: String) -> MetaError {
    MetaError::InvalidArgument(format!("postgres url {what}"))
}

fn roots(root_cert: Option<&str>) -> Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    match root_cert {
        Some(path) => {
            let pem = std::fs::read(path)
                .map_err(|e| invalid(format!("sslrootcert={path} unreadable error={e}")))?;
            let mut found = 0;
            for cert in rustls_pemfile_certs(&pem) {
                let cert = cert.map_err(|e| invalid(format!("sslrootcert={path} error={e}")))?;
                roots
                    .add(cert)
                    .map_err(|e| invalid(format!("sslrootcert={path} error={e}")))?;
                found += 1;
            }
            if found == 0 {
                return Err(invalid(format!(
                    "sslrootcert={path} holds no PEM certificate"
                )));
            }
        }
        None => {
            let native = rustls_native_certs::load_native_certs();
            for cert in native.certs {
                // Unparsable system certificates are skipped, as by every
                // rustls client.
                let _ = roots.add(cert);
            }
            if roots.is_empty() {
                return Err(invalid(
                    "sslmode needs trusted roots: no system CA certificates found; \
                     set sslrootcert=PATH"
                        .to_owned(),
                ));
            }
        }
    }
    Ok(roots)
}

/// The certificates of a PEM file.
fn rustls_pemfile_certs(
    pem: &[u8],
) -> impl Iterator<Item = std::result::Result<CertificateDer<'static>, String>> + '_ {
    use rustls::pki_types::pem::PemObject;
    CertificateDer::pem_slice_iter(pem).map(|r| r.map_err(|e| e.to_string()))
}

/// `prefer`/`require`: encrypt, accept any certificate (as libpq does), but
/// still check the handshake signatures.
#[derive(Debug)]
struct AcceptAny(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `verify-ca`: the chain must lead to a trusted root; the name may differ.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse_as_libpq() {
        assert_eq!(TlsMode::parse("disable").ok(), Some(TlsMode::Disable));
        assert_eq!(TlsMode::parse("prefer").ok(), Some(TlsMode::Prefer));
        assert_eq!(
            TlsMode::parse("verify-full").ok(),
            Some(TlsMode::VerifyFull)
        );
        assert!(TlsMode::parse("sometimes").is_err());
        assert_eq!(TlsMode::VerifyCa.ssl_mode(), SslMode::Require);
        assert_eq!(TlsMode::default(), TlsMode::Prefer);
    }

    #[test]
    fn bad_root_cert_files_are_named() {
        let missing = connector(TlsMode::VerifyFull, Some("/nonexistent/ca.pem"))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(missing.contains("/nonexistent/ca.pem"), "{missing}");
        let dir = tempfile::tempdir().expect("tempdir");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate").expect("write");
        let err = connector(TlsMode::VerifyCa, empty.to_str())
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("no PEM certificate"), "{err}");
        assert!(connector(TlsMode::Require, None).is_ok());
    }
}
