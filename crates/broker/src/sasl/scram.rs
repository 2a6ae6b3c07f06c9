//! SCRAM-SHA-256 and SCRAM-SHA-512 (RFC 5802, RFC 7677) as Kafka clients
//! speak them (KIP-84): the server side of one exchange, and the
//! credential kept for a user (salt, iteration count, `StoredKey`,
//! `ServerKey`; never the password).
//!
//! The exchange is two round trips: client-first (`n,,n=<user>,r=<nonce>`)
//! is answered with server-first (`r=<nonce+ours>,s=<salt>,i=<iterations>`),
//! client-final (`c=biws,r=<nonce>,p=<proof>`) with server-final
//! (`v=<signature>`) when the proof holds. A user without a credential
//! gets a made-up salt and fails at the proof, like a wrong password, so
//! the exchange does not tell which users exist. Channel binding and
//! extensions (delegation tokens) are refused.

use std::num::NonZeroU32;

use aws_lc_rs::{constant_time, digest, hmac, pbkdf2, rand};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use tributary_meta::ScramCredential;

/// Fewest iterations a credential may have (Kafka's minimum).
pub const MIN_ITERATIONS: i32 = 4096;
/// Most iterations a credential may have (Kafka's maximum; each login
/// costs the broker nothing extra, but `PLAIN` logins derive it).
pub const MAX_ITERATIONS: i32 = 16384;
/// Longest client message accepted (a user name, a nonce, a proof).
const MAX_MESSAGE: usize = 4096;

/// A SCRAM hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mechanism {
    Sha256,
    Sha512,
}

impl Mechanism {
    /// Both, in the order the broker prefers.
    pub const ALL: [Mechanism; 2] = [Mechanism::Sha512, Mechanism::Sha256];

    pub fn name(self) -> &'static str {
        match self {
            Mechanism::Sha256 => "SCRAM-SHA-256",
            Mechanism::Sha512 => "SCRAM-SHA-512",
        }
    }

    pub fn parse(name: &str) -> Option<Mechanism> {
        Self::ALL.into_iter().find(|m| m.name() == name)
    }

    /// Kafka's `ScramMechanism` id in the admin APIs (1: SHA-256, 2: SHA-512).
    pub fn kafka_id(self) -> i8 {
        match self {
            Mechanism::Sha256 => 1,
            Mechanism::Sha512 => 2,
        }
    }

    pub fn from_kafka_id(id: i8) -> Option<Mechanism> {
        Self::ALL.into_iter().find(|m| m.kafka_id() == id)
    }

    fn hmac(self) -> hmac::Algorithm {
        match self {
            Mechanism::Sha256 => hmac::HMAC_SHA256,
            Mechanism::Sha512 => hmac::HMAC_SHA512,
        }
    }

    fn digest(self) -> &'static digest::Algorithm {
        match self {
            Mechanism::Sha256 => &digest::SHA256,
            Mechanism::Sha512 => &digest::SHA512,
        }
    }

    fn pbkdf2(self) -> pbkdf2::Algorithm {
        match self {
            Mechanism::Sha256 => pbkdf2::PBKDF2_HMAC_SHA256,
            Mechanism::Sha512 => pbkdf2::PBKDF2_HMAC_SHA512,
        }
    }

    fn len(self) -> usize {
        self.digest().output_len()
    }
}

fn hmac(m: Mechanism, key: &[u8], data: &[u8]) -> Vec<u8> {
    hmac::sign(&hmac::Key::new(m.hmac(), key), data)
        .as_ref()
        .to_vec()
}

fn random(n: usize) -> Vec<u8> {
    let mut out = vec![0; n];
    // The OS random source failing is not something to carry on from.
    rand::fill(&mut out).expect("system random source");
    out
}

/// `Hi(password, salt, iterations)`: PBKDF2 with the mechanism's HMAC.
pub fn salted_password(m: Mechanism, password: &[u8], salt: &[u8], iterations: i32) -> Vec<u8> {
    let mut out = vec![0; m.len()];
    let iterations = NonZeroU32::new(iterations.max(1) as u32).unwrap_or(NonZeroU32::MIN);
    pbkdf2::derive(m.pbkdf2(), iterations, salt, password, &mut out);
    out
}

