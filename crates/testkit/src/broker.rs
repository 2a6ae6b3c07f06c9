//! A `tributary serve` child process for end-to-end tests.
//!
//! Contract:
//! - the broker listens on `127.0.0.1:<port>`; the port is picked by binding
//!   `127.0.0.1:0` and kept across restarts;
//! - the data directory is a [`TempDir`] owned by the [`BrokerProcess`] unless
//!   the caller supplies one, and survives restarts;
//! - stdout and stderr of every run are appended to `broker-stderr.log` in the
//!   data directory, readable with [`BrokerProcess::logs`];
//! - start and restart return only once the port accepts TCP connections
//!   (bounded by the ready timeout), or fail with the log tail;
//! - dropping the handle kills the process (`SIGKILL`) and reaps it.

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tempfile::TempDir;

/// How long [`BrokerProcess`] waits for the port to accept connections, and
/// for the process to exit after `SIGTERM`.
pub const DEFAULT_READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Name of the log file (stdout + stderr of every run) inside the data dir.
const LOG_FILE: &str = "broker-stderr.log";

/// Returns a port on 127.0.0.1 that was free a moment ago.
///
/// The listener is dropped before returning, so another process may grab the
/// port in between; tests accept that small race.
pub fn free_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("bind 127.0.0.1:0")?;
    Ok(listener.local_addr().context("local addr")?.port())
}

#[derive(Debug)]
enum DataDir {
    Owned(TempDir),
    Given(PathBuf),
}

impl DataDir {
    fn path(&self) -> &Path {
        match self {
            DataDir::Owned(dir) => dir.path(),
            DataDir::Given(path) => path,
        }
    }
}

/// Configures a [`BrokerProcess`] before it starts.
#[derive(Debug)]
pub struct BrokerBuilder {
    bin: PathBuf,
    data_dir: Option<PathBuf>,
    port: Option<u16>,
    args: Vec<OsString>,
    envs: Vec<(OsString, OsString)>,
    ready_timeout: Duration,
}

impl BrokerBuilder {
    /// Uses this data directory instead of a fresh temporary one. The caller
    /// owns it: it is not deleted when the broker is dropped.
    pub fn data_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.data_dir = Some(dir.into());
        self
    }

    /// Listens on this port instead of a free one picked at start.
    pub fn port(mut self, port: u16) -> Self {
        self.port = Some(port);
        self
    }

    /// Appends one argument after `serve --listen .. --data-dir ..`.
    pub fn arg(mut self, arg: impl Into<OsString>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// Appends arguments after `serve --listen .. --data-dir ..`.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Sets an environment variable for the broker (e.g. `RUST_LOG`).
    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.envs.push((key.into(), value.into()));
        self
    }

    /// Bounds the wait for the port to accept connections.
    pub fn ready_timeout(mut self, timeout: Duration) -> Self {
        self.ready_timeout = timeout;
        self
    }

    /// Spawns the broker and waits until its port accepts TCP connections.
    pub fn start(self) -> Result<BrokerProcess> {
        let data = match self.data_dir {
            Some(path) => {
                std::fs::create_dir_all(&path)
                    .with_context(|| format!("create data dir {}", path.display()))?;
                DataDir::Given(path)
            }
            None => DataDir::Owned(
                tempfile::Builder::new()
                    .prefix("tributary-test-")
                    .tempdir()
                    .context("create temp data dir")?,
            ),
        };
        let port = match self.port {
            Some(port) => port,
            None => free_port()?,
        };
        let log_path = data.path().join(LOG_FILE);
        let mut broker = BrokerProcess {
            bin: self.bin,
            args: self.args,
            envs: self.envs,
            ready_timeout: self.ready_timeout,
            port,
            log_path,
            child: None,
            guards: Vec::new(),
            data,
        };
        broker.spawn()?;
        Ok(broker)
    }
}

/// A running (or stopped) `tributary serve` process. See the module docs.
#[derive(Debug)]
pub struct BrokerProcess {
    bin: PathBuf,
    args: Vec<OsString>,
    envs: Vec<(OsString, OsString)>,
    ready_timeout: Duration,
    port: u16,
    log_path: PathBuf,
    child: Option<Child>,
    /// Things the broker depends on (e.g. an [`crate::S3Server`]), dropped
    /// after it.
    guards: Vec<Box<dyn std::any::Any + Send + Sync>>,
    // Declared last so the process is gone before a temp dir is deleted.
    data: DataDir,
}

impl BrokerProcess {
    /// Keep `guard` alive as long as this broker (e.g. the S3 server it uses).
    pub fn keep_alive(&mut self, guard: impl std::any::Any + Send + Sync) {
        self.guards.push(Box::new(guard));
    }

    /// Starts a configurable broker; see [`BrokerBuilder`].
    pub fn builder(bin: impl Into<PathBuf>) -> BrokerBuilder {
        BrokerBuilder {
            bin: bin.into(),
            data_dir: None,
            port: None,
            args: Vec::new(),
            envs: Vec::new(),
            ready_timeout: DEFAULT_READY_TIMEOUT,
        }
    }

    /// Starts `bin serve` on a free port with a fresh temp data dir and
    /// `extra_args` appended.
    pub fn start<S: AsRef<str>>(bin: impl Into<PathBuf>, extra_args: &[S]) -> Result<Self> {
        Self::builder(bin)
            .args(extra_args.iter().map(|a| a.as_ref().to_owned()))
            .start()
    }

    /// `127.0.0.1:<port>`, for `bootstrap.servers`.
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The socket address the broker listens on.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn data_dir(&self) -> &Path {
        self.data.path()
    }

