//! SASL/OAUTHBEARER (RFC 7628, Kafka's KIP-255 and KIP-768): the client
//! sends a JWT its identity provider issued; the broker checks the
//! signature against the provider's keys (a JWKS, from a file or an
//! `https://` URL), the expiry (with a clock-skew allowance), and, when
//! configured, the issuer and the audience. The principal is `User:` and
//! the token's subject (`sub`, or the claim `--sasl-oauthbearer-sub-claim`
//! names).
//!
//! Only asymmetric keys are used (RSA, EC, Ed25519): a token is checked
//! with the algorithms of its key's type, never with one its header picks
//! freely (no `none`, no HMAC with a public key as the secret). The key
//! set is loaded before the broker serves and re-read every
//! [`FILE_REFRESH`] (a file whose modification time moved) or
//! [`URL_REFRESH`] (a URL); a set that does not load leaves the last one in
//! force.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use tributary_runtime::{Background, CancellationToken, TaskHandle, Tick};

/// How often a JWKS file is checked for changes.
pub const FILE_REFRESH: Duration = Duration::from_secs(10);
/// How often a JWKS URL is fetched again.
pub const URL_REFRESH: Duration = Duration::from_secs(300);
/// Largest JWKS accepted (file or URL).
const MAX_JWKS_BYTES: usize = 1024 * 1024;
/// Largest client message (the token and its framing).
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;
/// Limit on fetching a JWKS URL.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// OAUTHBEARER settings (Kafka's `sasl.oauthbearer.*`).
#[derive(Debug, Clone)]
pub struct OAuthConfig {
    /// The JWKS: a file path, or an `http(s)://` URL
    /// (`sasl.oauthbearer.jwks.endpoint.url`).
    pub jwks: String,
    /// Required `iss` (`sasl.oauthbearer.expected.issuer`).
    pub issuer: Option<String>,
    /// Accepted `aud` values; the token must name one
    /// (`sasl.oauthbearer.expected.audience`).
    pub audience: Vec<String>,
    /// The claim holding the principal name (`sasl.oauthbearer.sub.claim.name`).
    pub sub_claim: String,
    /// Allowance for clocks that disagree (`sasl.oauthbearer.clock.skew.seconds`).
    pub clock_skew: Duration,
}

impl OAuthConfig {
    /// `jwks` with Kafka's defaults for the rest.
    pub fn new(jwks: impl Into<String>) -> Self {
        Self {
            jwks: jwks.into(),
            issuer: None,
            audience: Vec::new(),
            sub_claim: "sub".into(),
            clock_skew: Duration::from_secs(30),
        }
    }

    fn is_url(&self) -> bool {
        self.jwks.starts_with("https://") || self.jwks.starts_with("http://")
    }
}

/// One usable key of the set.
struct Key {
    kid: Option<String>,
    /// The algorithms tokens signed with this key may name.
    algorithms: Vec<Algorithm>,
    key: DecodingKey,
}

/// A checked token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// The principal's name (the subject claim).
    pub name: String,
    /// When the token expires (ms since the epoch).
    pub expires_at_ms: i64,
}

/// The key set and the check. Off (no config) when OAUTHBEARER is not
/// offered.
pub struct Keys {
    config: Option<OAuthConfig>,
    keys: RwLock<Arc<Vec<Key>>>,
    /// The file's modification time at the last load.
    loaded_mtime: Mutex<Option<SystemTime>>,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keys")
            .field("config", &self.config)
            .field("keys", &self.keys.read().map(|k| k.len()).unwrap_or(0))
            .finish()
    }
}

impl Keys {
    pub fn new(config: Option<OAuthConfig>) -> Arc<Keys> {
        Arc::new(Keys {
            config,
            keys: RwLock::new(Arc::new(Vec::new())),
            loaded_mtime: Mutex::new(None),
        })
    }

    /// Whether OAUTHBEARER is configured.
    pub fn enabled(&self) -> bool {
        self.config.is_some()
    }

