//! A throwaway PostgreSQL cluster for metadata-store tests.
//!
//! Contract:
//! - the server binaries (`initdb`, `pg_ctl`, `postgres`) come from
//!   `$TRIBUTARY_PG_BIN` if set, else the first `PATH` directory holding all
//!   three, else the newest `/usr/lib/postgresql/<version>/bin`; if none has
//!   them, [`PgServer::start`] fails saying so (tests that need PostgreSQL
//!   fail, they do not skip);
//! - the cluster lives in a fresh temp dir: `initdb` with trust auth and the
//!   C locale, a database [`PG_TEST_DATABASE`], and the server listening on
//!   `127.0.0.1:<free port>` plus a Unix socket in the temp dir. PostgreSQL
//!   refuses to run as root, so when the tests run as root every server
//!   command runs as the `postgres` account (`runuser -u postgres --`) and the
//!   temp dir is handed to it;
//! - durability is traded for speed (`fsync=off`, `synchronous_commit=off`):
//!   data survives [`PgServer::restart`] (a clean shutdown), not a machine
//!   crash;
//! - dropping the handle stops the server (`pg_ctl stop -m immediate`) and
//!   deletes the temp dir.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tempfile::TempDir;

use crate::broker::free_port;

/// Database created in every test cluster; [`PgServer::url`] points at it.
pub const PG_TEST_DATABASE: &str = "tributary";

/// How long `pg_ctl` waits for the server to start or stop.
pub const PG_READY_TIMEOUT: Duration = Duration::from_secs(60);

/// Account the server runs as when the tests run as root.
const PG_ACCOUNT: &str = "postgres";

/// Start attempts (each on a fresh free port, in case another process took
/// the port between picking and binding it).
const START_ATTEMPTS: usize = 3;

/// A running PostgreSQL cluster.
#[derive(Debug)]
pub struct PgServer {
    bin_dir: PathBuf,
    port: u16,
    data_dir: PathBuf,
    sock_dir: PathBuf,
    log_path: PathBuf,
    /// `Some(account)` when server commands run through `runuser`.
    run_as: Option<&'static str>,
    running: bool,
    /// Server options added by [`PgServer::start_tls`].
    extra_options: String,
    /// The CA that signed the server certificate ([`PgServer::start_tls`]).
    ca_cert: Option<PathBuf>,
    // Declared last so the server is stopped before the dir is deleted.
    _dir: TempDir,
}

/// The directory holding `initdb`, `pg_ctl` and `postgres` (see the module
/// docs for the search order).
pub fn pg_bin_dir() -> Result<PathBuf> {
    const BINS: [&str; 3] = ["initdb", "pg_ctl", "postgres"];
    let has_all = |dir: &Path| BINS.iter().all(|b| dir.join(b).is_file());
    if let Some(dir) = std::env::var_os("TRIBUTARY_PG_BIN") {
        let dir = PathBuf::from(dir);
        if !has_all(&dir) {
            bail!(
                "TRIBUTARY_PG_BIN={} does not hold initdb, pg_ctl and postgres",
                dir.display()
            );
        }
        return Ok(dir);
    }
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .find(|dir| has_all(dir));
    if let Some(dir) = on_path {
        return Ok(dir);
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .filter_map(|e| {
                    let version = e.file_name().to_str()?.parse::<u32>().ok()?;
                    let bin = e.path().join("bin");
                    has_all(&bin).then_some((version, bin))
                })
                .collect()
        })
        .unwrap_or_default();
    versions.sort();
    match versions.pop() {
        Some((_, dir)) => Ok(dir),
        None => bail!(
            "PostgreSQL server binaries (initdb, pg_ctl, postgres) not found on PATH or under \
             /usr/lib/postgresql/*/bin: the PostgreSQL tests need them. Install them \
             (Debian: apt-get install postgresql) or set TRIBUTARY_PG_BIN=/path/to/bin"
        ),
    }
}

impl PgServer {
    /// Create a cluster in a fresh temp dir and start it.
    pub fn start() -> Result<Self> {
        let bin_dir = pg_bin_dir()?;
        let dir = tempfile::Builder::new()
            .prefix("tributary-pg-")
            .tempdir()
            .context("create postgres temp dir")?;
        let sock_dir = dir.path().join("sock");
        std::fs::create_dir(&sock_dir).with_context(|| format!("create {}", sock_dir.display()))?;
        let run_as = if nix::unistd::geteuid().is_root() {
            let account = nix::unistd::User::from_name(PG_ACCOUNT)
                .context("look up the postgres account")?
                .with_context(|| {
                    format!(
                        "running as root and there is no `{PG_ACCOUNT}` account to run \
                         PostgreSQL as (initdb refuses root); create it or run as another user"
                    )
                })?;
            for path in [dir.path(), sock_dir.as_path()] {
                std::os::unix::fs::chown(
                    path,
                    Some(account.uid.as_raw()),
                    Some(account.gid.as_raw()),
                )
                .with_context(|| format!("chown {} to {PG_ACCOUNT}", path.display()))?;
            }
            Some(PG_ACCOUNT)
        } else {
            None
        };
        let mut server = PgServer {
            bin_dir,
            port: 0,
            data_dir: dir.path().join("data"),
            sock_dir,
            log_path: dir.path().join("postgres.log"),
            run_as,
            running: false,
            extra_options: String::new(),
            ca_cert: None,
            _dir: dir,
        };
        server.init()?;
        server.start_server()?;
        Ok(server)
    }

