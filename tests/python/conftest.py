"""Fixtures for end-to-end tests with real Kafka clients (confluent-kafka, kcat).

Each test gets its own `tributary serve` process on a free 127.0.0.1 port
with a temporary data directory; it is stopped with SIGTERM afterwards. The
binary is $TRIBUTARY_BIN, else $CARGO_TARGET_DIR/{release,debug}/tributary
(CARGO_TARGET_DIR defaults to ~/.cache/tributary/target). The broker's
stderr goes to a file in the data dir and is printed when a test fails.
`Broker.restart()` SIGKILLs a broker and starts it again on the same data dir
and port, so that its clients reconnect to it.
"""

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

READY_TIMEOUT_S = 30.0
EXAMPLES_PORT = 9092


def broker_bin() -> Path:
    explicit = os.environ.get("TRIBUTARY_BIN")
    if explicit:
        return Path(explicit)
    target = Path(
        os.environ.get("CARGO_TARGET_DIR")
        or Path.home() / ".cache" / "tributary" / "target"
    )
    for profile in ("release", "debug"):
        candidate = target / profile / "tributary"
        if candidate.exists():
            return candidate
    return target / "release" / "tributary"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    # Also nothing may answer on localhost's IPv6 address: the examples use
    # "localhost", and librdkafka may try ::1 first.
    with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        try:
            s.connect(("::1", port))
        except OSError:
            return True
    return False


class Broker:
    """A running `tributary serve` process."""

    def __init__(self, data_dir: Path, port: int, extra_args=(), listeners=None):
        self.bin = broker_bin()
        if not self.bin.exists():
            pytest.fail(
                f"broker binary {self.bin} not found: build it "
                "(cargo build --release -p tributary-cli) or set TRIBUTARY_BIN"
            )
        self.data_dir = data_dir
        self.port = port
        self.extra_args = list(extra_args)
        # `--listeners` instead of `--listen`; `port` must be one of them.
        self.listeners = listeners
        self.log_path = data_dir / "broker-stderr.log"
        self.proc = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self):
        self.data_dir.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        env.setdefault("RUST_LOG", "info")
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [
                    str(self.bin),
                    "serve",
                    *(
                        ["--listeners", self.listeners]
                        if self.listeners
                        else ["--listen", self.bootstrap]
                    ),
                    "--data-dir",
                    str(self.data_dir),
                    *self.extra_args,
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env=env,
            )
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            if self.proc.poll() is not None:
                pytest.fail(
                    f"broker exited with {self.proc.returncode} before accepting "
                    f"connections\n{self.logs()}"
                )
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.kill()
                pytest.fail(
                    f"broker did not listen on {self.bootstrap} within "
                    f"{READY_TIMEOUT_S}s\n{self.logs()}"
                )
            time.sleep(0.05)

    def stop(self) -> int:
        """SIGTERM, wait up to 30 s (then SIGKILL); returns the exit code."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=READY_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"broker ignored SIGTERM for {READY_TIMEOUT_S}s\n{self.logs()}")

    def kill(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def restart(self):
        """SIGKILL (no clean shutdown: what was not durable is lost, open
        transactions and group members stay behind) and start again on the
        same data dir and port. Both runs log to the same file."""
        self.kill()
        with open(self.log_path, "a") as log:
            log.write(f"----- SIGKILLed; restarting on {self.bootstrap} -----\n")
        return self.start()

    def logs(self, tail: int = 200) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError as e:
            return f"<cannot read {self.log_path}: {e}>"
        return "\n".join(lines[-tail:])


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    # Lets fixtures see whether the test failed (to print broker logs).
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)


def _run_broker(request, data_dir: Path, port: int, extra_args=(), listeners=None):
    broker = Broker(data_dir, port, extra_args, listeners).start()
    try:
        yield broker
    finally:
        code = broker.stop()
        failed = any(
            getattr(getattr(request.node, f"rep_{when}", None), "failed", False)
            for when in ("setup", "call")
        )
        if failed or code not in (0, None):
            print(f"\n----- broker log (exit {code}) -----\n{broker.logs()}\n-----")


@pytest.fixture
def broker(request, tmp_path):
    """A broker on a free port, auto-creating topics (the default)."""
    yield from _run_broker(request, tmp_path / "data", free_port())


@pytest.fixture
def broker_no_autocreate(request, tmp_path):
    """A broker on a free port with topic auto-creation switched off."""
    yield from _run_broker(
        request, tmp_path / "data", free_port(), ["--auto-create-topics", "false"]
    )


@pytest.fixture
def broker_9092(request, tmp_path):
    """A broker on 127.0.0.1:9092, for examples that hard-code localhost:9092."""
    if not port_is_free(EXAMPLES_PORT):
        pytest.fail(
            f"port {EXAMPLES_PORT} is in use: the README examples need it "
            "(stop whatever listens there)"
        )
    yield from _run_broker(request, tmp_path / "data", EXAMPLES_PORT)


@pytest.fixture
def broker_with_args(request, tmp_path):
    """Factory: `broker_with_args("--max-message-bytes", "5000")` starts a
    broker on a free port with extra `serve` arguments (stopped after the
    test). At most one broker per test."""
    gens = []

    def start(*extra_args):
        assert not gens, "broker_with_args supports one broker per test"
        gen = _run_broker(request, tmp_path / "data", free_port(), extra_args)
        gens.append(gen)
        return next(gen)

    yield start
    for gen in gens:
        # Runs _run_broker's finally: stop + print logs on failure.
        for _ in gen:
            pass


class Pki:
    """A throwaway CA and a server certificate for 127.0.0.1 (openssl)."""

    def __init__(self, directory: Path):
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.ca = self.dir / "ca.pem"
        self.cert = self.dir / "server.pem"
        self.key = self.dir / "server.key"
        ca_key = self.dir / "ca.key"
        csr = self.dir / "server.csr"
        ext = self.dir / "san.ext"
        ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
        ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
        for args in (
            ["req", "-x509", *ec, "-keyout", ca_key, "-out", self.ca, "-days", "2",
             "-subj", "/CN=Tributary test CA"],
            ["req", *ec, "-keyout", self.key, "-out", csr, "-subj", "/CN=localhost"],
            ["x509", "-req", "-in", csr, "-CA", self.ca, "-CAkey", ca_key,
             "-CAcreateserial", "-out", self.cert, "-days", "2", "-extfile", ext],
        ):
            subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True)

    def client(self, name: str):
        """A client certificate with subject `CN=<name>` signed by the CA:
        (certificate path, key path). Its principal is `User:CN=<name>`."""
        cert, key, csr = (self.dir / f"{name}{ext}" for ext in (".pem", ".key", ".csr"))
        # An X.509 v3 certificate (extensions make it v3; webpki refuses v1).
        ext = self.dir / f"{name}.ext"
        ext.write_text("extendedKeyUsage=clientAuth\n")
        ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
        for args in (
            ["req", *ec, "-keyout", key, "-out", csr, "-subj", f"/CN={name}"],
            ["x509", "-req", "-in", csr, "-CA", self.ca, "-CAkey", self.dir / "ca.key",
             "-CAcreateserial", "-out", cert, "-days", "2", "-extfile", ext],
        ):
            subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True)
        return cert, key


def add_user(data_dir: Path, name: str, password: str, *extra: str):
    """`tributary users add` on a broker's data dir (password via env)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, TRIBUTARY_USER_PASSWORD=password)
    result = subprocess.run(
        [str(broker_bin()), "users", "add", name, "--data-dir", str(data_dir), *extra],
        capture_output=True, text=True, env=env, timeout=60,
    )
    assert result.returncode == 0, result.stderr