    /// (Re)load the key set: a file only when it changed, a URL always.
    /// Returns whether a new set is in force.
    pub async fn load(&self) -> Result<bool, String> {
        let Some(config) = &self.config else {
            return Ok(false);
        };
        let bytes = if config.is_url() {
            fetch(&config.jwks).await?
        } else {
            let path = PathBuf::from(&config.jwks);
            let mtime = std::fs::metadata(&path)
                .and_then(|m| m.modified())
                .map_err(|e| format!("cannot read JWKS {}: {e}", path.display()))?;
            if *self.loaded_mtime.lock().unwrap_or_else(|e| e.into_inner()) == Some(mtime) {
                return Ok(false);
            }
            let bytes = std::fs::read(&path)
                .map_err(|e| format!("cannot read JWKS {}: {e}", path.display()))?;
            *self.loaded_mtime.lock().unwrap_or_else(|e| e.into_inner()) = Some(mtime);
            bytes
        };
        if bytes.len() > MAX_JWKS_BYTES {
            return Err(format!(
                "JWKS {} is over {MAX_JWKS_BYTES} bytes",
                config.jwks
            ));
        }
        let keys = parse_jwks(&bytes).map_err(|e| format!("JWKS {}: {e}", config.jwks))?;
        tracing::info!(jwks = %config.jwks, keys = keys.len(), "OAUTHBEARER keys loaded");
        *self.keys.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(keys);
        Ok(true)
    }

    /// Re-read the set in the background until `stop`.
    pub fn spawn_refresh(self: &Arc<Self>, stop: CancellationToken) -> TaskHandle {
        tributary_runtime::spawn("oauthbearer-jwks", Refresh(self.clone()), stop)
    }

    /// Check `token` now.
    pub fn verify(&self, token: &str) -> Result<Verified, String> {
        self.verify_at(token, SystemTime::now())
    }

    fn verify_at(&self, token: &str, now: SystemTime) -> Result<Verified, String> {
        let config = self
            .config
            .as_ref()
            .ok_or("OAUTHBEARER is not configured")?;
        let header = jsonwebtoken::decode_header(token).map_err(|e| format!("not a JWT: {e}"))?;
        let keys = self.keys.read().unwrap_or_else(|e| e.into_inner()).clone();
        let key = match &header.kid {
            Some(kid) => keys.iter().find(|k| k.kid.as_deref() == Some(kid)),
            None if keys.len() == 1 => keys.first(),
            None => None,
        }
        .ok_or_else(|| format!("no key for kid {:?} in the JWKS", header.kid))?;
        if !key.algorithms.contains(&header.alg) {
            return Err(format!("algorithm {:?} does not fit the key", header.alg));
        }
        let mut validation = Validation::new(header.alg);
        validation.algorithms = key.algorithms.clone();
        validation.leeway = config.clock_skew.as_secs();
        // Time (exp, nbf) is checked below against `now`, not the
        // library's clock.
        validation.validate_nbf = false;
        validation.validate_exp = false;
        let mut required: HashSet<String> = HashSet::new();
        if let Some(issuer) = &config.issuer {
            validation.set_issuer(&[issuer]);
            required.insert("iss".into());
        }
        if config.audience.is_empty() {
            validation.validate_aud = false;
        } else {
            validation.set_audience(&config.audience);
            required.insert("aud".into());
        }
        validation.required_spec_claims = required;
        let data = jsonwebtoken::decode::<serde_json::Value>(token, &key.key, &validation)
            .map_err(|e| format!("token refused: {e}"))?;
        let claims = data.claims;
        let now_s = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()) as i64;
        let skew = config.clock_skew.as_secs() as i64;
        let exp = claims
            .get("exp")
            .and_then(serde_json::Value::as_i64)
            .ok_or("the token has no exp")?;
        if exp + skew < now_s {
            return Err(format!("the token expired at {exp} (now {now_s})"));
        }
        if let Some(nbf) = claims.get("nbf").and_then(serde_json::Value::as_i64) {
            if nbf - skew > now_s {
                return Err(format!("the token is not valid before {nbf} (now {now_s})"));
            }
        }
        let name = claims
            .get(&config.sub_claim)
            .and_then(serde_json::Value::as_str)
            .filter(|s| !s.is_empty() && s.len() <= 256)
            .ok_or_else(|| format!("the token has no {} claim", config.sub_claim))?;
        Ok(Verified {
            name: name.to_owned(),
            expires_at_ms: exp.saturating_mul(1000),
        })
    }
}

