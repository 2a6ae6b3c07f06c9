"""Group commit (issue 17): a produce at low load is sealed as soon as the
pipeline is idle, not when the flush timer runs out; the PUT ceiling
spaces seals of segments that are not full; a topic sets its own latency
target (`tributary.flush.max.ms`). Observed through `/metrics` (flush
reasons, PUT counts), never through timings.
"""

import time
import uuid

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic

from conftest import free_port
from test_observability import scrape, value

TIMEOUT = 30


def uniq(prefix):
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def flushes(port, reason):
    return value(scrape(port), "tributary_segment_flushes_total", reason=reason) or 0.0


def puts(port):
    return value(scrape(port), "tributary_object_store_requests_total", op="put") or 0.0


def metered_broker(broker_with_args, *args):
    """A broker with these flags and its /metrics port."""
    port = free_port()
    return broker_with_args(*args, "--metrics-listen", f"127.0.0.1:{port}"), port


def produce_one_at_a_time(broker, topic, count):
    p = Producer({"bootstrap.servers": broker.bootstrap, "linger.ms": 0})
    for i in range(count):
        p.produce(topic, value=f"v{i}".encode())
        assert p.flush(TIMEOUT) == 0, "record not acknowledged"


def test_an_idle_broker_seals_without_waiting_for_the_timer(broker_with_args):
    # A flush interval of ten minutes: only group commit can answer these.
    broker, port = metered_broker(broker_with_args, "--flush-interval-ms", "600000")
    topic = uniq("gc-idle")
    produce_one_at_a_time(broker, topic, 20)
    assert flushes(port, "idle") >= 20
    assert flushes(port, "interval") == 0


def test_the_put_ceiling_spaces_seals(broker_with_args):
    broker, port = metered_broker(broker_with_args, "--max-puts-per-second", "4")
    topic = uniq("gc-ceiling")
    # The topic exists (and its first PUTs are done) before counting.
    produce_one_at_a_time(broker, topic, 1)
    before, started = puts(port), time.monotonic()
    produce_one_at_a_time(broker, topic, 30)
    elapsed = time.monotonic() - started
    made = puts(port) - before
    # At most 4 a second, plus the one the bucket allows at once: a slow
    # machine only makes fewer.
    assert made <= 4 * elapsed + 2, f"{made} PUTs in {elapsed:.1f} s"
    assert made >= 1


def test_a_topic_sets_its_own_latency_target(broker_with_args):
    broker, port = metered_broker(broker_with_args)
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    topic = uniq("gc-topic")
    admin.create_topics(
        [NewTopic(topic, 1, 1, config={"tributary.flush.max.ms": "5"})]
    )[topic].result(timeout=TIMEOUT)
    res = ConfigResource(ConfigResource.Type.TOPIC, topic)
    described = admin.describe_configs([res])[res].result(timeout=TIMEOUT)
    entry = described["tributary.flush.max.ms"]
    assert entry.value == "5" and not entry.is_default
    bad = admin.create_topics(
        [NewTopic(uniq("gc-bad"), 1, 1, config={"tributary.flush.max.ms": "-5"})]
    )
    for f in bad.values():
        try:
            f.result(timeout=TIMEOUT)
            raise AssertionError("an invalid latency target was accepted")
        except Exception as e:  # noqa: BLE001 - the client's KafkaException
            assert "tributary.flush.max.ms" in str(e) or "INVALID_CONFIG" in str(e), e
    produce_one_at_a_time(broker, topic, 5)