    /// OS process id of the current run, if running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the current run is still alive (reaps it if it exited).
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Everything the broker wrote to stdout/stderr, over all runs.
    pub fn logs(&self) -> String {
        match std::fs::read(&self.log_path) {
            Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
            Err(e) => format!("<cannot read {}: {e}>", self.log_path.display()),
        }
    }

    /// The last `lines` lines of [`Self::logs`].
    pub fn logs_tail(&self, lines: usize) -> String {
        let logs = self.logs();
        let all: Vec<&str> = logs.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Crashes the broker: `SIGKILL` (what `Child::kill` sends on unix), then
    /// reaps it. No-op if it is not running.
    pub fn kill_9(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            if child.try_wait().context("poll broker")?.is_none() {
                child.kill().context("SIGKILL broker")?;
            }
            child.wait().context("reap broker")?;
        }
        Ok(())
    }

    /// Stops the broker with `SIGTERM` and waits for it to exit (bounded by
    /// the ready timeout, after which it is killed and an error returned).
    /// Returns the exit status; callers decide whether non-zero is a failure.
    pub fn stop(&mut self) -> Result<ExitStatus> {
        let Some(mut child) = self.child.take() else {
            bail!("broker is not running");
        };
        if let Some(status) = child.try_wait().context("poll broker")? {
            bail!(
                "broker had already exited status={status}\n{}",
                self.logs_tail(50)
            );
        }
        let pid = i32::try_from(child.id()).context("pid out of range")?;
        kill(Pid::from_raw(pid), Signal::SIGTERM).context("SIGTERM broker")?;
        let deadline = Instant::now() + self.ready_timeout;
        loop {
            if let Some(status) = child.try_wait().context("poll broker")? {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                // Best effort: the error below is what matters.
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "broker did not exit within {:?} of SIGTERM\n{}",
                    self.ready_timeout,
                    self.logs_tail(50)
                );
            }
            sleep(Duration::from_millis(50));
        }
    }

    /// Starts the broker again on the same port and data dir. If it is still
    /// running it is stopped with `SIGTERM` first.
    pub fn restart(&mut self) -> Result<()> {
        if self.is_running() {
            self.stop()?;
        }
        self.child = None;
        self.spawn()
    }

    fn spawn(&mut self) -> Result<()> {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .with_context(|| format!("open {}", self.log_path.display()))?;
        writeln_marker(&log, &self.bin, self.port)?;
        let mut cmd = Command::new(&self.bin);
        cmd.arg("serve")
            .arg("--listen")
            .arg(self.bootstrap())
            .arg("--data-dir")
            .arg(self.data.path())
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().context("clone log handle")?)
            .stderr(log);
        for (key, value) in &self.envs {
            cmd.env(key, value);
        }
        if std::env::var_os("RUST_LOG").is_none() && !self.envs.iter().any(|(k, _)| k == "RUST_LOG")
        {
            cmd.env("RUST_LOG", "info");
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("spawn {}", self.bin.display()))?;
        self.child = Some(child);
        self.wait_ready()
    }

    fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + self.ready_timeout;
        let addr = self.addr();
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child.try_wait().context("poll broker")? {
                    self.child = None;
                    bail!(
                        "broker exited before accepting connections status={status}\n{}",
                        self.logs_tail(80)
                    );
                }
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let _ = self.kill_9();
                bail!(
                    "broker did not accept connections on {addr} within {:?}\n{}",
                    self.ready_timeout,
                    self.logs_tail(80)
                );
            }
            sleep(Duration::from_millis(50));
        }
    }
}

fn writeln_marker(mut log: &File, bin: &Path, port: u16) -> Result<()> {
    use std::io::Write;
    writeln!(
        log,
        "===== testkit: starting {} on 127.0.0.1:{port} =====",
        bin.display()
    )
    .context("write log marker")
}

impl Drop for BrokerProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.guards.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_port_is_bindable() -> Result<()> {
        let port = free_port()?;
        assert_ne!(port, 0);
        TcpListener::bind(("127.0.0.1", port))?;
        Ok(())
    }

    #[test]
    fn start_fails_with_logs_when_binary_exits() -> Result<()> {
        // `false` exits immediately: start must fail fast, not hang.
        let err = match BrokerProcess::builder("false")
            .ready_timeout(Duration::from_secs(5))
            .start()
        {
            Ok(_) => bail!("start of a process that exits must fail"),
            Err(e) => e,
        };
        assert!(
            err.to_string().contains("exited before accepting"),
            "unexpected error: {err:#}"
        );
        Ok(())
    }

    #[test]
    fn stop_restart_and_kill_a_listener_process() -> Result<()> {
        // python3's http.server stands in for the broker: it listens on the
        // port from argv and dies on SIGTERM. Skip where python3 is missing.
        if Command::new("python3").arg("-V").output().is_err() {
            return Ok(());
        }
        let dir = tempfile::tempdir()?;
        let script = dir.path().join("fake-broker");
        std::fs::write(
            &script,
            "#!/bin/sh\n# args: serve --listen 127.0.0.1:PORT --data-dir DIR\n\
             port=${3##*:}\necho fake broker on $port >&2\n\
             exec python3 -m http.server --bind 127.0.0.1 \"$port\"\n",
        )?;
        let mut perms = std::fs::metadata(&script)?.permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
        std::fs::set_permissions(&script, perms)?;

        let mut broker = BrokerProcess::start(&script, &[] as &[&str])?;
        let port = broker.port();
        assert!(broker.is_running());
        assert!(broker.logs().contains("fake broker on"));
        broker.stop()?;
        assert!(!broker.is_running());
        broker.restart()?;
        assert_eq!(broker.port(), port);
        TcpStream::connect(broker.addr())?;
        broker.kill_9()?;
        assert!(!broker.is_running());
        assert_eq!(broker.logs().matches("===== testkit: starting").count(), 2);
        Ok(())
    }
}