/// The usable keys of a JWKS document: asymmetric signing keys only.
fn parse_jwks(bytes: &[u8]) -> Result<Vec<Key>, String> {
    let set: JwkSet = serde_json::from_slice(bytes).map_err(|e| format!("not a JWKS: {e}"))?;
    let mut keys = Vec::new();
    for jwk in &set.keys {
        if jwk
            .common
            .public_key_use
            .as_ref()
            .is_some_and(|u| !matches!(u, jsonwebtoken::jwk::PublicKeyUse::Signature))
        {
            continue;
        }
        let algorithms = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => vec![
                Algorithm::RS256,
                Algorithm::RS384,
                Algorithm::RS512,
                Algorithm::PS256,
                Algorithm::PS384,
                Algorithm::PS512,
            ],
            AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
                EllipticCurve::P256 => vec![Algorithm::ES256],
                EllipticCurve::P384 => vec![Algorithm::ES384],
                _ => continue,
            },
            AlgorithmParameters::OctetKeyPair(_) => vec![Algorithm::EdDSA],
            // Symmetric keys have no place in a public key set.
            AlgorithmParameters::OctetKey(_) => continue,
        };
        // A key that names its algorithm is used with that one only.
        let algorithms = match jwk.common.key_algorithm.map(|a| a.to_string()) {
            Some(named) => algorithms
                .into_iter()
                .filter(|a| format!("{a:?}") == named)
                .collect(),
            None => algorithms,
        };
        if algorithms.is_empty() {
            continue;
        }
        let key = DecodingKey::from_jwk(jwk).map_err(|e| format!("bad key: {e}"))?;
        keys.push(Key {
            kid: jwk.common.key_id.clone(),
            algorithms,
            key,
        });
    }
    if keys.is_empty() {
        return Err("no usable signing key (RSA, EC P-256/P-384 or Ed25519)".into());
    }
    Ok(keys)
}

/// GET `url`, at most [`MAX_JWKS_BYTES`].
async fn fetch(url: &str) -> Result<Vec<u8>, String> {
    let client = reqwest::Client::builder()
        .timeout(FETCH_TIMEOUT)
        .build()
        .map_err(|e| format!("HTTP client: {e}"))?;
    let mut response = client
        .get(url)
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .map_err(|e| format!("cannot fetch JWKS {url}: {e}"))?;
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| format!("cannot fetch JWKS {url}: {e}"))?
    {
        body.extend_from_slice(&chunk);
        if body.len() > MAX_JWKS_BYTES {
            return Err(format!("JWKS {url} is over {MAX_JWKS_BYTES} bytes"));
        }
    }
    Ok(body)
}

/// The token of an OAUTHBEARER client message (RFC 7628 §3.1):
/// `n,[a=authzid],` `\x01auth=Bearer <token>\x01` (other key=value pairs,
/// extensions, may follow) `\x01`.
pub fn parse_client_message(message: &[u8]) -> Result<&str, String> {
    if message.len() > MAX_MESSAGE_BYTES {
        return Err("OAUTHBEARER message too long".into());
    }
    let text = std::str::from_utf8(message).map_err(|_| "OAUTHBEARER message is not UTF-8")?;
    let (gs2, rest) = text
        .split_once('\u{1}')
        .ok_or("malformed OAUTHBEARER message")?;
    if !(gs2.starts_with("n,") || gs2.starts_with("y,")) {
        return Err("malformed OAUTHBEARER GS2 header".into());
    }
    let rest = rest
        .strip_suffix("\u{1}\u{1}")
        .ok_or("malformed OAUTHBEARER message")?;
    for pair in rest.split('\u{1}') {
        if let Some(value) = pair.strip_prefix("auth=") {
            let (scheme, token) = value.split_once(' ').ok_or("malformed auth value")?;
            if !scheme.eq_ignore_ascii_case("Bearer") || token.trim().is_empty() {
                return Err("the auth value is not a bearer token".into());
            }
            return Ok(token.trim());
        }
    }
    Err("no auth=Bearer in the OAUTHBEARER message".into())
}