/// The credential for a salted password (AlterUserScramCredentials sends
/// the salt and the salted password, never the password).
pub fn credential_from_salted(
    m: Mechanism,
    salt: &[u8],
    salted: &[u8],
    iterations: i32,
) -> ScramCredential {
    let client_key = hmac(m, salted, b"Client Key");
    ScramCredential {
        mechanism: m.name().to_owned(),
        salt: salt.to_vec(),
        stored_key: digest::digest(m.digest(), &client_key).as_ref().to_vec(),
        server_key: hmac(m, salted, b"Server Key"),
        iterations,
    }
}

/// A credential for `password` with a fresh random salt.
pub fn credential_from_password(m: Mechanism, password: &str, iterations: i32) -> ScramCredential {
    let salt = random(32);
    let salted = salted_password(m, password.as_bytes(), &salt, iterations);
    credential_from_salted(m, &salt, &salted, iterations)
}

/// Whether `password` matches `credential` (for SASL/PLAIN), in constant
/// time.
pub fn password_matches(credential: &ScramCredential, password: &str) -> bool {
    let Some(m) = Mechanism::parse(&credential.mechanism) else {
        return false;
    };
    let salted = salted_password(
        m,
        password.as_bytes(),
        &credential.salt,
        credential.iterations,
    );
    let derived = credential_from_salted(m, &credential.salt, &salted, credential.iterations);
    constant_time::verify_slices_are_equal(&derived.stored_key, &credential.stored_key).is_ok()
}

/// What the client's first message says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientFirst {
    /// The user (`=2C` and `=3D` unescaped).
    pub user: String,
    nonce: String,
    /// The message without its GS2 header (part of the signed text).
    bare: String,
    /// The GS2 header (`n,,`), which client-final repeats as `c=`.
    gs2: String,
}

/// Parse client-first. `Err` says what is wrong with it.
pub fn parse_client_first(message: &[u8]) -> Result<ClientFirst, String> {
    if message.len() > MAX_MESSAGE {
        return Err("SCRAM client-first message too long".into());
    }
    let text = std::str::from_utf8(message).map_err(|_| "SCRAM message is not UTF-8")?;
    let mut parts = text.splitn(3, ',');
    let (flag, authzid, bare) = match (parts.next(), parts.next(), parts.next()) {
        (Some(f), Some(a), Some(b)) => (f, a, b),
        _ => return Err("malformed SCRAM client-first message".into()),
    };
    match flag {
        "n" | "y" => {}
        f if f.starts_with("p=") => return Err("SCRAM channel binding is not supported".into()),
        _ => return Err("malformed SCRAM GS2 header".into()),
    }
    let mut user = None;
    let mut nonce = None;
    for attr in bare.split(',') {
        match attr.split_once('=') {
            Some(("n", v)) => user = Some(unescape(v)?),
            Some(("r", v)) => nonce = Some(v.to_owned()),
            Some(("m", _)) => return Err("SCRAM mandatory extensions are not supported".into()),
            // Kafka's `tokenauth` extension (delegation tokens) and others.
            Some((k, _)) if k.len() > 1 => {
                return Err(format!("SCRAM extension {k} is not supported"));
            }
            _ => return Err("malformed SCRAM client-first message".into()),
        }
    }
    let user = user.ok_or("SCRAM client-first message has no user")?;
    let nonce = nonce.ok_or("SCRAM client-first message has no nonce")?;
    if user.is_empty()
        || nonce.is_empty()
        || !nonce
            .bytes()
            .all(|b| (0x21..=0x7e).contains(&b) && b != b',')
    {
        return Err("malformed SCRAM user or nonce".into());
    }
    if let Some(authz) = authzid.strip_prefix("a=") {
        if unescape(authz)? != user {
            return Err("SCRAM authorization id differs from the user".into());
        }
    } else if !authzid.is_empty() {
        return Err("malformed SCRAM GS2 header".into());
    }
    Ok(ClientFirst {
        user,
        nonce,
        bare: bare.to_owned(),
        gs2: format!("{flag},{authzid},"),
    })
}

