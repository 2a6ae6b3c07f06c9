"""The rest of Kafka's semantics (issue 16): internal topic names, every topic
config Kafka defines, per-record produce errors, and the smaller gaps
(ListOffsets max-timestamp, timestamps of found records).

Each test drives a real `tributary serve` with confluent-kafka (librdkafka)
or kcat. Every wait is bounded.
"""

import shutil
import subprocess
import uuid

import pytest
from confluent_kafka import KafkaError, KafkaException, Producer
from confluent_kafka.admin import AdminClient, NewTopic

TIMEOUT_S = 30
ADMIN_REQUEST_TIMEOUT_S = 15


def uniq(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def admin_client(broker) -> AdminClient:
    return AdminClient({"bootstrap.servers": broker.bootstrap})


def error_of(excinfo) -> KafkaError:
    err = excinfo.value.args[0]
    assert isinstance(err, KafkaError), f"unexpected exception payload {err!r}"
    return err


# Internal topics ------------------------------------------------------------------


@pytest.mark.parametrize("name", ["__consumer_offsets", "__transaction_state"])
def test_internal_topics_are_not_created_or_written(broker, name):
    admin = admin_client(broker)

    # CreateTopics: refused with INVALID_REQUEST, as Kafka refuses its
    # reserved names.
    futures = admin.create_topics(
        [NewTopic(name, num_partitions=1, replication_factor=1)],
        request_timeout=ADMIN_REQUEST_TIMEOUT_S,
    )
    with pytest.raises(KafkaException) as excinfo:
        futures[name].result(timeout=TIMEOUT_S)
    err = error_of(excinfo)
    assert err.code() == KafkaError.INVALID_REQUEST, err
    assert "internal topic" in err.str(), err

    # Metadata with auto-creation on (the default broker auto-creates): the
    # name is not created. This is what `kcat -L -t __consumer_offsets` did.
    if shutil.which("kcat") is None:
        pytest.fail("kcat is not installed (scripts/test.sh installs it)")
    listed = subprocess.run(
        ["kcat", "-L", "-b", broker.bootstrap, "-t", name, "-m", "15"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    print(listed.stdout, listed.stderr)
    md = admin.list_topics(timeout=TIMEOUT_S)
    assert name not in md.topics, f"{name} was auto-created: {md.topics[name]}"

    # Produce: refused (INVALID_TOPIC_EXCEPTION, "Cannot append to internal
    # topic"), and still nothing is created.
    reports = []
    producer = Producer(
        {"bootstrap.servers": broker.bootstrap, "message.timeout.ms": 5000}
    )
    producer.produce(name, value=b"v", on_delivery=lambda err, msg: reports.append(err))
    assert producer.flush(TIMEOUT_S) == 0
    assert len(reports) == 1 and reports[0] is not None, reports
    print(f"delivery error: {reports[0]}")
    assert reports[0].code() in (
        KafkaError.TOPIC_EXCEPTION,
        KafkaError._MSG_TIMED_OUT,
        KafkaError.UNKNOWN_TOPIC_OR_PART,
    ), reports[0]
    md = admin.list_topics(timeout=TIMEOUT_S)
    assert name not in md.topics, f"{name} exists after a produce"


def test_double_underscore_user_topics_still_work(broker):
    """Only Kafka's own names are reserved: Debezium's heartbeat topics (and
    others) start with two underscores too."""
    topic = uniq("__debezium-heartbeat.db")
    reports = []
    producer = Producer({"bootstrap.servers": broker.bootstrap})
    producer.produce(topic, value=b"beat", on_delivery=lambda err, msg: reports.append(err))
    assert producer.flush(TIMEOUT_S) == 0
    assert reports == [None], reports
    md = admin_client(broker).list_topics(topic=topic, timeout=TIMEOUT_S)
    assert not md.topics[topic].error, md.topics[topic].error


# compression.type --------------------------------------------------------------


@pytest.mark.parametrize("codec", ["gzip", "snappy", "lz4", "zstd", "uncompressed"])
def test_topic_compression_type_recompresses(broker, codec):
    """The topic's codec is what is stored (Kafka recompresses when it
    differs from the producer's); consumers read the records unchanged, and
    an idempotent producer's batches keep their sequence numbers."""
    from confluent_kafka import Consumer

    topic = uniq(f"codec-{codec}")
    admin = admin_client(broker)
    futures = admin.create_topics(
        [NewTopic(topic, num_partitions=1, replication_factor=1,
                  config={"compression.type": codec})],
        request_timeout=ADMIN_REQUEST_TIMEOUT_S,
    )
    futures[topic].result(timeout=TIMEOUT_S)
    producer_codec = "none" if codec != "uncompressed" else "zstd"
    producer = Producer({
        "bootstrap.servers": broker.bootstrap,
        "compression.type": producer_codec,
        "enable.idempotence": True,
        "linger.ms": 20,
    })
    sent = [(f"k{i % 7}".encode(), (f"value {i} " * 20).encode(),
             [("h", str(i).encode()), ("h", b"dup")]) for i in range(2000)]
    errors = []
    for key, value, headers in sent:
        producer.produce(topic, key=key, value=value, headers=headers,
                         on_delivery=lambda err, msg: err and errors.append(err))
    assert producer.flush(TIMEOUT_S) == 0
    assert not errors, errors[:3]

    consumer = Consumer({
        "bootstrap.servers": broker.bootstrap,
        "group.id": uniq("codec"),
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
    })
    consumer.subscribe([topic])
    got = []
    try:
        import time
        deadline = time.monotonic() + TIMEOUT_S
        while len(got) < len(sent) and time.monotonic() < deadline:
            msg = consumer.poll(1.0)
            if msg is None:
                continue
            assert not msg.error(), msg.error()
            got.append((msg.key(), msg.value(), msg.headers()))
    finally:
        consumer.close()
    assert got == sent


# Group start-up ----------------------------------------------------------------


def test_members_started_together_settle_in_one_rebalance(broker):
    """Three cooperative-sticky consumers subscribing a quarter second apart
    to six partitions: each is assigned two partitions once, and nothing is
    revoked (the first rebalance waits for a quiet period instead of
    completing at the first join)."""
    import threading
    import time

    from confluent_kafka import Consumer

    topic = uniq("startup")
    admin = admin_client(broker)
    admin.create_topics(
        [NewTopic(topic, num_partitions=6, replication_factor=1)],
        request_timeout=ADMIN_REQUEST_TIMEOUT_S,
    )[topic].result(timeout=TIMEOUT_S)
    group = uniq("startup-group")
    events = []  # (consumer, "assign" | "revoke", partitions), before closing
    lock = threading.Lock()
    stop = threading.Event()

    def run(n):
        c = Consumer({
            "bootstrap.servers": broker.bootstrap,
            "group.id": group,
            "partition.assignment.strategy": "cooperative-sticky",
            "session.timeout.ms": 10000,
        })

        def note(kind):
            def callback(consumer, parts):
                with lock:
                    if parts and not stop.is_set():
                        events.append((n, kind, sorted(p.partition for p in parts)))
            return callback

        c.subscribe([topic], on_assign=note("assign"), on_revoke=note("revoke"))
        try:
            while not stop.is_set():
                c.poll(0.1)
        finally:
            c.close()

    threads = []
    for n in range(3):
        t = threading.Thread(target=run, args=(n,), daemon=True)
        t.start()
        threads.append(t)
        time.sleep(0.25)

    def assigned():
        with lock:
            return [e for e in events if e[1] == "assign"]

    deadline = time.monotonic() + TIMEOUT_S
    while len(assigned()) < 3 and time.monotonic() < deadline:
        time.sleep(0.1)
    # Time for any further rebalance to show itself.
    time.sleep(3.0)
    with lock:
        stop.set()
        seen = list(events)
    for t in threads:
        t.join(timeout=TIMEOUT_S)
    print(seen)
    assert sorted(n for n, kind, _ in seen if kind == "assign") == [0, 1, 2], seen
    assert all(len(parts) == 2 for _, kind, parts in seen if kind == "assign"), seen
    assert not [e for e in seen if e[1] == "revoke"], f"partitions moved after start: {seen}"


def test_lone_consumer_gets_records_in_its_first_one_second_poll(broker):
    """The seed's example: a new group's only consumer subscribes and polls
    once for one second, and gets the record."""
    from confluent_kafka import Consumer

    topic = uniq("first-poll")
    producer = Producer({"bootstrap.servers": broker.bootstrap})
    producer.produce(topic, value=b"hello")
    assert producer.flush(TIMEOUT_S) == 0
    c = Consumer({
        "bootstrap.servers": broker.bootstrap,
        "group.id": uniq("first-poll"),
        "auto.offset.reset": "earliest",
    })
    c.subscribe([topic])
    try:
        msg = c.poll(timeout=1.0)
    finally:
        c.close()
    assert msg is not None and not msg.error(), msg and msg.error()
    assert msg.value() == b"hello"


# Fetch sessions (KIP-227) --------------------------------------------------------


def scrape(port):
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        return r.read().decode()


def metric(page, name, **labels):
    """Sum of `name`'s series carrying at least these labels."""
    import re

    total = 0.0
    for line in page.splitlines():
        if not (line.startswith(name + "{") or line.startswith(name + " ")):
            continue
        head, _, v = line.rpartition(" ")
        found = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', head))
        if all(found.get(k) == str(x) for k, x in labels.items()):
            total += float(v)
    return total


def test_incremental_fetch_sessions_with_a_thousand_partitions(broker_with_args):
    """kafka-python (which, unlike librdkafka, implements KIP-227) consumes
    1,000 partitions through one incremental fetch session: every record
    arrives once, later fetches are incremental, and /metrics shows it."""
    import time

    from kafka import KafkaConsumer, TopicPartition as KTP

    from conftest import free_port

    admin_port = free_port()
    b = broker_with_args("--metrics-listen", f"127.0.0.1:{admin_port}")
    topic = uniq("sessions")
    partitions = 1000
    admin = admin_client(b)
    admin.create_topics(
        [NewTopic(topic, num_partitions=partitions, replication_factor=1)],
        request_timeout=ADMIN_REQUEST_TIMEOUT_S,
    )[topic].result(timeout=TIMEOUT_S)
    producer = Producer({"bootstrap.servers": b.bootstrap, "linger.ms": 50})

    def produce(tag, which):
        for p in which:
            producer.produce(topic, value=f"{tag}-{p}".encode(), partition=p)
        assert producer.flush(TIMEOUT_S) == 0

    produce("first", range(partitions))
    consumer = KafkaConsumer(
        bootstrap_servers=b.bootstrap,
        enable_auto_commit=False,
        fetch_max_wait_ms=100,
        request_timeout_ms=30000,
    )
    consumer.assign([KTP(topic, p) for p in range(partitions)])
    consumer.seek_to_beginning()

    def read(n):
        got = []
        deadline = time.monotonic() + 60
        while len(got) < n and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=500).values():
                got.extend(r.value.decode() for r in records)
        return got

    try:
        got = read(partitions)
        assert sorted(got) == sorted(f"first-{p}" for p in range(partitions))
        before = scrape(admin_port)
        # Idle fetches now, then news on a few partitions only.
        time.sleep(2)
        produce("second", [3, 500, 999])
        got = read(3)
        assert sorted(got) == ["second-3", "second-500", "second-999"], got
        for _ in range(5):
            assert not consumer.poll(timeout_ms=300), "a record came twice"
        after = scrape(admin_port)
    finally:
        consumer.close()
    created = metric(after, "tributary_fetch_sessions_total", event="created")
    incremental = metric(after, "tributary_fetch_sessions_total", event="incremental")
    print(f"sessions created {created}, incremental fetches {incremental}")
    assert created >= 1, after
    assert incremental > metric(before, "tributary_fetch_sessions_total", event="incremental") + 3
    assert metric(after, "tributary_fetch_session_partitions") >= partitions


# Key compaction ------------------------------------------------------------------


def read_all(bootstrap, topic, partitions, timeout=60):
    """Every record of `topic` from the beginning to the high watermarks
    taken first: {(partition, offset): (key, value)}."""
    import time

    from confluent_kafka import Consumer, TopicPartition

    c = Consumer({
        "bootstrap.servers": bootstrap,
        "group.id": uniq("reader"),
        "enable.auto.commit": False,
        "enable.partition.eof": True,
    })
    try:
        ends = {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=TIMEOUT_S)[1]
                for p in range(partitions)}
        c.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
        got = {}
        done = {p for p, end in ends.items() if end == 0}
        deadline = time.monotonic() + timeout
        while len(done) < partitions and time.monotonic() < deadline:
            for m in c.consume(num_messages=10000, timeout=0.5):
                if m.error():
                    if m.error().code() == KafkaError._PARTITION_EOF:
                        if m.offset() >= ends[m.partition()]:
                            done.add(m.partition())
                        continue
                    raise KafkaException(m.error())
                if m.offset() < ends[m.partition()]:
                    got[(m.partition(), m.offset())] = (m.key(), m.value())
                if m.offset() + 1 >= ends[m.partition()]:
                    done.add(m.partition())
        assert len(done) == partitions, f"did not reach the end: {ends}, done {done}"
        return got
    finally:
        c.close()


def test_key_compaction_keeps_the_latest_value_of_every_key(broker_with_args):
    """200k records over 2,000 keys (updates and tombstones) into a
    `compact` topic: after maintenance, a consumer from the beginning sees
    exactly the latest value of every live key at its original offset and no
    deleted key; every read during compaction is a consistent log; the
    stored bytes drop."""
    import time

    b = broker_with_args(
        "--maintenance-interval-ms", "300",
        "--compaction-min-age-ms", "0",
        "--segment-grace-ms", "2000",
        "--segment-commit-deadline-ms", "1000",
    )
    topic = uniq("compacted")
    partitions = 2
    admin = admin_client(b)
    admin.create_topics(
        [NewTopic(topic, num_partitions=partitions, replication_factor=1, config={
            "cleanup.policy": "compact",
            "delete.retention.ms": "3000",
            # Clean whenever anything is dirty (the default waits for half).
            "min.cleanable.dirty.ratio": "0.01",
        })],
        request_timeout=ADMIN_REQUEST_TIMEOUT_S,
    )[topic].result(timeout=TIMEOUT_S)

    keys, total = 2000, 200_000
    deleted = {k for k in range(keys) if k % 10 == 3}
    written = {}  # (partition, offset) -> (key, value)
    errors = []

    def on_delivery(err, msg):
        if err:
            errors.append(err)
        else:
            written[(msg.partition(), msg.offset())] = (msg.key(), msg.value())

    producer = Producer({"bootstrap.servers": b.bootstrap, "linger.ms": 20,
                         "compression.type": "lz4", "enable.idempotence": True})
    for i in range(total):
        k = i % keys
        last_round = i >= total - keys
        # Deleted keys end with a tombstone; every 7th key is deleted and
        # written again halfway (a tombstone that must not win).
        if last_round and k in deleted:
            value = None
        elif i // keys == 50 and k % 7 == 0:
            value = None
        else:
            value = f"{k}:{i}".encode()
        while True:
            try:
                producer.produce(topic, key=f"key-{k}".encode(), value=value, on_delivery=on_delivery)
                break
            except BufferError:
                producer.poll(0.1)
        producer.poll(0)
    assert producer.flush(60) == 0
    assert not errors, errors[:3]
    assert len(written) == total

    latest = {}  # key -> (partition, offset, value)
    for (p, o), (k, v) in sorted(written.items(), key=lambda x: x[0][1]):
        if k not in latest or latest[k][1] < o:
            latest[k] = (p, o, v)
    live = {k: (p, o, v) for k, (p, o, v) in latest.items() if v is not None}
    assert len(live) == keys - len(deleted)
    segments = b.data_dir / "objects" / "segments"
    stored = lambda: sum(f.stat().st_size for f in segments.rglob("*") if f.is_file())
    before = stored()

    def check(got):
        # A consistent log: every record read is the one written at its
        # offset, and replaying it gives the right table.
        for at, record in got.items():
            assert written[at] == record, f"offset {at} reads {record}, was {written[at]}"
        table = {}
        for (p, o), (k, v) in sorted(got.items(), key=lambda x: x[0][1]):
            table[k] = v
        assert {k: v for k, v in table.items() if v is not None} == {k: v for k, (_, _, v) in live.items()}

    deadline = time.monotonic() + 120
    reads = 0
    while True:
        got = read_all(b.bootstrap, topic, partitions)
        reads += 1
        check(got)
        exact = {k: (p, o, v) for (p, o), (k, v) in got.items()}
        if len(got) == len(live) and exact == live:
            break
        assert time.monotonic() < deadline, (
            f"after {reads} reads: {len(got)} records, {len(live)} live keys, "
            f"{sum(1 for v in got.values() if v[1] is None)} tombstones left")
        time.sleep(1)
    after_deadline = time.monotonic() + 60
    while stored() > before / 5 and time.monotonic() < after_deadline:
        time.sleep(0.5)
    print(f"stored bytes {before} -> {stored()}, {reads} reads")
    assert stored() <= before / 5, (before, stored())