struct Refresh(Arc<Keys>);

#[async_trait]
impl Background for Refresh {
    type Event = ();

    fn first(&self) -> Tick {
        Tick::In(self.interval())
    }

    async fn tick(&mut self) -> Tick {
        if let Err(e) = self.0.load().await {
            tracing::warn!(error = %e, "reloading the OAUTHBEARER keys failed; the last ones stay in force");
        }
        Tick::In(self.interval())
    }
}

impl Refresh {
    fn interval(&self) -> Duration {
        match &self.0.config {
            Some(c) if c.is_url() => URL_REFRESH,
            _ => FILE_REFRESH,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_messages() {
        let ok = b"n,,\x01auth=Bearer abc.def.ghi\x01\x01";
        assert_eq!(parse_client_message(ok).expect("valid"), "abc.def.ghi");
        let with_ext = b"n,a=alice,\x01host=x\x01auth=Bearer t.t.t\x01logicalCluster=c\x01\x01";
        assert_eq!(parse_client_message(with_ext).expect("valid"), "t.t.t");
        for bad in [
            &b"auth=Bearer x"[..],
            b"n,,\x01auth=Basic x\x01\x01",
            b"n,,\x01auth=Bearer x\x01",
            b"p,,\x01auth=Bearer x\x01\x01",
            b"n,,\x01host=x\x01\x01",
        ] {
            assert!(parse_client_message(bad).is_err(), "{bad:?}");
        }
        assert!(parse_client_message(&vec![b'n'; MAX_MESSAGE_BYTES + 1]).is_err());
    }

    /// An EC P-256 key pair: (PKCS#8 DER of the private key, JWKS of the
    /// public key with `kid`).
    fn key_pair(kid: &str) -> (Vec<u8>, String) {
        use aws_lc_rs::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
        use base64::Engine;
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let pkcs8 =
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).expect("generate");
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref())
            .expect("parse");
        let point = pair.public_key().as_ref();
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        let jwks = format!(
            r#"{{"keys":[{{"kty":"EC","crv":"P-256","kid":"{kid}","use":"sig","x":"{}","y":"{}"}}]}}"#,
            b64(&point[1..33]),
            b64(&point[33..65])
        );
        (pkcs8.as_ref().to_vec(), jwks)
    }

    fn sign(pkcs8: &[u8], kid: &str, claims: serde_json::Value) -> String {
        let mut header = jsonwebtoken::Header::new(Algorithm::ES256);
        header.kid = Some(kid.into());
        jsonwebtoken::encode(
            &header,
            &claims,
            &jsonwebtoken::EncodingKey::from_ec_der(pkcs8),
        )
        .expect("sign")
    }

    #[tokio::test]
    async fn tokens_are_checked_against_the_key_set() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (private, jwks) = key_pair("k1");
        let (other_private, _) = key_pair("k1");
        let path = dir.path().join("jwks.json");
        std::fs::write(&path, &jwks).expect("write");
        let mut config = OAuthConfig::new(path.to_str().expect("utf-8"));
        config.issuer = Some("https://idp.example".into());
        config.audience = vec!["tributary".into()];
        let keys = Keys::new(Some(config));
        assert!(keys.load().await.expect("load"));
        assert!(
            !keys.load().await.expect("unchanged"),
            "an unchanged file is not re-read"
        );

