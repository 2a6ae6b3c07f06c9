"""Kafka transactions (KIP-98) with three independent client implementations:
confluent-kafka (librdkafka), aiokafka and KafkaJS.

- Committed and aborted transactions alternate over three partitions: a
  read_committed consumer gets exactly the committed records, in produce
  order per partition; a read_uncommitted one gets every record and never a
  control record; each transaction's marker takes an offset; `tributary
  export` writes only the committed records.
- An open transaction holds read_committed consumers back at its first
  offset (the last stable offset), also for non-transactional records
  written after it, until it commits.
- A transaction left open past its transaction.timeout.ms is aborted by the
  broker (`--transaction-abort-interval-ms` makes the scan fast), which
  frees read_committed consumers; the stalled producer cannot commit.
- A second producer with the same transactional.id aborts the first one's
  open transaction and fences it.
- Consume-transform-produce: send_offsets_to_transaction commits the group's
  offsets with the transaction; an aborted one leaves them where they were.
- aiokafka and KafkaJS transactional producers: only committed records reach
  read_committed consumers.

Every wait is for a condition with a deadline; the only fixed-length wait
is a bounded window in which a held-back consumer must receive nothing.
"""

import asyncio
import json
import os
import shutil
import subprocess
import time
import urllib.request
import uuid
from pathlib import Path

import aiokafka
import pyarrow.parquet as pq
import pytest
from confluent_kafka import (
    OFFSET_BEGINNING,
    OFFSET_INVALID,
    Consumer,
    ConsumerGroupTopicPartitions,
    KafkaError,
    KafkaException,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, NewTopic

from conftest import broker_bin, free_port

TIMEOUT = 30  # seconds, for any one step
HOLD_S = 3  # how long a held-back consumer is watched for records it must not get
FENCED_CODES = (
    KafkaError._FENCED,
    KafkaError.PRODUCER_FENCED,
    KafkaError.INVALID_PRODUCER_EPOCH,
)


def unique(prefix):
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def wait_for(condition, what, timeout=TIMEOUT):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout}s")
        time.sleep(0.1)


def create_topics(bootstrap, partitions_by_topic):
    admin = AdminClient({"bootstrap.servers": bootstrap})
    new = [NewTopic(topic, n, 1) for topic, n in partitions_by_topic.items()]
    for future in admin.create_topics(new).values():
        future.result(TIMEOUT)


def plain_producer(bootstrap):
    return Producer({"bootstrap.servers": bootstrap, "acks": "all"})


def transactional_producer(bootstrap, transactional_id, conf=None):
    """A confluent-kafka producer with `transactional.id`, initialised."""
    producer = Producer(
        {"bootstrap.servers": bootstrap, "transactional.id": transactional_id, **(conf or {})}
    )
    producer.init_transactions(TIMEOUT)
    return producer


def produce(producer, topic, records):
    """Produces (partition, value) pairs and flushes: every one is
    acknowledged (inside a transaction: written, not yet committed)."""
    errors = []

    def on_delivery(err, _msg):
        if err is not None:
            errors.append(err)

    for partition, value in records:
        producer.produce(topic, value=value.encode(), partition=partition, on_delivery=on_delivery)
    assert producer.flush(TIMEOUT) == 0, "records still queued"
    assert errors == [], errors


