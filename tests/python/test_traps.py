"""Regression tests for the traps other Kafka-compatible brokers fell into
(DESIGN.md, "Traps other Kafka-compatible brokers fell into").

Each test drives a real `tributary serve` process with confluent-kafka
(librdkafka): AdminClient, Producer and Consumer. Every wait is bounded; no
test asserts on timing except generous upper bounds.
"""

import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid

import pytest
from confluent_kafka import (
    TIMESTAMP_LOG_APPEND_TIME,
    Consumer,
    ConsumerGroupState,
    KafkaError,
    KafkaException,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import (
    AdminClient,
    ConfigResource,
    ConfigSource,
    NewPartitions,
    NewTopic,
    ResourceType,
)

TIMEOUT_S = 30
ADMIN_REQUEST_TIMEOUT_S = 15


def uniq(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def admin_client(broker) -> AdminClient:
    return AdminClient({"bootstrap.servers": broker.bootstrap})


def create_topic(admin: AdminClient, name: str, partitions: int = 1, config=None):
    futures = admin.create_topics(
        [NewTopic(name, num_partitions=partitions, replication_factor=1, config=config or {})],
        request_timeout=ADMIN_REQUEST_TIMEOUT_S,
    )
    futures[name].result(timeout=TIMEOUT_S)


def topic_partition_count(admin: AdminClient, name: str):
    """Partitions of `name` per a full metadata request (no topic filter, so
    nothing is auto-created), or None when the topic is not listed."""
    md = admin.list_topics(timeout=TIMEOUT_S)
    t = md.topics.get(name)
    if t is None:
        return None
    assert t.error is None, f"metadata error for {name}: {t.error}"
    return len(t.partitions)


def produce_all(bootstrap: str, topic: str, records, extra_conf=None):
    """Produce (value, kwargs) records; returns [(err, msg)] in callback order."""
    conf = {"bootstrap.servers": bootstrap, "acks": "all", "message.timeout.ms": 20000}
    conf.update(extra_conf or {})
    producer = Producer(conf)
    reports = []
    for value, kwargs in records:
        producer.produce(
            topic, value=value, on_delivery=lambda err, msg: reports.append((err, msg)), **kwargs
        )
    remaining = producer.flush(TIMEOUT_S)
    assert remaining == 0, f"{remaining} records still queued after {TIMEOUT_S}s"
    assert len(reports) == len(records)
    return reports


def assert_delivered(reports):
    errors = [err for err, _ in reports if err is not None]
    assert errors == [], f"delivery errors: {errors}"


def consumer_conf(broker, group, **extra):
    conf = {
        "bootstrap.servers": broker.bootstrap,
        "group.id": group,
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
    }
    conf.update(extra)
    return conf


def poll_until(consumer: Consumer, count: int, timeout_s: float = TIMEOUT_S):
    got = []
    deadline = time.monotonic() + timeout_s
    while len(got) < count and time.monotonic() < deadline:
        msg = consumer.poll(timeout=0.5)
        if msg is None:
            continue
        if msg.error():
            if msg.error().code() == KafkaError._PARTITION_EOF:
                continue
            pytest.fail(f"consumer error: {msg.error()}")
        got.append(msg)
    return got


def wait_for(predicate, timeout_s: float = TIMEOUT_S, interval_s: float = 0.25):
    """Call predicate until it returns a truthy value; returns the last value."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval_s)


def kafka_error_code(excinfo):
    err = excinfo.value.args[0]
    assert isinstance(err, KafkaError), f"unexpected exception payload {err!r}"
    return err.code()


# 1. ListGroups / DescribeGroups ------------------------------------------------


def test_list_and_describe_consumer_groups(broker):
    topic = uniq("groups")
    group = uniq("g")
    admin = admin_client(broker)
    create_topic(admin, topic, partitions=2)
    assert_delivered(produce_all(broker.bootstrap, topic, [(b"x", {"partition": 0})]))

    consumer = Consumer(consumer_conf(broker, group, **{"session.timeout.ms": 10000}))
    try:
        consumer.subscribe([topic])
        got = poll_until(consumer, 1)
        assert len(got) == 1, "consumer got no record"
        consumer.commit(message=got[0], asynchronous=False)

        listed = admin.list_consumer_groups(request_timeout=ADMIN_REQUEST_TIMEOUT_S).result(
            timeout=TIMEOUT_S
        )
        assert listed.errors == [], listed.errors
        ids = {g.group_id for g in listed.valid}
        assert group in ids, f"ListGroups omitted active group {group}: {ids}"
        # ListGroups v4+ state filter.
        stable = admin.list_consumer_groups(
            states={ConsumerGroupState.STABLE}, request_timeout=ADMIN_REQUEST_TIMEOUT_S
        ).result(timeout=TIMEOUT_S)
        assert group in {g.group_id for g in stable.valid}
        empty = admin.list_consumer_groups(
            states={ConsumerGroupState.EMPTY}, request_timeout=ADMIN_REQUEST_TIMEOUT_S
        ).result(timeout=TIMEOUT_S)
        assert group not in {g.group_id for g in empty.valid}

        desc = admin.describe_consumer_groups(
            [group], request_timeout=ADMIN_REQUEST_TIMEOUT_S
        )[group].result(timeout=TIMEOUT_S)
        assert desc.group_id == group
        assert desc.state == ConsumerGroupState.STABLE, desc.state
        assert len(desc.members) == 1, desc.members
        member = desc.members[0]
        assert member.member_id, "empty member id"
        assigned = {(tp.topic, tp.partition) for tp in member.assignment.topic_partitions}
        assert assigned == {(topic, 0), (topic, 1)}, assigned
        assert desc.coordinator is not None
    finally:
        consumer.close()

    # A group with committed offsets but no members is still listed (Kafka:
    # state Empty), and describing it shows no members.
    def empty_listed():
        listed = admin.list_consumer_groups(request_timeout=ADMIN_REQUEST_TIMEOUT_S).result(
            timeout=TIMEOUT_S
        )
        return {g.group_id: g for g in listed.valid}.get(group)

    def listed_as_empty():
        g = empty_listed()
        return g is not None and g.state == ConsumerGroupState.EMPTY

    assert wait_for(listed_as_empty, 15), (
        f"group {group} not listed as EMPTY after close: {empty_listed()}"
    )
    desc = admin.describe_consumer_groups([group], request_timeout=ADMIN_REQUEST_TIMEOUT_S)[
        group
    ].result(timeout=TIMEOUT_S)
    assert desc.members == [] and desc.state == ConsumerGroupState.EMPTY, (desc.state, desc.members)


# 2. DescribeConfigs ---------------------------------------------------------------


def test_describe_configs_topic_and_broker(broker):
    topic = uniq("configs")
    admin = admin_client(broker)
    create_topic(admin, topic, config={"retention.ms": "123456"})

    res = ConfigResource(ResourceType.TOPIC, topic)
    entries = admin.describe_configs([res], request_timeout=ADMIN_REQUEST_TIMEOUT_S)[res].result(
        timeout=TIMEOUT_S
    )
    assert entries, "DescribeConfigs returned no entries for the topic"
    for name in ("retention.ms", "max.message.bytes", "cleanup.policy"):
        assert name in entries, f"{name} missing from topic configs: {sorted(entries)}"
        assert entries[name].value not in (None, ""), f"{name} has no value"
    assert entries["retention.ms"].value == "123456"
    assert entries["retention.ms"].source == ConfigSource.DYNAMIC_TOPIC_CONFIG.value
    assert not entries["retention.ms"].is_default
    assert entries["cleanup.policy"].value in ("delete", "compact", "compact,delete", "delete,compact")
    assert int(entries["max.message.bytes"].value) > 0

    bres = ConfigResource(ResourceType.BROKER, "0")
    bentries = admin.describe_configs([bres], request_timeout=ADMIN_REQUEST_TIMEOUT_S)[
        bres
    ].result(timeout=TIMEOUT_S)
    assert bentries, "DescribeConfigs returned no entries for broker 0"
    print(f"broker 0 configs: {sorted(bentries)}")


# 3. CreatePartitions -----------------------------------------------------------------


def test_create_partitions_grow_and_refuse_shrink(broker):
    topic = uniq("parts")
    admin = admin_client(broker)
    create_topic(admin, topic, partitions=3)
    assert topic_partition_count(admin, topic) == 3

    fut = admin.create_partitions(
        [NewPartitions(topic, 5)], request_timeout=ADMIN_REQUEST_TIMEOUT_S
    )
    assert set(fut) == {topic}, f"CreatePartitions answered for {set(fut)}"
    fut[topic].result(timeout=TIMEOUT_S)
    assert wait_for(lambda: topic_partition_count(admin, topic) == 5, 10), (
        f"metadata shows {topic_partition_count(admin, topic)} partitions, want 5"
    )

    fut = admin.create_partitions(
        [NewPartitions(topic, 2)], request_timeout=ADMIN_REQUEST_TIMEOUT_S
    )
    with pytest.raises(KafkaException) as excinfo:
        fut[topic].result(timeout=TIMEOUT_S)
    assert kafka_error_code(excinfo) == KafkaError.INVALID_PARTITIONS, excinfo.value
    assert topic_partition_count(admin, topic) == 5

    reports = produce_all(broker.bootstrap, topic, [(b"to-p4", {"partition": 4})])
    assert_delivered(reports)
    assert reports[0][1].partition() == 4
    assert reports[0][1].offset() == 0

    consumer = Consumer(consumer_conf(broker, uniq("g")))
    try:
        consumer.assign([TopicPartition(topic, 4, 0)])
        got = poll_until(consumer, 1)
        assert [m.value() for m in got] == [b"to-p4"]
    finally:
        consumer.close()


# 4. OffsetCommit metadata --------------------------------------------------------------


def test_offset_commit_metadata_returned_by_offset_fetch(broker):
    topic = uniq("meta")
    group = uniq("g")
    admin = admin_client(broker)
    create_topic(admin, topic, partitions=2)

    consumer = Consumer(consumer_conf(broker, group))
    try:
        committed = consumer.commit(
            offsets=[
                TopicPartition(topic, 0, 7, metadata="hello"),
                TopicPartition(topic, 1, 3, metadata="world-\u00e9"),
            ],
            asynchronous=False,
        )
        assert all(tp.error is None for tp in committed), committed
    finally:
        consumer.close()

    # A fresh consumer in the same group: OffsetFetch must return both the
    # offsets and their metadata.
    consumer = Consumer(consumer_conf(broker, group))
    try:
        got = consumer.committed(
            [TopicPartition(topic, 0), TopicPartition(topic, 1)], timeout=TIMEOUT_S
        )
    finally:
        consumer.close()
    by_part = {tp.partition: tp for tp in got}
    assert all(tp.error is None for tp in got), got
    assert by_part[0].offset == 7 and by_part[1].offset == 3, got
    assert by_part[0].metadata == "hello", f"metadata lost: {by_part[0].metadata!r}"
    assert by_part[1].metadata == "world-\u00e9", f"metadata lost: {by_part[1].metadata!r}"

    # AdminClient.list_consumer_group_offsets (OffsetFetch too) agrees.
    from confluent_kafka import ConsumerGroupTopicPartitions

    res = admin.list_consumer_group_offsets(
        [ConsumerGroupTopicPartitions(group, [TopicPartition(topic, 0)])],
        request_timeout=ADMIN_REQUEST_TIMEOUT_S,
    )[group].result(timeout=TIMEOUT_S)
    (tp,) = res.topic_partitions
    assert (tp.offset, tp.metadata) == (7, "hello"), tp


# 5. ListOffsets by timestamp -----------------------------------------------------------


def test_list_offsets_by_timestamp(broker):
    topic = uniq("times")
    admin = admin_client(broker)
    create_topic(admin, topic)
    # One record per batch (flush between), timestamps 1000..5000 (CreateTime).
    for i in range(5):
        assert_delivered(
            produce_all(broker.bootstrap, topic, [(f"r{i}".encode(), {"timestamp": 1000 * (i + 1)})])
        )
    # Plus one batch holding several records (timestamps 6000..8000), to
    # exercise a lookup that lands inside a batch.
    assert_delivered(
        produce_all(
            broker.bootstrap,
            topic,
            [(f"r{i}".encode(), {"timestamp": 1000 * (i + 1)}) for i in range(5, 8)],
            {"linger.ms": 200},
        )
    )

    consumer = Consumer(consumer_conf(broker, uniq("g")))
    try:
        def lookup(ts):
            (tp,) = consumer.offsets_for_times([TopicPartition(topic, 0, ts)], timeout=TIMEOUT_S)
            assert tp.error is None, tp
            return tp.offset

        assert lookup(2500) == 2, "ts 2500 must map to the record with ts 3000 (offset 2)"
        assert lookup(3000) == 2
        assert lookup(0) == 0
        assert lookup(1000) == 0
        assert lookup(5000) == 4
        assert lookup(6500) == 6, "lookup inside a multi-record batch"
        assert lookup(8000) == 7
        # Kafka answers offset -1 (and timestamp -1) when no record has a
        # timestamp >= the target; librdkafka passes the -1 through
        # (== OFFSET_END).
        assert lookup(9000) == -1
        assert lookup(10**12) == -1

        # The records really carry those timestamps.
        consumer.assign([TopicPartition(topic, 0, 0)])
        got = poll_until(consumer, 8)
        assert [m.timestamp()[1] for m in got] == [1000 * (i + 1) for i in range(8)]
    finally:
        consumer.close()


# 6. Invalid topic names --------------------------------------------------------------


INVALID_TOPIC_NAMES = ["bad name", "a/b", "", "x" * 250, ".", "..", "caf\u00e9", "a:b"]


@pytest.mark.parametrize(
    "name", INVALID_TOPIC_NAMES, ids=["space", "slash", "empty", "250chars", "dot", "dotdot", "nonascii", "colon"]
)
def test_create_topic_invalid_name_refused(broker, name):
    admin = admin_client(broker)
    try:
        futures = admin.create_topics(
            [NewTopic(name, num_partitions=1, replication_factor=1)],
            request_timeout=ADMIN_REQUEST_TIMEOUT_S,
        )
    except (ValueError, KafkaException) as e:
        # librdkafka refuses some names itself before sending anything (the
        # broker is then not exercised by this name).
        print(f"client refused {name!r} locally: {e}")
        return
    with pytest.raises(KafkaException) as excinfo:
        futures[name].result(timeout=TIMEOUT_S)
    assert kafka_error_code(excinfo) == KafkaError.TOPIC_EXCEPTION, excinfo.value
    md = admin.list_topics(timeout=TIMEOUT_S)
    assert name not in md.topics, f"invalid topic {name!r} exists after refused create"


def test_create_topic_249_char_name_accepted(broker):
    """249 characters is Kafka's maximum topic name length."""
    name = "y" * 249
    admin = admin_client(broker)
    create_topic(admin, name)
    assert topic_partition_count(admin, name) == 1


def test_produce_to_invalid_topic_name_fails(broker):
    """The default broker auto-creates topics; it must still not create (nor
    accept records for) a topic named "bad name"."""
    reports = []
    producer = Producer(
        {"bootstrap.servers": broker.bootstrap, "message.timeout.ms": 5000}
    )
    try:
        producer.produce("bad name", value=b"v", on_delivery=lambda err, msg: reports.append(err))
    except KafkaException as e:
        print(f"produce() refused locally: {e}")
    else:
        assert producer.flush(TIMEOUT_S) == 0
        assert len(reports) == 1
        assert reports[0] is not None, "record to topic 'bad name' reported delivered"
        print(f"delivery error: {reports[0]}")
    md = admin_client(broker).list_topics(timeout=TIMEOUT_S)
    assert "bad name" not in md.topics, "topic 'bad name' was auto-created"


# 7. max.message.bytes ------------------------------------------------------------------


BIG_PRODUCER_CONF = {
    "compression.type": "none",
    "message.max.bytes": 10_000_000,
    "linger.ms": 0,
    "message.timeout.ms": 20000,
}


def test_topic_max_message_bytes_enforced(broker):
    topic = uniq("maxmsg")
    admin = admin_client(broker)
    create_topic(admin, topic, config={"max.message.bytes": "2000"})

    small = produce_all(broker.bootstrap, topic, [(b"s" * 500, {})], BIG_PRODUCER_CONF)
    assert_delivered(small)
    big = produce_all(broker.bootstrap, topic, [(b"b" * 10_240, {})], BIG_PRODUCER_CONF)
    err = big[0][0]
    assert err is not None, "10 KB record accepted by a topic with max.message.bytes=2000"
    assert err.code() == KafkaError.MSG_SIZE_TOO_LARGE, err
    # The small one still works afterwards, at the next offset.
    again = produce_all(broker.bootstrap, topic, [(b"t" * 500, {})], BIG_PRODUCER_CONF)
    assert_delivered(again)
    assert again[0][1].offset() == small[0][1].offset() + 1


def test_broker_max_message_bytes_enforced(broker_with_args):
    broker = broker_with_args("--max-message-bytes", "5000")
    topic = uniq("brokermax")
    small = produce_all(broker.bootstrap, topic, [(b"s" * 500, {})], BIG_PRODUCER_CONF)
    assert_delivered(small)
    big = produce_all(broker.bootstrap, topic, [(b"b" * 20_480, {})], BIG_PRODUCER_CONF)
    err = big[0][0]
    assert err is not None, "20 KB record accepted by a broker with --max-message-bytes 5000"
    assert err.code() == KafkaError.MSG_SIZE_TOO_LARGE, err


# 8. Dead members evicted -------------------------------------------------------------


DEAD_CONSUMER_SCRIPT = textwrap.dedent(
    """
    import sys
    from confluent_kafka import Consumer
    bootstrap, group, topic = sys.argv[1:4]
    c = Consumer({
        "bootstrap.servers": bootstrap,
        "group.id": group,
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
        "session.timeout.ms": 6000,
        "heartbeat.interval.ms": 1000,
    })
    c.subscribe([topic])
    while True:  # keep polling/heartbeating until SIGKILLed, never close()
        m = c.poll(0.5)
        if m is not None and not m.error():
            print("CONSUMED", m.partition(), m.offset(), flush=True)
    """
)


@pytest.mark.parametrize("dead", [1, 2], ids=["one-dead", "two-dead"])
def test_dead_members_evicted_and_new_member_consumes(broker, dead):
    """Members SIGKILLed (no LeaveGroup) must be evicted at their session
    timeout so that a new member's rebalance completes; the dead leader must
    not keep the new member looping on REBALANCE_IN_PROGRESS."""
    topic = uniq("dead")
    group = uniq("g")
    admin = admin_client(broker)
    create_topic(admin, topic, partitions=2)
    assert_delivered(
        produce_all(broker.bootstrap, topic, [(b"first-0", {"partition": 0}), (b"first-1", {"partition": 1})])
    )

    procs = []
    outputs = []
    try:
        for _ in range(dead):
            proc = subprocess.Popen(
                [sys.executable, "-c", DEAD_CONSUMER_SCRIPT, broker.bootstrap, group, topic],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            lines = []
            threading.Thread(
                target=lambda p=proc, l=lines: l.extend(iter(p.stdout.readline, "")), daemon=True
            ).start()
            procs.append(proc)
            outputs.append(lines)

        def group_ready():
            if not all(any(l.startswith("CONSUMED") for l in out) for out in outputs):
                return False
            desc = admin.describe_consumer_groups([group], request_timeout=ADMIN_REQUEST_TIMEOUT_S)[
                group
            ].result(timeout=TIMEOUT_S)
            return (
                desc.state == ConsumerGroupState.STABLE
                and len(desc.members) == dead
                and all(m.assignment.topic_partitions for m in desc.members)
            )

        assert wait_for(group_ready, 60, 0.5), f"dead-to-be consumers never settled: {outputs}"
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGKILL)
        for proc in procs:
            proc.wait(timeout=10)

    assigned = []
    consumer = Consumer(
        consumer_conf(
            broker, group, **{"session.timeout.ms": 6000, "heartbeat.interval.ms": 1000}
        )
    )
    try:
        consumer.subscribe([topic], on_assign=lambda c, parts: assigned.append(
            sorted((tp.topic, tp.partition) for tp in parts)
        ))
        assert_delivered(produce_all(broker.bootstrap, topic, [(b"after-kill", {"partition": 1})]))
        start = time.monotonic()
        got = []
        deadline = start + 30
        want = {b"first-0", b"first-1", b"after-kill"}  # nobody committed: B starts at 0
        while time.monotonic() < deadline and not want <= {m.value() for m in got}:
            msg = consumer.poll(timeout=0.5)
            if msg is None:
                continue
            if msg.error():
                pytest.fail(f"consumer B error: {msg.error()}")
            got.append(msg)
        print(f"consumer B assignments: {assigned}; got {len(got)} records in {time.monotonic() - start:.1f}s")
        assert assigned, "consumer B never got an assignment within 30 s (dead member not evicted?)"
        assert assigned[-1] == [(topic, 0), (topic, 1)], assigned
        values = [m.value() for m in got]
        assert want <= set(values), f"consumer B got {values} within 30 s"

        desc = admin.describe_consumer_groups([group], request_timeout=ADMIN_REQUEST_TIMEOUT_S)[
            group
        ].result(timeout=TIMEOUT_S)
        assert desc.state == ConsumerGroupState.STABLE and len(desc.members) == 1, (
            desc.state, [m.member_id for m in desc.members]
        )
    finally:
        consumer.close()

    desc = admin.describe_consumer_groups([group], request_timeout=ADMIN_REQUEST_TIMEOUT_S)[
        group
    ].result(timeout=TIMEOUT_S)
    assert desc.members == [], f"members left after B closed: {desc.members}"


# 9. Fetch fast path --------------------------------------------------------------------


def test_fetch_throughput_default_settings(broker):
    topic = uniq("fast")
    partitions = 6
    total = 20_000
    size = 1024
    admin = admin_client(broker)
    create_topic(admin, topic, partitions=partitions)

    producer = Producer(
        {"bootstrap.servers": broker.bootstrap, "linger.ms": 20, "message.timeout.ms": 60000}
    )
    errors = []
    delivered = [0]

    def on_delivery(err, msg):
        if err is not None:
            errors.append(err)
        else:
            delivered[0] += 1

    for i in range(total):
        p = i % partitions
        seq = i // partitions
        value = f"{p}:{seq}:".encode().ljust(size, b".")
        while True:
            try:
                producer.produce(topic, value=value, partition=p, on_delivery=on_delivery)
                break
            except BufferError:
                producer.poll(0.1)
        producer.poll(0)
    assert producer.flush(60) == 0
    assert errors == [], errors[:5]
    assert delivered[0] == total

    consumer = Consumer(consumer_conf(broker, uniq("g")))  # default fetch.wait.max.ms
    try:
        consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
        next_seq = {p: 0 for p in range(partitions)}
        next_offset = {p: 0 for p in range(partitions)}
        count = 0
        start = time.monotonic()
        deadline = start + 60
        while count < total and time.monotonic() < deadline:
            msgs = consumer.consume(num_messages=1000, timeout=0.5)
            for m in msgs:
                assert not m.error(), m.error()
                p = m.partition()
                mp, mseq, _ = m.value().split(b":", 2)
                assert int(mp) == p
                assert int(mseq) == next_seq[p], f"partition {p}: got seq {mseq}, want {next_seq[p]}"
                assert m.offset() == next_offset[p], f"partition {p}: offset {m.offset()}"
                next_seq[p] += 1
                next_offset[p] += 1
                count += 1
        elapsed = time.monotonic() - start
    finally:
        consumer.close()
    mb = count * size / 1e6
    print(f"\nfetch: {count} records, {mb:.1f} MB in {elapsed:.2f}s = {mb / elapsed:.1f} MB/s")
    assert count == total, f"consumed {count}/{total} within 60 s"
    assert all(next_seq[p] == total // partitions + (1 if p < total % partitions else 0) for p in range(partitions))


def test_fetch_from_offset_inside_batch(broker):
    """A fetch whose offset falls inside a batch must return that batch (the
    client drops the records before the offset); skipping it hangs clients."""
    topic = uniq("midbatch")
    admin = admin_client(broker)
    create_topic(admin, topic)
    reports = produce_all(
        broker.bootstrap, topic, [(f"r{i}".encode(), {}) for i in range(10)], {"linger.ms": 500}
    )
    assert_delivered(reports)
    assert [msg.offset() for _, msg in reports] == list(range(10))
    assert_delivered(produce_all(broker.bootstrap, topic, [(b"r10", {})]))

    for start_at in (5, 9, 10):
        consumer = Consumer(consumer_conf(broker, uniq("g")))
        try:
            consumer.assign([TopicPartition(topic, 0, start_at)])
            got = poll_until(consumer, 11 - start_at)
            assert [(m.offset(), m.value()) for m in got] == [
                (i, f"r{i}".encode()) for i in range(start_at, 11)
            ], f"start at {start_at}"
        finally:
            consumer.close()


# 10. DeleteTopics -----------------------------------------------------------------


def test_delete_topic_and_recreate_starts_at_zero(broker):
    topic = uniq("del")
    admin = admin_client(broker)
    create_topic(admin, topic, partitions=2)
    assert_delivered(
        produce_all(broker.bootstrap, topic, [(f"old{i}".encode(), {"partition": i % 2}) for i in range(10)])
    )

    futures = admin.delete_topics([topic], request_timeout=ADMIN_REQUEST_TIMEOUT_S)
    futures[topic].result(timeout=TIMEOUT_S)
    assert wait_for(lambda: topic_partition_count(admin, topic) is None, 10), (
        f"{topic} still listed after DeleteTopics"
    )

    # Deleting again: UNKNOWN_TOPIC_OR_PART.
    with pytest.raises(KafkaException) as excinfo:
        admin.delete_topics([topic], request_timeout=ADMIN_REQUEST_TIMEOUT_S)[topic].result(
            timeout=TIMEOUT_S
        )
    assert kafka_error_code(excinfo) == KafkaError.UNKNOWN_TOPIC_OR_PART, excinfo.value

    create_topic(admin, topic, partitions=1)
    assert topic_partition_count(admin, topic) == 1

    reports = produce_all(broker.bootstrap, topic, [(b"new0", {"partition": 0})])
    assert_delivered(reports)
    assert reports[0][1].offset() == 0, f"re-created topic starts at {reports[0][1].offset()}"

    consumer = Consumer(consumer_conf(broker, uniq("g")))
    try:
        lo, hi = consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=TIMEOUT_S)
        assert (lo, hi) == (0, 1), (lo, hi)
        consumer.assign([TopicPartition(topic, 0, 0)])
        got = poll_until(consumer, 1)
        assert [(m.offset(), m.value()) for m in got] == [(0, b"new0")]
        # Nothing from the old incarnation follows.
        extra = poll_until(consumer, 1, timeout_s=2)
        assert extra == [], [m.value() for m in extra]
    finally:
        consumer.close()


# 11. DescribeCluster ------------------------------------------------------------


def test_describe_cluster(broker):
    admin = admin_client(broker)
    result = admin.describe_cluster(request_timeout=ADMIN_REQUEST_TIMEOUT_S).result(
        timeout=TIMEOUT_S
    )
    assert result.cluster_id, f"empty cluster id: {result.cluster_id!r}"
    assert len(result.nodes) == 1, result.nodes
    node = result.nodes[0]
    assert node.id == 0
    assert (node.host, node.port) == ("127.0.0.1", broker.port)
    assert result.controller is not None and result.controller.id == 0
    # The cluster id is stable across requests.
    again = admin.describe_cluster(request_timeout=ADMIN_REQUEST_TIMEOUT_S).result(timeout=TIMEOUT_S)
    assert again.cluster_id == result.cluster_id


# Topic config values ------------------------------------------------------------


@pytest.mark.parametrize(
    "config",
    [
        {"max.message.bytes": "abc"},
        {"max.message.bytes": "-5"},
        {"retention.ms": "abc"},
        {"cleanup.policy": "banana"},
    ],
    ids=["mmb-abc", "mmb-negative", "retention-abc", "cleanup-banana"],
)
def test_create_topic_invalid_config_value_refused(broker, config):
    name = uniq("badcfg")
    admin = admin_client(broker)
    futures = admin.create_topics(
        [NewTopic(name, num_partitions=1, replication_factor=1, config=config)],
        request_timeout=ADMIN_REQUEST_TIMEOUT_S,
    )
    with pytest.raises(KafkaException) as excinfo:
        futures[name].result(timeout=TIMEOUT_S)
    assert kafka_error_code(excinfo) == KafkaError.INVALID_CONFIG, excinfo.value


def test_delete_topic_drops_committed_offsets(broker):
    """Kafka removes a group's committed offsets for deleted partitions; a
    stale offset on the re-created topic would make the group skip records."""
    topic = uniq("delofs")
    group = uniq("g")
    admin = admin_client(broker)
    create_topic(admin, topic)
    consumer = Consumer(consumer_conf(broker, group))
    try:
        consumer.commit(offsets=[TopicPartition(topic, 0, 10)], asynchronous=False)
    finally:
        consumer.close()

    admin.delete_topics([topic], request_timeout=ADMIN_REQUEST_TIMEOUT_S)[topic].result(
        timeout=TIMEOUT_S
    )
    assert wait_for(lambda: topic_partition_count(admin, topic) is None, 10)
    create_topic(admin, topic)

    consumer = Consumer(consumer_conf(broker, group))
    try:
        (tp,) = consumer.committed([TopicPartition(topic, 0)], timeout=TIMEOUT_S)
    finally:
        consumer.close()
    assert tp.offset == -1001, f"re-created topic has committed offset {tp.offset} (OFFSET_INVALID expected)"


def test_log_append_time_topic_overrides_timestamps(broker):
    topic = uniq("lat")
    admin = admin_client(broker)
    create_topic(admin, topic, config={"message.timestamp.type": "LogAppendTime"})
    reports = produce_all(broker.bootstrap, topic, [(b"x", {"timestamp": 1000})])
    assert_delivered(reports)
    consumer = Consumer(consumer_conf(broker, uniq("g")))
    try:
        consumer.assign([TopicPartition(topic, 0, 0)])
        (msg,) = poll_until(consumer, 1)
        ts_type, ts = msg.timestamp()
        # Broker time, not the producer's 1000 (no timing assertion: any
        # wall-clock-like value will do).
        assert (ts_type, ts > 10**12) == (TIMESTAMP_LOG_APPEND_TIME, True), msg.timestamp()
        (tp,) = consumer.offsets_for_times([TopicPartition(topic, 0, 2500)], timeout=TIMEOUT_S)
        assert tp.offset == 0, tp
    finally:
        consumer.close()
