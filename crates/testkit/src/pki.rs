//! A throwaway certificate authority for TLS tests: a CA, a server
//! certificate for `localhost` and `127.0.0.1`, and client certificates
//! with the subject a test asks for, as PEM files in a temporary directory.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// The CA and the files it wrote (removed when dropped).
pub struct Pki {
    dir: tempfile::TempDir,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for Pki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pki")
            .field("dir", &self.dir.path())
            .finish_non_exhaustive()
    }
}

/// A certificate and its key, as PEM files.
#[derive(Debug, Clone)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Pki {
    /// A new CA (`ca.pem`) and a server certificate (`server.pem`,
    /// `server.key`) valid for `localhost` and `127.0.0.1`.
    pub fn new() -> Result<Pki> {
        let dir = tempfile::Builder::new()
            .prefix("tributary-pki-")
            .tempdir()
            .context("temp dir for certificates")?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.distinguished_name = name("Tributary test CA");
        let key = KeyPair::generate()?;
        let ca = params.self_signed(&key)?;
        std::fs::write(dir.path().join("ca.pem"), ca.pem())?;
        let pki = Pki {
            dir,
            issuer: Issuer::new(params, key),
        };
        pki.server("server")?;
        Ok(pki)
    }

    /// The CA certificate clients and the broker trust.
    pub fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// The broker's certificate and key.
    pub fn server_files(&self) -> CertFiles {
        self.files("server")
    }

    /// Issue a new server certificate under `stem` (`<stem>.pem`,
    /// `<stem>.key`), e.g. to test rotation.
    pub fn server(&self, stem: &str) -> Result<CertFiles> {
        let mut params =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])?;
        params.distinguished_name = name(stem);
        self.issue(stem, params)
    }

    /// A client certificate whose subject is `CN=<common_name>` (the
    /// broker's principal for it: `User:CN=<common_name>`).
    pub fn client(&self, common_name: &str) -> Result<CertFiles> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name = name(common_name);
        self.issue(&format!("client-{common_name}"), params)
    }

    fn issue(&self, stem: &str, params: CertificateParams) -> Result<CertFiles> {
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        let files = self.files(stem);
        std::fs::write(&files.cert, cert.pem())?;
        std::fs::write(&files.key, key.serialize_pem())?;
        Ok(files)
    }

    fn files(&self, stem: &str) -> CertFiles {
        CertFiles {
            cert: self.dir.path().join(format!("{stem}.pem")),
            key: self.dir.path().join(format!("{stem}.key")),
        }
    }

    /// The directory holding the files.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

fn name(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn
}