class Reader:
    """A confluent-kafka consumer assigned to `partitions` of `topic` from the
    beginning (no group membership) with an isolation level. Collects record
    values per partition in offset order, and where each partition last
    reported its end (librdkafka's partition EOF: the high watermark for
    read_uncommitted, the last stable offset for read_committed)."""

    def __init__(self, bootstrap, topic, partitions, isolation):
        self.topic = topic
        self.consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": unique("reader"),  # required by the client; never joined
                "isolation.level": isolation,
                "enable.partition.eof": True,
                "enable.auto.commit": False,
            }
        )
        self.consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        self.values = {p: [] for p in partitions}
        self.ends = {}

    def __enter__(self):
        return self

    def __exit__(self, *_):
        self.consumer.close()

    def poll(self, timeout):
        msg = self.consumer.poll(timeout)
        if msg is None:
            return
        if msg.error() is not None:
            if msg.error().code() != KafkaError._PARTITION_EOF:
                raise KafkaException(msg.error())
            self.ends[msg.partition()] = msg.offset()
            return
        self.values[msg.partition()].append(msg.value().decode())

    def read_until(self, condition, what, timeout=TIMEOUT):
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                counts = {p: len(v) for p, v in self.values.items()}
                pytest.fail(
                    f"{what}: not within {timeout}s (records per partition {counts}, "
                    f"ends {self.ends})"
                )
            self.poll(0.2)

    def high_watermark(self, partition):
        """As of the last fetch response (no request)."""
        tp = TopicPartition(self.topic, partition)
        return self.consumer.get_watermark_offsets(tp, cached=True)[1]

    def read_to_stable_end(self):
        """Reads until every partition reported its end at its high
        watermark: everything is read and (read_committed) no transaction
        is open any more. Returns {partition: [values]}."""

        def stable():
            return all(
                p in self.ends and self.ends[p] == self.high_watermark(p) for p in self.values
            )

        self.read_until(stable, f"reading {self.topic} to its stable end")
        return self.values

    def watch(self, seconds):
        """Polls for `seconds`: a bounded window for records that must not come."""
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.poll(0.2)


def read_all(bootstrap, topic, partitions, isolation):
    """{partition: [values]} from the beginning to the stable end."""
    with Reader(bootstrap, topic, partitions, isolation) as reader:
        return reader.read_to_stable_end()


def export_topic(broker, topic, dest: Path):
    """`tributary export` of `topic` into the new directory `dest`, read back
    with pyarrow: {partition: [values in offset order]}."""
    out = subprocess.run(
        [str(broker_bin()), "export", "--data-dir", str(broker.data_dir),
         "--topic", topic, "--to", f"file://{dest}", "--json"],
        capture_output=True, timeout=TIMEOUT * 2,
    )
    assert out.returncode == 0, out.stderr.decode()
    summary = json.loads(out.stdout)
    if not any(dest.rglob("*.parquet")):
        assert summary["records"] == 0, summary
        return {}
    table = pq.read_table(dest / f"topic={topic}", columns=["partition", "offset", "value"])
    rows = sorted((int(r["partition"]), r["offset"], r["value"].decode()) for r in table.to_pylist())
    assert summary["records"] == len(rows), summary
    exported = {}
    for partition, _offset, value in rows:
        exported.setdefault(partition, []).append(value)
    return exported


def test_commit_and_abort_alternate(broker, tmp_path):
    """Ten transactions of 30 records over three partitions; even ones
    commit, odd ones abort (after their records were acknowledged)."""
    transactions, per_transaction, partitions = 10, 30, range(3)
    bs = broker.bootstrap
    topic = unique("alternate")
    create_topics(bs, {topic: len(partitions)})
    producer = transactional_producer(bs, unique("alternate-txn"))
    produced = {p: [] for p in partitions}  # every record, in produce order
    committed = {p: [] for p in partitions}
    for n in range(transactions):
        records = [(i % len(partitions), f"txn-{n}-rec-{i}") for i in range(per_transaction)]
        producer.begin_transaction()
        # Flushed before the abort too: an abort drops what the client still
        # holds, and the aborted records must be in the log.
        produce(producer, topic, records)
        if n % 2 == 0:
            producer.commit_transaction(TIMEOUT)
        else:
            producer.abort_transaction(TIMEOUT)
        for p, value in records:
            produced[p].append(value)
            if n % 2 == 0:
                committed[p].append(value)

    assert read_all(bs, topic, partitions, "read_committed") == committed

    with Reader(bs, topic, partitions, "read_uncommitted") as reader:
        # All 300 and nothing else: no control record surfaces as a message.
        assert reader.read_to_stable_end() == produced
        for p in partitions:
            # Every transaction wrote to every partition: one marker each.
            assert reader.high_watermark(p) == len(produced[p]) + transactions

    # The export reads the stored segments itself; it is repeated (into a new
    # directory) until it has caught up with the committed records.
    want = sum(len(v) for v in committed.values())
    deadline = time.monotonic() + TIMEOUT
    attempt = 0
    while True:
        exported = export_topic(broker, topic, tmp_path / f"export-{attempt}")
        if sum(len(v) for v in exported.values()) >= want or time.monotonic() > deadline:
            break
        attempt += 1
        time.sleep(0.5)
    assert exported == committed


