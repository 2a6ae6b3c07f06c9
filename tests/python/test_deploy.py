"""Issue #6 acceptance: the deployment pieces, run where they can run here.

- Terraform: `fmt -check`, offline `init` (the provider mirror on this
  machine) and `validate` for the AWS module and the LocalStack example.
- The LocalStack example applied against LocalStack started on the host
  (localstack/run-on-host.sh): the bucket appears, a broker started with the
  printed command serves a real client, `destroy` removes the bucket.
- The compose file parses and refers to the real Dockerfile, ports and
  settings (no Docker engine here to run it).
"""

import json
import os
import shlex
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient

from conftest import Pki, Broker, add_user, broker_bin, free_port

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = 30


def terraform_env(tmp_path):
    """Environment for terraform with a CLI config that installs providers
    from the filesystem mirror on this machine (the registry is unreachable)."""
    if not shutil.which("terraform"):
        pytest.fail("terraform is not on PATH (the deployment tests need it)")
    mirror = os.environ.get("TRIBUTARY_TF_MIRROR")
    if not mirror:
        for candidate in ("/opt/tf-plugins", "/usr/share/terraform/plugins", "/usr/local/share/terraform/plugins"):
            if (Path(candidate) / "registry.terraform.io").is_dir():
                mirror = candidate
                break
    if not mirror:
        found = subprocess.run(
            ["find", "/", "-maxdepth", "3", "-name", "registry.terraform.io"],
            capture_output=True, text=True,
        ).stdout.split()
        mirror = str(Path(found[0]).parent) if found else None
    assert mirror, "no Terraform provider mirror found; set TRIBUTARY_TF_MIRROR"
    rc = tmp_path / "terraformrc"
    rc.write_text(
        "provider_installation {\n"
        f'  filesystem_mirror {{\n    path = "{mirror}"\n    include = ["registry.terraform.io/*/*"]\n  }}\n'
        '  direct {\n    exclude = ["registry.terraform.io/*/*"]\n  }\n}\n'
    )
    return dict(os.environ, TF_CLI_CONFIG_FILE=str(rc), TF_IN_AUTOMATION="1",
                CHECKPOINT_DISABLE="1")