    /// Like [`PgServer::start`], with TLS required on TCP: a throwaway CA
    /// (see [`PgServer::ca_cert`]) signs a server certificate for the name
    /// `localhost` only (not `127.0.0.1`), and `pg_hba.conf` accepts TCP
    /// clients only over TLS (`hostssl`). Needs the `openssl` command.
    pub fn start_tls() -> Result<Self> {
        let mut server = Self::start()?;
        server.stop()?;
        let dir = server
            .data_dir
            .parent()
            .context("data dir has a parent")?
            .to_path_buf();
        let ca_key = dir.join("ca.key");
        let ca = dir.join("ca.crt");
        let key = dir.join("server.key");
        let csr = dir.join("server.csr");
        let cert = dir.join("server.crt");
        let ext = dir.join("server.ext");
        std::fs::write(&ext, "subjectAltName=DNS:localhost\n").context("write server.ext")?;
        let openssl = |args: &[&std::ffi::OsStr]| -> Result<()> {
            let out = Command::new("openssl")
                .args(args)
                .output()
                .context("run openssl (the TLS tests need the openssl command)")?;
            if !out.status.success() {
                bail!(
                    "openssl {:?} failed: {}",
                    args,
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            Ok(())
        };
        let os = |s: &str| std::ffi::OsString::from(s);
        openssl(&[
            &os("req"),
            &os("-x509"),
            &os("-newkey"),
            &os("rsa:2048"),
            &os("-nodes"),
            &os("-days"),
            &os("2"),
            &os("-subj"),
            &os("/CN=tributary test CA"),
            &os("-keyout"),
            ca_key.as_os_str(),
            &os("-out"),
            ca.as_os_str(),
        ])?;
        openssl(&[
            &os("req"),
            &os("-newkey"),
            &os("rsa:2048"),
            &os("-nodes"),
            &os("-subj"),
            &os("/CN=localhost"),
            &os("-keyout"),
            key.as_os_str(),
            &os("-out"),
            csr.as_os_str(),
        ])?;
        openssl(&[
            &os("x509"),
            &os("-req"),
            &os("-days"),
            &os("2"),
            &os("-in"),
            csr.as_os_str(),
            &os("-CA"),
            ca.as_os_str(),
            &os("-CAkey"),
            ca_key.as_os_str(),
            &os("-CAcreateserial"),
            &os("-extfile"),
            ext.as_os_str(),
            &os("-out"),
            cert.as_os_str(),
        ])?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600))
            .context("chmod server.key")?;
        if server.run_as.is_some() {
            let account = nix::unistd::User::from_name(PG_ACCOUNT)
                .context("look up the postgres account")?
                .context("no postgres account")?;
            for path in [&key, &cert] {
                std::os::unix::fs::chown(
                    path,
                    Some(account.uid.as_raw()),
                    Some(account.gid.as_raw()),
                )
                .with_context(|| format!("chown {}", path.display()))?;
            }
        }
        let hba_path = server.data_dir.join("pg_hba.conf");
        let hba = std::fs::read_to_string(&hba_path).context("read pg_hba.conf")?;
        let hba: String = hba
            .lines()
            .map(|l| match l.strip_prefix("host ") {
                Some(rest) => format!("hostssl {rest}\n"),
                None => format!("{l}\n"),
            })
            .collect();
        std::fs::write(&hba_path, hba).context("write pg_hba.conf")?;
        server.extra_options = format!(
            " -c ssl=on -c ssl_cert_file={} -c ssl_key_file={}",
            cert.display(),
            key.display()
        );
        server.ca_cert = Some(ca);
        server.resume()?;
        Ok(server)
    }

    /// The CA certificate (PEM) of a [`PgServer::start_tls`] server.
    pub fn ca_cert(&self) -> Option<&Path> {
        self.ca_cert.as_deref()
    }

