"""Admin APIs that change storage, with confluent-kafka's AdminClient:
DeleteRecords, IncrementalAlterConfigs / AlterConfigs of topic retention, and
DeleteTopics removing the topic's segment objects (after the grace period)."""

import time
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    NewTopic,
    ResourceType,
)

TIMEOUT = 30

MAINTENANCE = (
    "--maintenance-interval-ms", "300",
    "--segment-grace-ms", "2000",
    "--segment-commit-deadline-ms", "1000",
    "--compaction", "false",
)


def produce(bs, topic, n, partition=0, keyed=False):
    p = Producer({"bootstrap.servers": bs, "linger.ms": 0})
    errors = []
    for i in range(n):
        key = f"k{i}".encode() if keyed else None
        p.produce(topic, key=key, value=f"r{i}".encode(), partition=partition,
                  on_delivery=lambda e, m: errors.append(e) if e else None)
        if i % 10 == 9:
            p.flush(TIMEOUT)  # several segments
    p.flush(TIMEOUT)
    assert not errors


def watermarks(bs, topic, partition=0):
    c = Consumer({"bootstrap.servers": bs, "group.id": "wm"})
    try:
        return c.get_watermark_offsets(TopicPartition(topic, partition), timeout=TIMEOUT)
    finally:
        c.close()


def segment_files(data_dir: Path):
    d = data_dir / "objects" / "segments"
    return sorted(d.iterdir()) if d.exists() else []


def wait_until(what, check, timeout=TIMEOUT):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.2)


def test_delete_records_moves_log_start(broker_with_args):
    b = broker_with_args(*MAINTENANCE)
    admin = AdminClient({"bootstrap.servers": b.bootstrap})
    admin.create_topics([NewTopic("dr", 1, 1)])["dr"].result(TIMEOUT)
    produce(b.bootstrap, "dr", 50)
    res = admin.delete_records([TopicPartition("dr", 0, 30)])
    [(tp, fut)] = res.items()
    info = fut.result(TIMEOUT)
    assert info.low_watermark == 30
    assert watermarks(b.bootstrap, "dr") == (30, 50)
    # Reading resumes at the new log start.
    c = Consumer({"bootstrap.servers": b.bootstrap, "group.id": "dr-g",
                  "auto.offset.reset": "earliest"})
    c.assign([TopicPartition("dr", 0, 0)])
    got = []
    deadline = time.monotonic() + TIMEOUT
    while len(got) < 20 and time.monotonic() < deadline:
        m = c.poll(0.5)
        if m is not None and not m.error():
            got.append(m.offset())
    c.close()
    assert got == list(range(30, 50))
    # Deleting beyond the high watermark is refused.
    with pytest.raises(Exception):
        admin.delete_records([TopicPartition("dr", 0, 500)])[TopicPartition("dr", 0, 500)].result(TIMEOUT)


def test_alter_retention_configs_take_effect(broker_with_args):
    b = broker_with_args(*MAINTENANCE)
    admin = AdminClient({"bootstrap.servers": b.bootstrap})
    admin.create_topics([NewTopic("ret", 1, 1)])["ret"].result(TIMEOUT)
    produce(b.bootstrap, "ret", 60)
    assert watermarks(b.bootstrap, "ret") == (0, 60)

    res = ConfigResource(ResourceType.TOPIC, "ret", incremental_configs=[
        ConfigEntry("retention.bytes", "500",
                    incremental_operation=AlterConfigOpType.SET)])
    admin.incremental_alter_configs([res])[res].result(TIMEOUT)
    desc = admin.describe_configs([ConfigResource(ResourceType.TOPIC, "ret")])
    [(_, fut)] = desc.items()
    assert fut.result(TIMEOUT)["retention.bytes"].value == "500"
    low = wait_until("size retention", lambda: watermarks(b.bootstrap, "ret")[0] > 0 and
                     watermarks(b.bootstrap, "ret")[0])
    assert 0 < low < 60

    # Non-incremental AlterConfigs replaces the set: retention.bytes goes
    # back to its default (-1) and an invalid value is refused.
    res = ConfigResource(ResourceType.TOPIC, "ret", set_config={"retention.ms": "86400000"})
    admin.alter_configs([res])[res].result(TIMEOUT)
    conf = admin.describe_configs([ConfigResource(ResourceType.TOPIC, "ret")])
    [(_, fut)] = conf.items()
    entries = fut.result(TIMEOUT)
    assert entries["retention.ms"].value == "86400000"
    assert entries["retention.bytes"].value == "-1"
    bad = ConfigResource(ResourceType.TOPIC, "ret", set_config={"retention.ms": "soon"})
    with pytest.raises(Exception):
        admin.alter_configs([bad])[bad].result(TIMEOUT)


def test_retention_only_deletes_under_the_delete_policy(broker_with_args):
    """A `compact`-only topic (Kafka Connect's config and offset topics,
    Schema Registry's `_schemas`) is never trimmed by retention, as on
    Kafka; `compact,delete` is."""
    b = broker_with_args(*MAINTENANCE)
    admin = AdminClient({"bootstrap.servers": b.bootstrap})
    small = {"retention.bytes": "500", "retention.ms": "100"}
    topics = {
        "kept": {"cleanup.policy": "compact", **small},
        "trimmed": {"cleanup.policy": "compact,delete", **small},
    }
    futures = admin.create_topics([NewTopic(t, 1, 1, config=c) for t, c in topics.items()])
    for f in futures.values():
        f.result(TIMEOUT)
    for t in topics:
        produce(b.bootstrap, t, 60, keyed=True)
    wait_until("retention of compact,delete", lambda: watermarks(b.bootstrap, "trimmed")[0] > 0)
    # Several more maintenance passes (every 0.3 s) have run since.
    time.sleep(1.5)
    assert watermarks(b.bootstrap, "kept") == (0, 60)


def test_deleted_topic_objects_are_removed(broker_with_args):
    b = broker_with_args(*MAINTENANCE)
    admin = AdminClient({"bootstrap.servers": b.bootstrap})
    admin.create_topics([NewTopic("gone", 2, 1)])["gone"].result(TIMEOUT)
    produce(b.bootstrap, "gone", 40)
    assert segment_files(b.data_dir)
    admin.delete_topics(["gone"])["gone"].result(TIMEOUT)
    wait_until("the deleted topic's objects to be removed",
               lambda: not segment_files(b.data_dir))
