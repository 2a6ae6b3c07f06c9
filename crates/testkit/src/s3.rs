//! A local S3 endpoint (`moto_server`) child process for end-to-end tests.
//!
//! Contract:
//! - the binary is `$TRIBUTARY_MOTO_SERVER`, else `$TRIBUTARY_VENV/bin/moto_server`
//!   (scripts/test.sh exports the venv it built), else `moto_server` on
//!   `PATH`; if none exists, [`S3Server::start`] fails saying so (tests that
//!   need S3 fail, they do not skip);
//! - it listens on `127.0.0.1:<free port>`; start returns once the port
//!   answers HTTP (bounded by [`S3_READY_TIMEOUT`]) or fails with the log tail;
//! - nothing global is set: brokers get credentials through their own
//!   environment ([`S3_TEST_ENV`]);
//! - dropping the handle kills the process (`SIGKILL`) and reaps it.
//!
//! Buckets can be created and listed with plain unsigned HTTP
//! ([`S3Server::create_bucket`], [`S3Server::list_keys`]); moto accepts
//! unsigned requests unless started with IAM auth on
//! (`INITIAL_NO_AUTH_ACTION_COUNT=0`, see [`S3Server::start_with_env`]).

use std::ffi::OsString;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tempfile::TempDir;

use crate::broker::free_port;

/// How long [`S3Server::start`] waits for moto to answer.
pub const S3_READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Region every test URL names.
pub const S3_TEST_REGION: &str = "us-east-1";

/// Environment a `tributary` process needs to talk to the test server
/// (moto accepts any credentials unless IAM auth is on).
pub const S3_TEST_ENV: &[(&str, &str)] = &[
    ("AWS_ACCESS_KEY_ID", "test"),
    ("AWS_SECRET_ACCESS_KEY", "test"),
    ("AWS_REGION", S3_TEST_REGION),
    // Keep the AWS SDK from probing the EC2 metadata endpoint.
    ("AWS_EC2_METADATA_DISABLED", "true"),
];

/// A running `moto_server`.
#[derive(Debug)]
pub struct S3Server {
    child: Option<Child>,
    port: u16,
    log_path: PathBuf,
    // Declared last so the process is gone before the log dir is deleted.
    _dir: TempDir,
}

/// Finds the `moto_server` binary (see the module docs for the order).
pub fn moto_server_bin() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("TRIBUTARY_MOTO_SERVER") {
        let path = PathBuf::from(path);
        if !path.is_file() {
            bail!("TRIBUTARY_MOTO_SERVER={} does not exist", path.display());
        }
        return Ok(path);
    }
    if let Some(venv) = std::env::var_os("TRIBUTARY_VENV") {
        let path = PathBuf::from(venv).join("bin").join("moto_server");
        if !path.is_file() {
            bail!(
                "TRIBUTARY_VENV is set but {} does not exist (is moto[server] in tests/python/requirements.txt installed?)",
                path.display()
            );
        }
        return Ok(path);
    }
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .map(|dir| dir.join("moto_server"))
        .find(|path| path.is_file());
    match on_path {
        Some(path) => Ok(path),
        None => bail!(
            "moto_server not found: the S3 tests need it. Run ./scripts/test.sh (it builds the \
             venv and exports TRIBUTARY_VENV), or set TRIBUTARY_VENV=~/.cache/tributary/venv-<hash> \
             or TRIBUTARY_MOTO_SERVER=/path/to/moto_server"
        ),
    }
}

impl S3Server {
    /// Starts moto with default settings (any credentials accepted).
    pub fn start() -> Result<Self> {
        Self::start_with_env(&[] as &[(&str, &str)])
    }