@pytest.fixture
def secure_broker(request, tmp_path):
    """A broker with PLAINTEXT and SASL_SSL listeners (SCRAM-SHA-512,
    SCRAM-SHA-256, PLAIN), a test CA, and the user alice (password
    `alice-secret`). Attributes: `bootstrap` (plaintext), `sasl_ssl`
    (bootstrap of the SASL_SSL listener), `pki`."""
    data = tmp_path / "data"
    pki = Pki(tmp_path / "pki")
    add_user(data, "alice", "alice-secret")
    plain, secure = free_port(), free_port()
    listeners = f"PLAINTEXT://127.0.0.1:{plain},SASL_SSL://127.0.0.1:{secure}"
    extra = [
        "--tls-cert", str(pki.cert), "--tls-key", str(pki.key),
        "--sasl-mechanisms", "SCRAM-SHA-512,SCRAM-SHA-256,PLAIN",
    ]
    for broker in _run_broker(request, data, plain, extra, listeners):
        broker.sasl_ssl = f"127.0.0.1:{secure}"
        broker.pki = pki
        yield broker


def sasl_conf(broker, mechanism, user="alice", password="alice-secret"):
    """librdkafka settings for `broker.sasl_ssl` as `user` (test CA)."""
    return {
        "bootstrap.servers": broker.sasl_ssl,
        "security.protocol": "SASL_SSL",
        "sasl.mechanisms": mechanism,
        "sasl.username": user,
        "sasl.password": password,
        "ssl.ca.location": str(broker.pki.ca),
        "broker.address.family": "v4",
    }
