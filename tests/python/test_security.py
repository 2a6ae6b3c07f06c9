"""TLS and SASL with the clients users have (issue 14): confluent-kafka over
SASL_SSL with SCRAM-SHA-512, SCRAM-SHA-256 and PLAIN, and kcat (Debian's,
an older librdkafka) over SASL_SSL/SCRAM; wrong passwords refused promptly.
Users are made with `tributary users add`."""

import shutil
import subprocess
import time
import uuid

import pytest
from confluent_kafka import Consumer, KafkaException, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from conftest import sasl_conf

TIMEOUT = 30


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN"])
def test_confluent_kafka_over_sasl_ssl(secure_broker, mechanism):
    conf = sasl_conf(secure_broker, mechanism)
    topic = f"secure-{mechanism.lower()}-{uuid.uuid4().hex[:6]}"
    admin = AdminClient(conf)
    admin.create_topics([NewTopic(topic, num_partitions=2)])[topic].result(TIMEOUT)
    p = Producer({**conf, "acks": "all"})
    for i in range(100):
        p.produce(topic, key=str(i), value=f"v{i}")
    assert p.flush(TIMEOUT) == 0
    c = Consumer({**conf, "group.id": topic, "auto.offset.reset": "earliest"})
    c.subscribe([topic])
    seen = set()
    deadline = time.monotonic() + TIMEOUT
    while len(seen) < 100 and time.monotonic() < deadline:
        m = c.poll(1.0)
        if m is not None and m.error() is None:
            seen.add(m.value().decode())
    c.close()
    assert seen == {f"v{i}" for i in range(100)}


def test_wrong_password_is_refused_promptly(secure_broker):
    started = time.monotonic()
    admin = AdminClient(sasl_conf(secure_broker, "SCRAM-SHA-512", password="wrong"))
    with pytest.raises(KafkaException) as err:
        admin.list_topics(timeout=10)
    assert time.monotonic() - started < 15
    # librdkafka reports the authentication failure (or gives up on brokers).
    print(err.value)
    # The right password still works on the same broker.
    AdminClient(sasl_conf(secure_broker, "SCRAM-SHA-512")).list_topics(timeout=10)


def test_kcat_over_sasl_ssl_scram(secure_broker):
    if shutil.which("kcat") is None:
        pytest.fail("kcat is not installed (scripts/test.sh installs it)")
    b = secure_broker
    common = [
        "-b", b.sasl_ssl,
        "-X", "security.protocol=SASL_SSL",
        "-X", "sasl.mechanisms=SCRAM-SHA-512",
        "-X", "sasl.username=alice",
        "-X", "sasl.password=alice-secret",
        "-X", f"ssl.ca.location={b.pki.ca}",
    ]
    topic = f"kcat-secure-{uuid.uuid4().hex[:6]}"
    lines = "\n".join(f"line {i}" for i in range(20)) + "\n"
    produced = subprocess.run(
        ["kcat", *common, "-P", "-t", topic], input=lines,
        capture_output=True, text=True, timeout=60,
    )
    assert produced.returncode == 0, produced.stderr
    consumed = subprocess.run(
        ["kcat", *common, "-C", "-t", topic, "-o", "beginning", "-e", "-q"],
        capture_output=True, text=True, timeout=60,
    )
    assert consumed.returncode == 0, consumed.stderr
    assert consumed.stdout.splitlines() == [f"line {i}" for i in range(20)]
    listed = subprocess.run(
        ["kcat", *common, "-L"], capture_output=True, text=True, timeout=60
    )
    assert listed.returncode == 0, listed.stderr
    # Told the SASL_SSL listener's address, not the plaintext one.
    assert b.sasl_ssl.split(":")[1] in listed.stdout


def test_kafka_python_over_sasl_ssl_scram(secure_broker):
    """kafka-python (a pure-Python client with its own SCRAM) produces and
    consumes over SASL_SSL."""
    import ssl

    from kafka import KafkaConsumer, KafkaProducer

    b = secure_broker
    context = ssl.create_default_context(cafile=str(b.pki.ca))
    common = dict(
        bootstrap_servers=b.sasl_ssl,
        security_protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_plain_username="alice",
        sasl_plain_password="alice-secret",
        ssl_context=context,
    )
    topic = f"kafka-python-{uuid.uuid4().hex[:6]}"
    producer = KafkaProducer(acks="all", **common)
    for i in range(30):
        producer.send(topic, key=str(i).encode(), value=f"v{i}".encode())
    producer.flush(TIMEOUT)
    producer.close()
    consumer = KafkaConsumer(
        topic,
        group_id=topic,
        auto_offset_reset="earliest",
        consumer_timeout_ms=15000,
        **common,
    )
    seen = [m.value.decode() for m, _ in zip(consumer, range(30))]
    consumer.close()
    assert seen == [f"v{i}" for i in range(30)]


def test_kafkajs_over_sasl_ssl_scram(secure_broker):
    """KafkaJS (Node.js, its own protocol and SCRAM code) round-trips over
    SASL_SSL. scripts/test.sh installs it and sets TRIBUTARY_KAFKAJS."""
    import os
    from pathlib import Path

    modules = os.environ.get("TRIBUTARY_KAFKAJS")
    if not modules or not Path(modules, "kafkajs").exists() or shutil.which("node") is None:
        pytest.fail("KafkaJS is not installed (scripts/test.sh installs it; set TRIBUTARY_KAFKAJS)")
    b = secure_broker
    topic = f"kafkajs-{uuid.uuid4().hex[:6]}"
    script = Path(__file__).with_name("kafkajs_roundtrip.js")
    result = subprocess.run(
        ["node", str(script), b.sasl_ssl, str(b.pki.ca), topic, "25"],
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ, NODE_PATH=modules),
    )
    print(result.stdout, result.stderr)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok 25"