    /// Starts moto with extra environment, e.g.
    /// `[("INITIAL_NO_AUTH_ACTION_COUNT", "0")]` to make it check credentials
    /// (then only keys created through its IAM API are accepted).
    pub fn start_with_env<K, V>(envs: &[(K, V)]) -> Result<Self>
    where
        K: Into<OsString> + Clone,
        V: Into<OsString> + Clone,
    {
        let bin = moto_server_bin()?;
        let dir = tempfile::Builder::new()
            .prefix("tributary-moto-")
            .tempdir()
            .context("create moto temp dir")?;
        let log_path = dir.path().join("moto.log");
        let log = std::fs::File::create(&log_path)
            .with_context(|| format!("create {}", log_path.display()))?;
        let port = free_port()?;
        let mut cmd = Command::new(&bin);
        cmd.arg("-H")
            .arg("127.0.0.1")
            .arg("-p")
            .arg(port.to_string())
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().context("clone log handle")?)
            .stderr(log);
        for (key, value) in envs {
            cmd.env(key.clone().into(), value.clone().into());
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("spawn {}", bin.display()))?;
        let mut server = S3Server {
            child: Some(child),
            port,
            log_path,
            _dir: dir,
        };
        server.wait_ready()?;
        Ok(server)
    }

    fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + S3_READY_TIMEOUT;
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child.try_wait().context("poll moto_server")? {
                    self.child = None;
                    bail!(
                        "moto_server exited before answering status={status}\n{}",
                        self.logs()
                    );
                }
            }
            // Any HTTP answer means the server is serving.
            if let Ok((status, _)) = self.http("GET", "/", &[]) {
                if status > 0 {
                    return Ok(());
                }
            }
            if Instant::now() >= deadline {
                self.kill();
                bail!(
                    "moto_server did not answer on {} within {S3_READY_TIMEOUT:?}\n{}",
                    self.endpoint(),
                    self.logs()
                );
            }
            sleep(Duration::from_millis(100));
        }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The object-store URL for `bucket` and `prefix` on this server.
    pub fn url(&self, bucket: &str, prefix: &str) -> String {
        format!(
            "s3://{bucket}/{prefix}?endpoint={}&path_style=true&region={S3_TEST_REGION}",
            self.endpoint()
        )
    }

    /// Everything moto wrote to stdout/stderr.
    pub fn logs(&self) -> String {
        match std::fs::read(&self.log_path) {
            Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
            Err(e) => format!("<cannot read {}: {e}>", self.log_path.display()),
        }
    }

    /// Creates a bucket with an unsigned `PUT /<bucket>` (moto without auth
    /// accepts it). `tributary init --create-bucket` is the signed way.
    pub fn create_bucket(&self, name: &str) -> Result<()> {
        let (status, body) = self.http("PUT", &format!("/{name}"), &[])?;
        if status != 200 {
            bail!("create bucket {name}: HTTP {status}: {body}");
        }
        Ok(())
    }

    /// Every key in `bucket` under `prefix`, sorted (ListObjectsV2, unsigned,
    /// following continuation tokens).
    /// Delete an empty bucket (unsigned).
    pub fn delete_bucket(&self, name: &str) -> Result<()> {
        let (status, body) = self.http("DELETE", &format!("/{name}"), &[])?;
        if status != 204 && status != 200 {
            bail!("delete bucket {name}: HTTP {status}: {body}");
        }
        Ok(())
    }

    pub fn list_keys(&self, bucket: &str, prefix: &str) -> Result<Vec<String>> {
        let mut keys = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut path = format!("/{bucket}?list-type=2&prefix={}", url_encode(prefix));
            if let Some(t) = &token {
                path.push_str(&format!("&continuation-token={}", url_encode(t)));
            }
            let (status, body) = self.http("GET", &path, &[])?;
            if status != 200 {
                bail!("list {bucket}/{prefix}: HTTP {status}: {body}");
            }
            keys.extend(xml_values(&body, "Key"));
            token = xml_values(&body, "NextContinuationToken")
                .into_iter()
                .next();
            if token.is_none() {
                break;
            }
        }
        keys.sort();
        Ok(keys)
    }

    /// One HTTP/1.1 request with `Connection: close`; returns status and body.
    fn http(&self, method: &str, path: &str, body: &[u8]) -> Result<(u16, String)> {
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
            .with_context(|| format!("connect {addr}"))?;
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .context("set read timeout")?;
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            self.port,
            body.len()
        );
        stream.write_all(head.as_bytes()).context("send request")?;
        stream.write_all(body).context("send body")?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).context("read response")?;
        let text = String::from_utf8_lossy(&raw).into_owned();
        let status = text
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse::<u16>().ok())
            .with_context(|| format!("bad HTTP response: {text:.200}"))?;
        let body = match text.split_once("\r\n\r\n") {
            Some((head, body))
                if head
                    .to_ascii_lowercase()
                    .contains("transfer-encoding: chunked") =>
            {
                dechunk(body)
            }
            Some((_, body)) => body.to_string(),
            None => String::new(),
        };
        Ok((status, body))
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.kill();
    }
}

fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Text of every `<tag>…</tag>` in `xml`, with the five XML entities decoded.
fn xml_values(xml: &str, tag: &str) -> Vec<String> {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    let mut out = Vec::new();
    let mut rest = xml;
    while let Some(start) = rest.find(&open) {
        let after = &rest[start + open.len()..];
        let Some(end) = after.find(&close) else {
            break;
        };
        out.push(
            after[..end]
                .replace("&lt;", "<")
                .replace("&gt;", ">")
                .replace("&quot;", "\"")
                .replace("&apos;", "'")
                .replace("&amp;", "&"),
        );
        rest = &after[end + close.len()..];
    }
    out
}

/// Decodes a chunked transfer-encoded body (sizes in hex, CRLF separated).
fn dechunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, after)) = rest.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || after.len() < n {
            break;
        }
        out.push_str(&after[..n]);
        rest = after[n..].trim_start_matches("\r\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_xml_keys_and_chunks() {
        let xml = "<R><Contents><Key>a/b&amp;c</Key></Contents><Contents><Key>d</Key></Contents>\
                   <NextContinuationToken>t1</NextContinuationToken></R>";
        assert_eq!(xml_values(xml, "Key"), vec!["a/b&c", "d"]);
        assert_eq!(xml_values(xml, "NextContinuationToken"), vec!["t1"]);
        assert_eq!(dechunk("3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"), "abcde");
        assert_eq!(url_encode("a b/c"), "a%20b/c");
    }
}
