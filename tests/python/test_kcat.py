"""kcat against the broker.

Debian's kcat links an old librdkafka (2.0.x): it only connects if the
ApiVersions answer omits default-valued tagged fields, as Kafka does.
"""

import shutil
import subprocess
import uuid

import pytest

TIMEOUT_S = 60


def kcat(*args: str, stdin: str = None) -> subprocess.CompletedProcess:
    if shutil.which("kcat") is None:
        pytest.fail("kcat is not installed (scripts/test.sh installs it)")
    result = subprocess.run(
        ["kcat", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    print(f"--- kcat {' '.join(args)} exit {result.returncode}")
    print(f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}")
    return result


def test_kcat_metadata(broker):
    result = kcat("-L", "-b", broker.bootstrap, "-m", "30")
    assert result.returncode == 0
    assert "brokers:" in result.stdout
    assert f":{broker.port}" in result.stdout


def test_kcat_produce_then_consume(broker):
    topic = f"kcat-{uuid.uuid4().hex[:8]}"
    lines = [f"key{i}:value {i}" for i in range(25)]

    produced = kcat(
        "-P", "-b", broker.bootstrap, "-t", topic, "-K:", stdin="\n".join(lines) + "\n"
    )
    assert produced.returncode == 0

    listed = kcat("-L", "-b", broker.bootstrap, "-t", topic, "-m", "30")
    assert listed.returncode == 0
    assert f'topic "{topic}"' in listed.stdout

    consumed = kcat(
        "-C",
        "-b",
        broker.bootstrap,
        "-t",
        topic,
        "-e",
        "-o",
        "beginning",
        "-q",
        "-f",
        "%k:%s\n",
    )
    assert consumed.returncode == 0
    # Partitions interleave arbitrarily; within the topic every line is there once.
    assert sorted(consumed.stdout.splitlines()) == sorted(lines)

    plain = kcat("-C", "-b", broker.bootstrap, "-t", topic, "-e", "-o", "beginning", "-q")
    assert plain.returncode == 0
    assert sorted(plain.stdout.splitlines()) == sorted(line.split(":", 1)[1] for line in lines)