fn unescape(name: &str) -> Result<String, String> {
    let mut out = String::with_capacity(name.len());
    let mut rest = name;
    while let Some(i) = rest.find('=') {
        out.push_str(&rest[..i]);
        match rest.get(i..i + 3) {
            Some("=2C") => out.push(','),
            Some("=3D") => out.push('='),
            _ => return Err("malformed SCRAM user name escape".into()),
        }
        rest = &rest[i + 3..];
    }
    out.push_str(rest);
    Ok(out)
}

/// The server's side of one exchange after client-first: knows the
/// credential (or a decoy) and checks client-final.
pub struct ScramServer {
    mechanism: Mechanism,
    first: ClientFirst,
    credential: ScramCredential,
    /// Whether the user has no credential (the decoy always fails).
    decoy: bool,
    server_first: String,
    nonce: String,
}

impl std::fmt::Debug for ScramServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScramServer")
            .field("mechanism", &self.mechanism)
            .field("user", &self.first.user)
            .finish_non_exhaustive()
    }
}

impl ScramServer {
    /// Answer `first` for a user whose credential is `credential` (`None`:
    /// unknown user). Returns the server and server-first.
    pub fn start(
        mechanism: Mechanism,
        first: ClientFirst,
        credential: Option<ScramCredential>,
    ) -> (ScramServer, Vec<u8>) {
        let ours = B64.encode(random(24));
        Self::start_with_nonce(mechanism, first, credential, &ours)
    }

    fn start_with_nonce(
        mechanism: Mechanism,
        first: ClientFirst,
        credential: Option<ScramCredential>,
        ours: &str,
    ) -> (ScramServer, Vec<u8>) {
        let decoy = credential.is_none();
        let credential = credential.unwrap_or_else(|| ScramCredential {
            mechanism: mechanism.name().to_owned(),
            salt: random(32),
            stored_key: random(mechanism.len()),
            server_key: random(mechanism.len()),
            iterations: MIN_ITERATIONS,
        });
        let nonce = format!("{}{ours}", first.nonce);
        let server_first = format!(
            "r={nonce},s={},i={}",
            B64.encode(&credential.salt),
            credential.iterations
        );
        let reply = server_first.clone().into_bytes();
        (
            ScramServer {
                mechanism,
                first,
                credential,
                decoy,
                server_first,
                nonce,
            },
            reply,
        )
    }

    /// The user this exchange is for.
    /// The SCRAM variant of this exchange.
    pub fn mechanism(&self) -> Mechanism {
        self.mechanism
    }

    pub fn user(&self) -> &str {
        &self.first.user
    }