    /// `postgres://postgres@127.0.0.1:<port>/tributary` (trust auth, no
    /// password).
    pub fn url(&self) -> String {
        format!(
            "postgres://{PG_ACCOUNT}@127.0.0.1:{}/{PG_TEST_DATABASE}",
            self.port
        )
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Stop the server (fast shutdown: open connections are terminated) and
    /// start it again on the same port and data.
    pub fn restart(&mut self) -> Result<()> {
        self.stop()?;
        self.start_server()
    }

    /// Stop the server (fast shutdown). [`PgServer::resume`] starts it again.
    pub fn stop(&mut self) -> Result<()> {
        let out = self
            .pg_ctl()
            .args(["-m", "fast", "-w", "-t"])
            .arg(PG_READY_TIMEOUT.as_secs().to_string())
            .arg("stop")
            .output()
            .context("run pg_ctl stop")?;
        self.check("pg_ctl stop", &out)?;
        self.running = false;
        Ok(())
    }

    /// Start a stopped server again on the same port and data.
    pub fn resume(&mut self) -> Result<()> {
        self.start_server()
    }

    /// The last lines of the server log.
    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    fn command(&self, program: &str) -> Command {
        let program = self.bin_dir.join(program);
        let mut cmd = match self.run_as {
            Some(account) => {
                let mut cmd = Command::new("runuser");
                cmd.args(["-u", account, "--"]).arg(program);
                cmd
            }
            None => Command::new(program),
        };
        // The server's cwd must be readable by its account.
        cmd.current_dir(self._dir.path()).stdin(Stdio::null());
        cmd
    }

    fn pg_ctl(&self) -> Command {
        let mut cmd = self.command("pg_ctl");
        cmd.arg("-D").arg(&self.data_dir);
        cmd
    }

    fn check(&self, what: &str, out: &Output) -> Result<()> {
        if out.status.success() {
            return Ok(());
        }
        bail!(
            "{what} failed ({}):\n{}{}\n--- server log ---\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.log_tail()
        )
    }

    /// Fill the data dir from a cluster made once per machine and user (see
    /// [`PgServer::template`]): a copy takes a fraction of `initdb`'s time,
    /// and the conformance suite starts a server per test.
    fn init(&self) -> Result<()> {
        let template = self.template()?;
        let out = Command::new("cp")
            .arg("-a")
            .arg(&template)
            .arg(&self.data_dir)
            .output()
            .context("run cp")?;
        self.check("copy the template cluster", &out)
    }

    /// The template cluster: `initdb` plus the test database, made at the
    /// first use under the temp dir, keyed by the server binaries and the
    /// account, and published by an atomic rename so concurrent test
    /// processes never see half of one.
    fn template(&self) -> Result<PathBuf> {
        let key = format!(
            "{}-{}-v1",
            self.bin_dir.display(),
            self.run_as.unwrap_or("self")
        );
        let hash = key.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
        let uid = nix::unistd::geteuid().as_raw();
        let template =
            std::env::temp_dir().join(format!("tributary-pg-template-{uid}-{hash:016x}"));
        if template.join("PG_VERSION").exists() {
            return Ok(template);
        }
        let building = self._dir.path().join("template");
        self.init_cluster(&building)?;
        match std::fs::rename(&building, &template) {
            Ok(()) => {}
            // Another process published one first: use it.
            Err(_) if template.join("PG_VERSION").exists() => {}
            Err(e) => {
                return Err(e).with_context(|| format!("publish {}", template.display()));
            }
        }
        Ok(template)
    }

    /// `initdb` into `data_dir`, then create the test database in
    /// single-user mode (no client binaries needed).
    fn init_cluster(&self, data_dir: &Path) -> Result<()> {
        let out = self
            .command("initdb")
            .arg("-D")
            .arg(data_dir)
            .args([
                "-U",
                PG_ACCOUNT,
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--no-locale",
                "-N",
            ])
            .output()
            .context("run initdb")?;
        self.check("initdb", &out)?;

        let mut child = self
            .command("postgres")
            .arg("--single")
            .arg("-D")
            .arg(data_dir)
            .arg("postgres")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("run postgres --single")?;
        child
            .stdin
            .take()
            .context("stdin of postgres --single")?
            .write_all(format!("CREATE DATABASE {PG_TEST_DATABASE};\n").as_bytes())
            .context("write to postgres --single")?;
        let out = child
            .wait_with_output()
            .context("wait for postgres --single")?;
        self.check("create database (postgres --single)", &out)?;
        let said = String::from_utf8_lossy(&out.stderr);
        if said.contains("ERROR") {
            bail!("create database (postgres --single) failed:\n{said}");
        }
        Ok(())
    }

    fn start_server(&mut self) -> Result<()> {
        let mut last_err = None;
        for _ in 0..START_ATTEMPTS {
            let port = if self.port == 0 {
                free_port()?
            } else {
                self.port
            };
            let options = format!(
                "-p {port} -k {} -c listen_addresses=127.0.0.1 -c max_connections=200 \
                 -c fsync=off -c synchronous_commit=off -c full_page_writes=off{}",
                self.sock_dir.display(),
                self.extra_options
            );
            let out = self
                .pg_ctl()
                .arg("-l")
                .arg(&self.log_path)
                .arg("-o")
                .arg(options)
                .args(["-w", "-t"])
                .arg(PG_READY_TIMEOUT.as_secs().to_string())
                .arg("start")
                .output()
                .context("run pg_ctl start")?;
            match self.check("pg_ctl start", &out) {
                Ok(()) => {
                    self.port = port;
                    self.running = true;
                    return Ok(());
                }
                Err(e) => {
                    last_err = Some(e);
                    if self.port != 0 {
                        // A restart keeps its port; retrying another is wrong.
                        break;
                    }
                }
            }
        }
        Err(last_err.unwrap_or_else(|| anyhow::anyhow!("pg_ctl start was never attempted")))
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        if self.running {
            let _ = self
                .pg_ctl()
                .args(["-m", "immediate", "-w", "stop"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}