        let now = SystemTime::now();
        let now_s = now.duration_since(UNIX_EPOCH).expect("clock").as_secs() as i64;
        let claims = |exp: i64, aud: &str, iss: &str| serde_json::json!({"sub": "alice", "exp": exp, "aud": aud, "iss": iss});
        let good = sign(
            &private,
            "k1",
            claims(now_s + 600, "tributary", "https://idp.example"),
        );
        let verified = keys.verify_at(&good, now).expect("a good token");
        assert_eq!(verified.name, "alice");
        assert_eq!(verified.expires_at_ms, (now_s + 600) * 1000);

        let refused = |token: &str| keys.verify_at(token, now).expect_err("refused");
        let expired = sign(
            &private,
            "k1",
            claims(now_s - 120, "tributary", "https://idp.example"),
        );
        assert!(refused(&expired).contains("expired"));
        let within_skew = sign(
            &private,
            "k1",
            claims(now_s - 10, "tributary", "https://idp.example"),
        );
        assert!(
            keys.verify_at(&within_skew, now).is_ok(),
            "clock skew allowance"
        );
        let wrong_aud = sign(
            &private,
            "k1",
            claims(now_s + 600, "other", "https://idp.example"),
        );
        assert!(refused(&wrong_aud).contains("refused"));
        let wrong_iss = sign(
            &private,
            "k1",
            claims(now_s + 600, "tributary", "https://evil"),
        );
        assert!(refused(&wrong_iss).contains("refused"));
        let forged = sign(
            &other_private,
            "k1",
            claims(now_s + 600, "tributary", "https://idp.example"),
        );
        assert!(refused(&forged).contains("refused"));
        let unknown_kid = sign(
            &private,
            "k2",
            claims(now_s + 600, "tributary", "https://idp.example"),
        );
        assert!(refused(&unknown_kid).contains("no key"));
        let no_sub = sign(
            &private,
            "k1",
            serde_json::json!({"exp": now_s + 600, "aud": "tributary", "iss": "https://idp.example"}),
        );
        assert!(refused(&no_sub).contains("sub"));
        // An unsigned token (alg none), and HMAC with the public key as
        // the secret, are refused.
        let b64 = |s: &str| {
            use base64::Engine;
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
        };
        let payload = b64(&claims(now_s + 600, "tributary", "https://idp.example").to_string());
        let none = format!("{}.{payload}.", b64(r#"{"alg":"none","kid":"k1"}"#));
        assert!(keys.verify_at(&none, now).is_err());
        let hs = jsonwebtoken::encode(
            &jsonwebtoken::Header {
                kid: Some("k1".into()),
                ..jsonwebtoken::Header::new(Algorithm::HS256)
            },
            &claims(now_s + 600, "tributary", "https://idp.example"),
            &jsonwebtoken::EncodingKey::from_secret(jwks.as_bytes()),
        )
        .expect("sign");
        assert!(refused(&hs).contains("does not fit"));

        // Rotation: a new key set in the file replaces the old one.
        let (rotated, rotated_jwks) = key_pair("k2");
        std::thread::sleep(Duration::from_millis(20));
        std::fs::write(&path, rotated_jwks).expect("rewrite");
        let later = SystemTime::now() + Duration::from_secs(1);
        filetime_touch(&path, later);
        assert!(keys.load().await.expect("reload"));
        let new_token = sign(
            &rotated,
            "k2",
            claims(now_s + 600, "tributary", "https://idp.example"),
        );
        assert!(keys.verify_at(&new_token, now).is_ok());
        assert!(keys.verify_at(&good, now).is_err(), "the old key is gone");
    }

    /// Set a file's modification time (coarse file systems may not move it
    /// between two quick writes).
    fn filetime_touch(path: &std::path::Path, when: SystemTime) {
        let file = std::fs::File::options()
            .write(true)
            .open(path)
            .expect("open");
        file.set_modified(when).expect("set mtime");
    }

    #[test]
    fn symmetric_keys_are_not_used() {
        let jwks = br#"{"keys":[{"kty":"oct","k":"c2VjcmV0","kid":"h"}]}"#;
        assert!(parse_jwks(jwks).is_err());
    }
}