    /// Check client-final: `Ok(server-final)` when the proof holds.
    pub fn finish(self, message: &[u8]) -> Result<Vec<u8>, String> {
        const FAILED: &str = "invalid credentials";
        if message.len() > MAX_MESSAGE {
            return Err("SCRAM client-final message too long".into());
        }
        let text = std::str::from_utf8(message).map_err(|_| "SCRAM message is not UTF-8")?;
        let (without_proof, proof) = text
            .rsplit_once(",p=")
            .ok_or("SCRAM client-final message has no proof")?;
        let mut channel = None;
        let mut nonce = None;
        for attr in without_proof.split(',') {
            match attr.split_once('=') {
                Some(("c", v)) => channel = Some(v),
                Some(("r", v)) => nonce = Some(v),
                _ => return Err("malformed SCRAM client-final message".into()),
            }
        }
        let expected_channel = B64.encode(self.first.gs2.as_bytes());
        if channel != Some(expected_channel.as_str()) {
            return Err("SCRAM channel binding does not match".into());
        }
        // Kafka accepts a nonce that *ends* with the combined one, and
        // librdkafka (at least 2.0-2.3, Debian's kcat among them) sends its
        // own nonce again in front of it; the server's part must still be
        // there, so a replayed exchange cannot pass.
        if !nonce.is_some_and(|n| n.ends_with(self.nonce.as_str())) {
            return Err("SCRAM nonce does not match".into());
        }
        let proof = B64.decode(proof).map_err(|_| "SCRAM proof is not base64")?;
        let m = self.mechanism;
        let auth = format!("{},{},{without_proof}", self.first.bare, self.server_first);
        let client_signature = hmac(m, &self.credential.stored_key, auth.as_bytes());
        if proof.len() != client_signature.len() || self.decoy {
            return Err(FAILED.into());
        }
        let client_key: Vec<u8> = proof
            .iter()
            .zip(&client_signature)
            .map(|(p, s)| p ^ s)
            .collect();
        let stored = digest::digest(m.digest(), &client_key);
        if constant_time::verify_slices_are_equal(stored.as_ref(), &self.credential.stored_key)
            .is_err()
        {
            return Err(FAILED.into());
        }
        let server_signature = hmac(m, &self.credential.server_key, auth.as_bytes());
        Ok(format!("v={}", B64.encode(server_signature)).into_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example exchange of RFC 7677, section 3.
    #[test]
    fn rfc7677_exchange() {
        let m = Mechanism::Sha256;
        let salt = B64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").expect("salt");
        let salted = salted_password(m, b"pencil", &salt, 4096);
        let credential = credential_from_salted(m, &salt, &salted, 4096);
        let first = parse_client_first(b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO").expect("first");
        assert_eq!(first.user, "user");
        let (server, reply) = ScramServer::start_with_nonce(
            m,
            first,
            Some(credential.clone()),
            "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0",
        );
        assert_eq!(
            String::from_utf8(reply).expect("utf-8"),
            "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
        );
        let last = server
            .finish(b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=")
            .expect("proof holds");
        assert_eq!(
            String::from_utf8(last).expect("utf-8"),
            "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
        );
        assert!(password_matches(&credential, "pencil"));
        assert!(!password_matches(&credential, "pencil2"));
    }

    #[test]
    fn wrong_proof_unknown_user_and_bad_messages_fail() {
        let m = Mechanism::Sha512;
        let credential = credential_from_password(m, "secret", 4096);
        let first = parse_client_first(b"n,,n=alice,r=abc").expect("first");
        let (server, _) = ScramServer::start(m, first.clone(), Some(credential));
        let nonce = server.nonce.clone();
        let bad = format!("c=biws,r={nonce},p={}", B64.encode([0u8; 64]));
        assert_eq!(
            server.finish(bad.as_bytes()),
            Err("invalid credentials".into())
        );
        // Unknown user: same answer, same shape of exchange.
        let (server, reply) = ScramServer::start(m, first, None);
        assert!(String::from_utf8(reply).expect("utf-8").contains(",i=4096"));
        let nonce = server.nonce.clone();
        let bad = format!("c=biws,r={nonce},p={}", B64.encode([0u8; 64]));
        assert_eq!(
            server.finish(bad.as_bytes()),
            Err("invalid credentials".into())
        );

        for msg in [
            &b"p=tls-unique,,n=a,r=b"[..],
            b"n,,n=a",
            b"n,,r=b",
            b"x,,n=a,r=b",
            b"n,,n=a,r=b,tokenauth=true",
            b"n,a=b,n=a,r=b",
            b"n,,n=a=4,r=b",
            b"\xff",
        ] {
            assert!(parse_client_first(msg).is_err(), "{msg:?}");
        }
        // librdkafka 2.0-2.3 repeats its nonce in front of the combined one.
        let credential = credential_from_password(Mechanism::Sha256, "pw", 4096);
        let first = parse_client_first(b"n,,n=u,r=cn").expect("first");
        let (server, _) = ScramServer::start(Mechanism::Sha256, first, Some(credential));
        let wrong_nonce = format!(
            "c=biws,r=cnXX{},p={}",
            &server.nonce[2..],
            B64.encode([0u8; 32])
        );
        assert_eq!(
            server.finish(wrong_nonce.as_bytes()),
            Err("SCRAM nonce does not match".into())
        );
        let escaped = parse_client_first(b"n,,n=a=2Cb=3Dc,r=x").expect("escaped");
        assert_eq!(escaped.user, "a,b=c");
    }
}