def tf(args, cwd, env, timeout=600):
    out = subprocess.run(["terraform", *args, "-no-color"], cwd=cwd, env=env,
                         capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, f"terraform {' '.join(args)}:\n{out.stdout}\n{out.stderr}"
    return out.stdout


def copy_terraform(tmp_path):
    """A copy of terraform/ so init/apply leave nothing in the repository."""
    dst = tmp_path / "terraform"
    shutil.copytree(ROOT / "terraform", dst,
                    ignore=shutil.ignore_patterns(".terraform", ".terraform.lock.hcl", "*.tfstate*"))
    return dst


def test_terraform_fmt_init_validate(tmp_path):
    env = terraform_env(tmp_path)
    out = subprocess.run(["terraform", "fmt", "-check", "-recursive", "-no-color"],
                         cwd=ROOT / "terraform", env=env, capture_output=True, text=True)
    assert out.returncode == 0, f"terraform fmt -check: {out.stdout}{out.stderr}"
    copy = copy_terraform(tmp_path)
    for module in (copy, copy / "examples" / "localstack"):
        tf(["init", "-backend=false", "-input=false"], module, env)
        assert "configuration is valid" in tf(["validate"], module, env)


def test_terraform_plan_with_sasl_ssl(tmp_path):
    """The module with enable_sasl_ssl plans (offline: fake credentials, no
    API calls) a SASL_SSL listener on the load balancer and the brokers, the
    certificate, key and admin password in Secrets Manager; without a proper
    certificate or password the plan stops with a clear message."""
    env = terraform_env(tmp_path)
    module = copy_terraform(tmp_path)
    pki = Pki(tmp_path / "pki")
    root = tmp_path / "root"
    root.mkdir()

    def write(admin_password):
        (root / "main.tf").write_text(f"""
provider "aws" {{
  region                      = "us-east-1"
  access_key                  = "test"
  secret_key                  = "test"
  skip_credentials_validation = true
  skip_metadata_api_check     = true
  skip_requesting_account_id  = true
}}
module "tributary" {{
  source              = "{module}"
  vpc_id              = "vpc-0123"
  subnet_ids          = ["subnet-1", "subnet-2"]
  allowed_cidrs       = ["10.0.0.0/8"]
  image               = "tributary:test"
  bucket_name         = "tributary-plan"
  db_password         = "a-database-password"
  enable_sasl_ssl     = true
  tls_certificate_pem = file("{pki.cert}")
  tls_private_key_pem = file("{pki.key}")
  admin_password      = "{admin_password}"
}}
""")

    write("an-admin-password")
    tf(["init", "-input=false"], root, env)
    plan = tf(["plan", "-input=false"], root, env)
    for address in (
        'aws_lb_listener.sasl_ssl[0]',
        'aws_lb_target_group.sasl_ssl[0]',
        'aws_secretsmanager_secret.security["tls-certificate"]',
        'aws_secretsmanager_secret.security["tls-private-key"]',
        'aws_secretsmanager_secret.security["admin-password"]',
        'aws_vpc_security_group_ingress_rule.sasl_ssl["10.0.0.0/8"]',
        'aws_vpc_security_group_egress_rule.load_balancer_to_brokers["9094"]',
    ):
        assert f"module.tributary.{address} will be created" in plan, address
    assert "-----BEGIN" not in plan, "a secret reached the plan output"

    write("short")
    out = subprocess.run(["terraform", "plan", "-input=false", "-no-color"], cwd=root,
                         env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode != 0
    assert "admin_password of at least 12 characters" in out.stderr


@pytest.fixture
def localstack(tmp_path):
    port = free_port()
    pidfile = tmp_path / "localstack.pid"
    env = dict(os.environ, LOCALSTACK_PIDFILE=str(pidfile))
    out = subprocess.run([str(ROOT / "localstack" / "run-on-host.sh"), str(port), "--background"],
                         env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, f"LocalStack did not start:\n{out.stdout}\n{out.stderr}"
    pid, state = pidfile.read_text().split()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        os.kill(int(pid), signal.SIGTERM)
        for _ in range(100):
            try:
                os.kill(int(pid), 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)
        shutil.rmtree(state, ignore_errors=True)


def sasl_ssl_example(outputs, certs, data_dir):
    """The example's SASL_SSL commands, run as printed (on free ports): the
    admin logs in over SASL_SSL with the development CA and reads what the
    plaintext run wrote; an anonymous plaintext client sees nothing (ACLs)."""
    users = shlex.split(outputs["users_add_command"]["value"])
    user_env = dict(w.split("=", 1) for w in users if "=" in w and w.split("=", 1)[0].isupper())
    add_user(data_dir, users[users.index("add") + 1], user_env["TRIBUTARY_USER_PASSWORD"])
    words = shlex.split(outputs["serve_sasl_ssl_command"]["value"])
    args = words[words.index("serve") + 1:]
    plain, secure = free_port(), free_port()
    i = args.index("--listeners")
    assert args[i + 1] == "PLAINTEXT://127.0.0.1:9092,SASL_SSL://127.0.0.1:9094"
    args[i + 1] = f"PLAINTEXT://127.0.0.1:{plain},SASL_SSL://127.0.0.1:{secure}"
    broker = Broker(data_dir, plain, [a for j, a in enumerate(args) if j not in (i, i + 1)],
                    listeners=args[i + 1]).start()
    try:
        conf = {"bootstrap.servers": f"127.0.0.1:{secure}", "security.protocol": "SASL_SSL",
                "sasl.mechanisms": "SCRAM-SHA-512", "sasl.username": "admin",
                "sasl.password": user_env["TRIBUTARY_USER_PASSWORD"],
                "ssl.ca.location": str(certs / "ca.pem"), "broker.address.family": "v4"}
        c = Consumer({**conf, "group.id": "deploy-secure", "auto.offset.reset": "earliest"})
        c.subscribe(["deploy"])
        got = 0
        deadline = time.time() + TIMEOUT
        while got < 100 and time.time() < deadline:
            m = c.poll(1)
            if m is not None and not m.error():
                got += 1
        c.close()
        assert got == 100
        anonymous = AdminClient({"bootstrap.servers": f"127.0.0.1:{plain}"})
        assert "deploy" not in anonymous.list_topics(timeout=TIMEOUT).topics
    finally:
        code = broker.stop()
        if code not in (0, None):
            print(broker.logs())


def test_localstack_example_apply_serve_destroy(tmp_path, localstack, request):
    env = terraform_env(tmp_path)
    example = copy_terraform(tmp_path) / "examples" / "localstack"
    tf(["init", "-input=false"], example, env)
    certs = tmp_path / "certs"
    subprocess.run([str(ROOT / "localstack" / "make-certs.sh"), str(certs)], check=True,
                   capture_output=True, timeout=60)
    var = ["-var", f"endpoint={localstack}", "-var", "bucket_name=tributary-acceptance",
           "-var", f"certs_dir={certs}"]
    tf(["apply", "-auto-approve", "-input=false", *var], example, env)
    try:
        outputs = json.loads(tf(["output", "-json"], example, env))
        command = outputs["serve_command"]["value"]
        # "K=V ... tributary serve --object-store URL": run it as printed,
        # on a free port and a temp data dir.
        words = shlex.split(command)
        broker_env = dict(w.split("=", 1) for w in words if "=" in w and not w.startswith("-")
                          and w.split("=", 1)[0].isupper())
        args = words[words.index("serve") + 1:]
        assert args[0] == "--object-store"
        old = {k: os.environ.get(k) for k in broker_env}
        os.environ.update(broker_env)
        try:
            broker = Broker(tmp_path / "data", free_port(), args).start()
            try:
                bs = broker.bootstrap
                p = Producer({"bootstrap.servers": bs})
                for i in range(100):
                    p.produce("deploy", value=f"v{i}".encode())
                assert p.flush(TIMEOUT) == 0
                c = Consumer({"bootstrap.servers": bs, "group.id": "deploy",
                              "auto.offset.reset": "earliest"})
                c.subscribe(["deploy"])
                got = []
                deadline = time.time() + TIMEOUT
                while len(got) < 100 and time.time() < deadline:
                    m = c.poll(1)
                    if m is not None and not m.error():
                        got.append(m.value().decode())
                c.close()
                assert got == [f"v{i}" for i in range(100)]
            finally:
                code = broker.stop()
                if code not in (0, None):
                    print(broker.logs())
            sasl_ssl_example(outputs, certs, tmp_path / "data")
        finally:
            for k, v in old.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
    finally:
        tf(["destroy", "-auto-approve", "-input=false", *var], example, env)
    assert "tributary-acceptance" not in subprocess.run(
        ["terraform", "state", "list", "-no-color"], cwd=example, env=env,
        capture_output=True, text=True).stdout


def test_compose_file_refers_to_real_image_ports_and_settings():
    compose = yaml.safe_load((ROOT / "localstack" / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"localstack", "postgres", "init", "broker-1", "broker-2"} <= set(services)
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert dockerfile.count("FROM ") >= 2, "multi-stage build"
    assert "USER tributary" in dockerfile and "EXPOSE 9092 9464" in dockerfile
    help_text = subprocess.run([str(broker_bin()), "serve", "--help"],
                               capture_output=True, text=True).stdout
    for name in ("init", "users", "broker-1", "broker-2"):
        svc = services[name]
        assert svc["image"] == "tributary:local"
        assert (ROOT / "localstack" / svc["build"]["context"] / "Dockerfile").resolve() == ROOT / "Dockerfile"
        if name == "users":
            continue
        for key in svc["environment"]:
            if key.startswith("TRIBUTARY_"):
                assert f"[env: {key}=" in help_text, f"{name}: {key} is not a serve setting"
    assert services["init"]["command"] == ["init", "--create-bucket"]
    for name, port, secure in (("broker-1", "9092", "9094"), ("broker-2", "9093", "9095")):
        ports = services[name]["ports"]
        assert f"127.0.0.1:{port}:9092" in ports and f"127.0.0.1:{secure}:9094" in ports
        env = services[name]["environment"]
        assert env["TRIBUTARY_ADVERTISED_LISTENERS"] == (
            f"PLAINTEXT://127.0.0.1:{port},SASL_SSL://127.0.0.1:{secure}")
        assert env["TRIBUTARY_LISTENERS"] == "PLAINTEXT://0.0.0.0:9092,SASL_SSL://0.0.0.0:9094"
        assert "./certs:/certs:ro" in services[name]["volumes"]
        assert services[name]["depends_on"]["users"]["condition"] == "service_completed_successfully"
    # The users service runs `tributary users add` with the password from the
    # environment, on the brokers' database.
    users = services["users"]
    assert users["command"][:2] == ["users", "add"]
    assert users["environment"]["TRIBUTARY_METADATA"] == services["broker-1"]["environment"]["TRIBUTARY_METADATA"]
    users_help = subprocess.run([str(broker_bin()), "users", "add", "--help"],
                                capture_output=True, text=True).stdout
    for key in users["environment"]:
        assert key in users_help, f"users: {key} is not a `users add` setting"
    # The certificate script makes what the brokers mount.
    script = (ROOT / "localstack" / "make-certs.sh").read_text()
    for name in ("server.pem", "server.key", "ca.pem"):
        assert name in script
