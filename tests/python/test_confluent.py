"""confluent-kafka (librdkafka) producer and consumer against the broker."""

import time
import uuid

from confluent_kafka import Consumer, KafkaError, Producer

TIMEOUT_S = 60


def consume(bootstrap: str, topic: str, count: int, group: str):
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([topic])
    got = []
    deadline = time.monotonic() + TIMEOUT_S
    try:
        while len(got) < count and time.monotonic() < deadline:
            msg = consumer.poll(timeout=1.0)
            if msg is None:
                continue
            assert not msg.error(), msg.error()
            got.append(msg)
    finally:
        consumer.close()
    return got


def test_produce_auto_creates_topic_and_callback_reports_success(broker):
    """Produce to a topic nobody created: it is auto-created and every
    delivery callback reports success (no silent drop)."""
    topic = f"auto-{uuid.uuid4().hex[:8]}"
    reports = []
    producer = Producer({"bootstrap.servers": broker.bootstrap, "acks": "all"})
    for i in range(20):
        producer.produce(
            topic,
            key=f"k{i}",
            value=f"v{i}",
            headers=[("n", str(i).encode())],
            on_delivery=lambda err, msg: reports.append((err, msg)),
        )
    remaining = producer.flush(TIMEOUT_S)
    assert remaining == 0, f"{remaining} records still queued"
    assert len(reports) == 20
    errors = [err for err, _ in reports if err is not None]
    assert errors == [], f"delivery callback errors: {errors}"
    assert all(msg.offset() >= 0 for _, msg in reports)

    got = consume(broker.bootstrap, topic, 20, "auto-create-check")
    assert sorted(m.value().decode() for m in got) == sorted(f"v{i}" for i in range(20))
    for m in got:
        assert m.key().decode() == "k" + m.value().decode()[1:]
        assert m.headers() == [("n", m.value()[1:])]


def test_produce_without_auto_create_reports_error(broker_no_autocreate):
    """With auto-creation off, producing to a missing topic must surface an
    error in the delivery callback, not succeed silently."""
    reports = []
    producer = Producer(
        {
            "bootstrap.servers": broker_no_autocreate.bootstrap,
            "message.timeout.ms": 5000,
        }
    )
    producer.produce(
        "no-such-topic",
        value=b"lost?",
        on_delivery=lambda err, msg: reports.append(err),
    )
    producer.flush(TIMEOUT_S)
    assert len(reports) == 1
    assert reports[0] is not None, "delivery to a missing topic reported success"
    assert reports[0].code() in (
        KafkaError.UNKNOWN_TOPIC_OR_PART,
        KafkaError._UNKNOWN_TOPIC,
        KafkaError._MSG_TIMED_OUT,
    ), reports[0]