def test_open_transaction_holds_back_read_committed(broker):
    """An open transaction's records, and a plain record written after them,
    stay invisible to read_committed until the transaction commits."""
    bs = broker.bootstrap
    topic = unique("held")
    create_topics(bs, {topic: 1})
    plain = plain_producer(bs)
    produce(plain, topic, [(0, "before")])  # offset 0
    txn = transactional_producer(bs, unique("held-txn"))
    txn.begin_transaction()
    opened = [f"open-{i}" for i in range(5)]
    produce(txn, topic, [(0, v) for v in opened])  # offsets 1-5, not committed
    produce(plain, topic, [(0, "after")])  # offset 6, behind the open transaction
    everything = ["before", *opened, "after"]

    with Reader(bs, topic, [0], "read_committed") as held:
        held.read_until(lambda: 0 in held.ends, "read_committed reaching its end")
        assert held.ends[0] == 1, "the last stable offset is the open transaction's first"
        held.watch(HOLD_S)
        assert held.values[0] == ["before"]

        assert read_all(bs, topic, [0], "read_uncommitted")[0] == everything

        txn.commit_transaction(TIMEOUT)
        held.read_until(lambda: len(held.values[0]) >= len(everything), "the committed records")
        assert held.read_to_stable_end()[0] == everything


def test_stalled_transaction_times_out(broker_with_args):
    """A transaction left open past transaction.timeout.ms is aborted by the
    broker: read_committed consumers get the records behind it, never its
    own, and its producer can no longer commit it."""
    admin = free_port()
    broker = broker_with_args(
        "--transaction-abort-interval-ms", "200", "--metrics-listen", f"127.0.0.1:{admin}"
    )
    bs = broker.bootstrap
    topic = unique("stalled")
    create_topics(bs, {topic: 1})
    stalled = transactional_producer(
        bs, unique("stalled-txn"), {"transaction.timeout.ms": 3000}
    )
    stalled.begin_transaction()
    produce(stalled, topic, [(0, f"stalled-{i}") for i in range(5)])
    # ...and then nothing from it: no commit, no abort, the producer kept open.
    later = [f"later-{i}" for i in range(5)]
    produce(plain_producer(bs), topic, [(0, v) for v in later])

    with Reader(bs, topic, [0], "read_committed") as reader:
        reader.read_until(
            lambda: len(reader.values[0]) >= len(later),
            "read_committed getting the records behind the stalled transaction",
        )
        assert reader.values[0] == later

    with pytest.raises(KafkaException) as raised:
        stalled.commit_transaction(TIMEOUT)
    print(f"commit of the timed-out transaction: {raised.value}")
    assert read_all(bs, topic, [0], "read_committed")[0] == later

    # The coordinator counted it: begun, timed out, aborted; none open now.
    def metric(name):
        with urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=10) as r:
            page = r.read().decode()
        values = [
            float(line.split()[-1])
            for line in page.splitlines()
            if line.startswith(name + " ") or line.startswith(name + "{")
        ]
        return sum(values) if values else None

    wait_for(lambda: metric("tributary_transactions_open") == 0, "no transaction open")
    assert metric("tributary_transactions_started_total") >= 1
    assert metric("tributary_transactions_timed_out_total") == 1
    assert metric("tributary_transactions_aborted_total") >= 1


def test_zombie_is_fenced(broker):
    """A second producer with the same transactional.id aborts the first
    one's open transaction; the first one's commit fails as fenced."""
    bs = broker.bootstrap
    topic = unique("zombie")
    create_topics(bs, {topic: 1})
    transactional_id = unique("zombie-txn")
    zombie = transactional_producer(bs, transactional_id)
    zombie.begin_transaction()
    ghosts = [f"zombie-{i}" for i in range(5)]
    produce(zombie, topic, [(0, v) for v in ghosts])

    successor = transactional_producer(bs, transactional_id)
    with pytest.raises(KafkaException) as raised:
        zombie.commit_transaction(TIMEOUT)
    error = raised.value.args[0]
    assert (
        error.fatal() or error.code() in FENCED_CODES or "fenced" in error.str().lower()
    ), error

    successor.begin_transaction()
    fresh = [f"successor-{i}" for i in range(5)]
    produce(successor, topic, [(0, v) for v in fresh])
    successor.commit_transaction(TIMEOUT)

    assert read_all(bs, topic, [0], "read_committed")[0] == fresh
    assert read_all(bs, topic, [0], "read_uncommitted")[0] == ghosts + fresh


def test_send_offsets_to_transaction(broker):
    """Consume-transform-produce: the group's offsets are committed with the
    transaction. Round 1 commits 25 records, round 2 processes the other 25
    and aborts (offsets stay), round 3 redoes them from the committed
    offsets and commits."""
    bs = broker.bootstrap
    group = "eos-group"
    source, sink = unique("eos-in"), unique("eos-out")
    create_topics(bs, {source: 2, sink: 1})
    inputs = [f"in-{i}" for i in range(50)]
    produce(plain_producer(bs), source, [(i % 2, v) for i, v in enumerate(inputs)])
    end = {0: 25, 1: 25}

    consumer = Consumer(
        {
            "bootstrap.servers": bs,
            "group.id": group,
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
            "auto.offset.reset": "earliest",
        }
    )
    consumer.subscribe([source])
    producer = transactional_producer(bs, unique("eos-txn"))

    # Where the consumer is, per partition, from the records it returned
    # (librdkafka's position() forgets a seeked partition until a record
    # comes from it).
    positions = {}

    def transform(count):
        """In a new transaction: consumes `count` records, writes them
        transformed to the sink and adds the consumer's positions to the
        transaction. Returns (input values, {partition: position})."""
        producer.begin_transaction()
        taken = []
        deadline = time.monotonic() + TIMEOUT
        while len(taken) < count:
            assert time.monotonic() < deadline, f"consumed only {len(taken)} of {count}"
            msg = consumer.poll(0.2)
            if msg is None:
                continue
            if msg.error() is not None:
                raise KafkaException(msg.error())
            value = msg.value().decode()
            taken.append(value)
            positions[msg.partition()] = msg.offset() + 1
            producer.produce(sink, value=value.replace("in-", "out-").encode())
        # Written out now, so that an abort has records in the log to discard.
        assert producer.flush(TIMEOUT) == 0
        offsets = [TopicPartition(source, p, o) for p, o in sorted(positions.items())]
        producer.send_offsets_to_transaction(
            offsets, consumer.consumer_group_metadata(), TIMEOUT
        )
        return taken, dict(positions)

    def committed(with_unset=False):
        """{partition: offset} the group has committed (stable offsets);
        partitions without a commit only `with_unset` (as OFFSET_INVALID)."""
        tps = [TopicPartition(source, p) for p in end]
        found = consumer.committed(tps, timeout=TIMEOUT)
        return {
            tp.partition: tp.offset
            for tp in found
            if with_unset or tp.offset != OFFSET_INVALID
        }

    try:
        first, first_offsets = transform(25)
        producer.commit_transaction(TIMEOUT)
        wait_for(lambda: committed() == first_offsets, "the first transaction's offsets")

        second, second_offsets = transform(25)
        assert second_offsets == end
        producer.abort_transaction(TIMEOUT)
        assert committed() == first_offsets, "an aborted transaction moved the offsets"

        # Start again from the committed offsets, as after any abort.
        positions.clear()
        for p, offset in committed(with_unset=True).items():
            start = offset if offset != OFFSET_INVALID else OFFSET_BEGINNING
            consumer.seek(TopicPartition(source, p, start))
            if offset != OFFSET_INVALID:
                positions[p] = offset
        third, third_offsets = transform(25)
        producer.commit_transaction(TIMEOUT)
        assert sorted(third) == sorted(second)
        assert sorted(first + third) == sorted(inputs)
        assert third_offsets == end
        wait_for(lambda: committed() == end, "the group's offsets at the input's end")
    finally:
        consumer.close()

    admin = AdminClient({"bootstrap.servers": bs})
    request = ConsumerGroupTopicPartitions(group, [TopicPartition(source, p) for p in end])
    listed = admin.list_consumer_group_offsets([request], require_stable=True)[group]
    assert {tp.partition: tp.offset for tp in listed.result(TIMEOUT).topic_partitions} == end

    outputs = sorted(v.replace("in-", "out-") for v in inputs)
    assert sorted(read_all(bs, sink, [0], "read_committed")[0]) == outputs
    # The aborted round's 25 records are in the log, hidden from read_committed.
    assert len(read_all(bs, sink, [0], "read_uncommitted")[0]) == 75


class Rollback(Exception):
    """Raised inside `async with producer.transaction()` to make it abort."""


async def aiokafka_transactions(bootstrap, topic):
    """Four aiokafka transactions to partition 0: committed (context
    manager), aborted (explicitly), aborted (exception in the context
    manager), committed (explicitly). Returns (committed values, every value
    in produce order, what a read_committed AIOKafkaConsumer read)."""
    producer = aiokafka.AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        transactional_id=unique("aiokafka-txn"),
        enable_idempotence=True,
        request_timeout_ms=TIMEOUT * 1000,
    )
    committed, everything = [], []

    async def send(name):
        values = [f"aiokafka-{name}-{i}" for i in range(5)]
        for value in values:
            await producer.send_and_wait(topic, value.encode(), partition=0)
        everything.extend(values)
        return values

    await producer.start()
    try:
        async with producer.transaction():
            committed += await send("commit-context")
        await producer.begin_transaction()
        await send("abort-explicit")
        await producer.abort_transaction()
        with pytest.raises(Rollback):
            async with producer.transaction():
                await send("abort-context")
                raise Rollback()
        await producer.begin_transaction()
        committed += await send("commit-explicit")
        await producer.commit_transaction()
    finally:
        await producer.stop()

    consumer = aiokafka.AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        isolation_level="read_committed",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    tp = aiokafka.TopicPartition(topic, 0)
    await consumer.start()
    read = []
    try:
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        deadline = time.monotonic() + TIMEOUT
        while len(read) < len(committed) and time.monotonic() < deadline:
            batch = await consumer.getmany(tp, timeout_ms=500)
            read.extend(m.value.decode() for m in batch.get(tp, []))
    finally:
        await consumer.stop()
    return committed, everything, read


def test_aiokafka_transactions(broker):
    """aiokafka's own transactions code: committed and aborted transactions,
    read back by aiokafka and confluent-kafka."""
    bs = broker.bootstrap
    topic = unique("aiokafka")
    create_topics(bs, {topic: 1})
    committed, everything, read = asyncio.run(aiokafka_transactions(bs, topic))
    # The aborted records lie between the committed ones: read in order,
    # the first len(committed) records are the committed ones only if
    # nothing aborted leaked.
    assert read == committed
    assert read_all(bs, topic, [0], "read_committed")[0] == committed
    assert read_all(bs, topic, [0], "read_uncommitted")[0] == everything


def test_kafkajs_transactions(broker):
    """KafkaJS (Node.js, its own transactions code) commits one transaction,
    aborts one and commits another; scripts/test.sh installs it and sets
    TRIBUTARY_KAFKAJS."""
    modules = os.environ.get("TRIBUTARY_KAFKAJS")
    if not modules or not Path(modules, "kafkajs").exists() or shutil.which("node") is None:
        pytest.fail("KafkaJS is not installed (scripts/test.sh installs it; set TRIBUTARY_KAFKAJS)")
    bs = broker.bootstrap
    topic = unique("kafkajs")
    create_topics(bs, {topic: 1})
    script = Path(__file__).with_name("kafkajs_transactions.js")
    result = subprocess.run(
        ["node", str(script), bs, topic, unique("kafkajs-txn"), "10"],
        capture_output=True,
        text=True,
        timeout=TIMEOUT * 2,
        env=dict(os.environ, NODE_PATH=modules, KAFKAJS_NO_PARTITIONER_WARNING="1"),
    )
    print(result.stdout, result.stderr)
    assert result.returncode == 0, result.stderr
    transactions = json.loads(result.stdout.strip().splitlines()[-1])["transactions"]
    assert [t["outcome"] for t in transactions] == ["commit", "abort", "commit"]
    committed = [v for t in transactions if t["outcome"] == "commit" for v in t["values"]]
    everything = [v for t in transactions for v in t["values"]]

    assert read_all(bs, topic, [0], "read_committed")[0] == committed
    assert read_all(bs, topic, [0], "read_uncommitted")[0] == everything
