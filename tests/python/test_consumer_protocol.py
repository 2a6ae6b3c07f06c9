"""KIP-848 consumer groups (`group.protocol=consumer`, issue 16) with
confluent-kafka (librdkafka): server-side assignment, incremental
reconciliation (only moved partitions are revoked), committed offsets that
survive a broker SIGKILL, static membership, regex subscriptions, the
admin API's view (ListGroups type, ConsumerGroupDescribe) and a group that
changes protocol when it is empty.

Each test drives a real `tributary serve`. Every wait is bounded.
"""

import threading
import time
import uuid

import pytest
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

TIMEOUT_S = 30
# Stable members heartbeat this often (shorter than Kafka's 5 s so the
# tests settle quickly; the broker asks reconciling members every 500 ms).
HEARTBEAT_MS = "1000"


def uniq(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def create_topic(broker, topic: str, partitions: int):
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)])[
        topic
    ].result(timeout=TIMEOUT_S)


def produce(broker, topic: str, partitions: int, count: int, tag: str):
    p = Producer({"bootstrap.servers": broker.bootstrap})
    for i in range(count):
        p.produce(topic, value=f"{tag}-{i}".encode(), partition=i % partitions)
    assert p.flush(TIMEOUT_S) == 0


def wait_until(what, check, timeout=TIMEOUT_S):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.1)
    pytest.fail(f"timed out waiting for {what}")


class Member:
    """One `group.protocol=consumer` consumer polling on its own thread,
    recording what it is assigned and revoked and the values it reads."""

    def __init__(self, broker, group, topics, name, log, extra=None, ownership=None):
        self.name = name
        self.log = log  # shared list of (name, "assign" | "revoke", [(topic, partition)])
        self.values = []
        self.owned = set()
        self.errors = []
        self.lock = threading.Lock()
        self.stop = threading.Event()
        conf = {
            "bootstrap.servers": broker.bootstrap,
            "group.id": group,
            "group.protocol": "consumer",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
        conf.update(extra or {})
        self.consumer = Consumer(conf)
        self.topics = topics
        self.callbacks = (self._note("assign"), self._note("revoke"))
        if ownership is not None:
            ownership.attach(self)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _note(self, kind):
        def callback(consumer, parts):
            tps = sorted((p.topic, p.partition) for p in parts)
            with self.lock:
                if kind == "assign":
                    self.owned.update(tps)
                else:
                    self.owned.difference_update(tps)
                if tps:
                    self.log.append((self.name, kind, tps))

        return callback

    def _run(self):
        c = self.consumer
        on_assign, on_revoke = self.callbacks
        c.subscribe(self.topics, on_assign=on_assign, on_revoke=on_revoke)
        while not self.stop.is_set():
            m = c.poll(0.1)
            if m is None:
                continue
            if m.error():
                with self.lock:
                    self.errors.append(m.error())
                continue
            with self.lock:
                self.values.append(m.value().decode())
            c.commit(message=m, asynchronous=False)

    def partitions(self):
        with self.lock:
            return set(self.owned)

    def close(self):
        self.stop.set()
        self.thread.join(timeout=TIMEOUT_S)
        self.consumer.close()


def no_partition_twice(members):
    seen = {}
    for m in members:
        for tp in m.partitions():
            assert tp not in seen, f"{tp} owned by {seen[tp]} and {m.name}"
            seen[tp] = m.name
    return seen


def test_members_split_partitions_and_only_moved_partitions_are_revoked(broker_with_args):
    broker = broker_with_args("--group-consumer-heartbeat-interval-ms", HEARTBEAT_MS)
    topic, group = uniq("kip848"), uniq("kip848-group")
    create_topic(broker, topic, 6)
    produce(broker, topic, 6, 600, "a")
    log = []
    members = [Member(broker, group, [topic], f"m{n}", log) for n in range(3)]
    try:
        wait_until(
            "three members with two partitions each",
            lambda: all(len(m.partitions()) == 2 for m in members),
        )
        assert len(no_partition_twice(members)) == 6
        wait_until("every record read", lambda: sum(len(m.values) for m in members) >= 600)
        # (The first member to join held all six for a moment and gave four
        # up as the others came: KIP-848 assigns at once, as Kafka does.)

        # A fourth member: only the partitions it takes are revoked.
        mark = len(log)
        members.append(Member(broker, group, [topic], "m3", log))
        fourth = wait_until("the fourth member's partitions", lambda: members[3].partitions())
        time.sleep(2.5)  # more heartbeats: nothing else may move
        moved = log[mark:]
        revoked = {tp for name, kind, tps in moved if kind == "revoke" for tp in tps}
        assert revoked == members[3].partitions() == fourth, moved
        owners = no_partition_twice(members)
        assert len(owners) == 6 and sorted(len(m.partitions()) for m in members) == [1, 1, 2, 2]

        # A member leaves: only its partitions move, nobody else's.
        mark = len(log)
        gone = members.pop(0)
        left_behind = gone.partitions()
        gone.close()
        wait_until("its partitions taken over", lambda: len(no_partition_twice(members)) == 6)
        time.sleep(2.5)
        assert not [e for e in log[mark:] if e[1] == "revoke" and e[0] != gone.name], log[mark:]
        taken = {tp for name, kind, tps in log[mark:] if kind == "assign" for tp in tps}
        assert taken == left_behind, log[mark:]

        produce(broker, topic, 6, 60, "b")
        wait_until(
            "new records read by the rest",
            lambda: sum(1 for m in members for v in list(m.values) if v.startswith("b-")) >= 60,
        )
        assert not [e for m in members for e in m.errors], [m.errors for m in members]
    finally:
        for m in members:
            m.close()


def test_committed_offsets_and_assignments_survive_a_broker_sigkill(broker_with_args):
    broker = broker_with_args("--group-consumer-heartbeat-interval-ms", HEARTBEAT_MS)
    topic, group = uniq("kip848-restart"), uniq("kip848-restart-group")
    create_topic(broker, topic, 4)
    produce(broker, topic, 4, 200, "a")
    log = []
    members = [Member(broker, group, [topic], f"m{n}", log) for n in range(2)]
    try:
        wait_until("two partitions each", lambda: all(len(m.partitions()) == 2 for m in members))
        wait_until("every record read", lambda: sum(len(m.values) for m in members) >= 200)
        before = {m.name: m.partitions() for m in members}

        # The coordinator dies and comes back: the group was saved with its
        # epochs and assignment, so the members carry on with the same
        # partitions and read what is produced next.
        mark = len(log)
        broker.restart()
        produce(broker, topic, 4, 100, "b")
        wait_until(
            "records produced after the restart",
            lambda: sum(1 for m in members for v in list(m.values) if v.startswith("b-")) >= 100,
        )
        assert {m.name: m.partitions() for m in members} == before
        assert not [e for e in log[mark:] if e[1] == "revoke"], log[mark:]
    finally:
        for m in members:
            m.close()

    # A new process of the group resumes at the committed offsets.
    produce(broker, topic, 4, 40, "c")
    log = []
    again = Member(broker, group, [topic], "again", log)
    try:
        wait_until("the records after the commit", lambda: len(again.values) >= 40)
        time.sleep(1.0)
        assert sorted(again.values) == sorted(f"c-{i}" for i in range(40)), again.values[:10]
    finally:
        again.close()


def test_admin_lists_and_describes_consumer_groups(broker_with_args):
    from confluent_kafka import ConsumerGroupState, ConsumerGroupType

    from conftest import free_port

    metrics_port = free_port()
    broker = broker_with_args(
        "--group-consumer-heartbeat-interval-ms",
        HEARTBEAT_MS,
        "--metrics-listen",
        f"127.0.0.1:{metrics_port}",
    )
    topic, group = uniq("kip848-admin"), uniq("kip848-admin-group")
    create_topic(broker, topic, 3)
    produce(broker, topic, 3, 30, "x")
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    log = []
    members = [Member(broker, group, [topic], f"m{n}", log) for n in range(2)]
    try:
        wait_until(
            "the group to settle",
            lambda: sum(len(m.partitions()) for m in members) == 3
            and all(m.partitions() for m in members),
        )

        def described():
            d = admin.describe_consumer_groups([group])[group].result(timeout=TIMEOUT_S)
            return d if d.state == ConsumerGroupState.STABLE else None

        d = wait_until("a stable description", described)
        assert d.type == ConsumerGroupType.CONSUMER
        assert d.partition_assignor == "uniform"
        got = sorted(
            (tp.topic, tp.partition) for m in d.members for tp in m.assignment.topic_partitions
        )
        assert got == [(topic, p) for p in range(3)]

        listed = admin.list_consumer_groups(types={ConsumerGroupType.CONSUMER}).result(
            timeout=TIMEOUT_S
        )
        mine = [g for g in listed.valid if g.group_id == group]
        assert mine and mine[0].type == ConsumerGroupType.CONSUMER, listed.valid
        classic = admin.list_consumer_groups(types={ConsumerGroupType.CLASSIC}).result(
            timeout=TIMEOUT_S
        )
        assert group not in [g.group_id for g in classic.valid]

        # Lag is measured for consumer groups as for classic ones (from
        # their committed offsets, every 10 s).
        import urllib.request

        def lag_lines():
            url = f"http://127.0.0.1:{metrics_port}/metrics"
            with urllib.request.urlopen(url, timeout=10) as r:
                text = r.read().decode()
            return [
                line
                for line in text.splitlines()
                if line.startswith("tributary_consumer_group_lag{") and f'group="{group}"' in line
            ]

        wait_until("every record read", lambda: sum(len(m.values) for m in members) >= 30)
        lines = wait_until(
            "lag of the consumer group on /metrics",
            lambda: (lambda found: found if len(found) == 3 else None)(lag_lines()),
        )
        assert all(line.endswith(" 0") for line in lines), lines
    finally:
        for m in members:
            m.close()


def test_static_member_comes_back_to_its_partitions(broker_with_args):
    broker = broker_with_args("--group-consumer-heartbeat-interval-ms", HEARTBEAT_MS)
    topic, group = uniq("kip848-static"), uniq("kip848-static-group")
    create_topic(broker, topic, 4)
    log = []
    members = [
        Member(broker, group, [topic], f"m{n}", log, {"group.instance.id": f"instance-{n}"})
        for n in range(2)
    ]
    try:
        wait_until("two partitions each", lambda: all(len(m.partitions()) == 2 for m in members))
        held = members[0].partitions()
        other = members[1].partitions()
        mark = len(log)
        # A restart of instance-0: it leaves as a static member (epoch -2),
        # its partitions wait for it, and the new process gets them back.
        members[0].close()
        members[0] = Member(
            broker, group, [topic], "m0-again", log, {"group.instance.id": "instance-0"}
        )
        wait_until("instance-0's partitions back", lambda: members[0].partitions() == held)
        time.sleep(2.5)
        assert members[1].partitions() == other
        assert not [e for e in log[mark:] if e[0] == "m1"], log[mark:]
    finally:
        for m in members:
            m.close()


def test_regex_subscription_picks_up_new_topics(broker_with_args):
    broker = broker_with_args("--group-consumer-heartbeat-interval-ms", HEARTBEAT_MS)
    prefix = uniq("kip848-re")
    first, later, other = f"{prefix}-orders", f"{prefix}-refunds", uniq("kip848-other")
    for t in (first, other):
        create_topic(broker, t, 2)
    log = []
    member = Member(broker, uniq("kip848-re-group"), [f"^{prefix}-.*"], "m", log)
    try:
        wait_until(
            "the matching topic", lambda: member.partitions() == {(first, 0), (first, 1)}
        )
        create_topic(broker, later, 2)
        produce(broker, later, 2, 10, "later")
        wait_until(
            "the new matching topic",
            lambda: member.partitions() == {(first, 0), (first, 1), (later, 0), (later, 1)},
        )
        wait_until("its records", lambda: len(member.values) >= 10)
        assert not any(tp[0] == other for tp in member.partitions())
    finally:
        member.close()


def test_an_empty_classic_group_becomes_a_consumer_group(broker_with_args):
    """A group whose members all stopped and start again with
    `group.protocol=consumer`: committed offsets carry over, and back."""
    broker = broker_with_args("--group-consumer-heartbeat-interval-ms", HEARTBEAT_MS)
    topic, group = uniq("kip848-upgrade"), uniq("kip848-upgrade-group")
    create_topic(broker, topic, 2)
    produce(broker, topic, 2, 20, "old")
    classic = Consumer(
        {
            "bootstrap.servers": broker.bootstrap,
            "group.id": group,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    classic.subscribe([topic])
    read = 0
    deadline = time.monotonic() + TIMEOUT_S
    while read < 20 and time.monotonic() < deadline:
        m = classic.poll(0.5)
        if m is not None and not m.error():
            read += 1
            classic.commit(message=m, asynchronous=False)
    assert read == 20
    classic.close()

    produce(broker, topic, 2, 10, "new")
    log = []
    upgraded = Member(broker, group, [topic], "upgraded", log)
    try:
        wait_until("the records after the classic commits", lambda: len(upgraded.values) >= 10)
        time.sleep(1.0)
        assert sorted(upgraded.values) == sorted(f"new-{i}" for i in range(10))
    finally:
        upgraded.close()

    # And back: once empty, a classic member may use the group again.
    back = Consumer(
        {
            "bootstrap.servers": broker.bootstrap,
            "group.id": group,
            "auto.offset.reset": "earliest",
        }
    )
    back.subscribe([topic])
    try:
        wait_until(
            "a classic assignment",
            lambda: back.poll(0.2) is not None or len(back.assignment()) == 2,
        )
        committed = back.committed([TopicPartition(topic, p) for p in range(2)], timeout=10)
        assert sum(tp.offset for tp in committed) == 30
    finally:
        back.close()


def test_unknown_assignor_is_refused(broker):
    """UNSUPPORTED_ASSIGNOR reaches the application (librdkafka makes it
    a fatal error of the consumer)."""
    topic = uniq("kip848-bad")
    create_topic(broker, topic, 1)
    c = Consumer(
        {
            "bootstrap.servers": broker.bootstrap,
            "group.id": uniq("kip848-bad-group"),
            "group.protocol": "consumer",
            "group.remote.assignor": "no-such-assignor",
        }
    )
    c.subscribe([topic])
    errors = []
    deadline = time.monotonic() + TIMEOUT_S
    while not errors and time.monotonic() < deadline:
        m = c.poll(0.2)
        if m is not None and m.error():
            errors.append(m.error())
    c.close()
    assert errors and errors[0].code() == KafkaError._FATAL, errors
    assert "assignor" in errors[0].str(), errors


class Ownership:
    """Who owns each partition, from the members' callbacks: an assignment
    of a partition another member still owns is recorded as a violation."""

    def __init__(self):
        self.lock = threading.Lock()
        self.owner = {}
        self.violations = []

    def attach(self, member):
        assign, revoke = member._note("assign"), member._note("revoke")

        def on_assign(consumer, parts):
            with self.lock:
                for p in parts:
                    tp = (p.topic, p.partition)
                    if self.owner.get(tp, member.name) != member.name:
                        self.violations.append((tp, self.owner[tp], member.name))
                    self.owner[tp] = member.name
            assign(consumer, parts)

        def on_revoke(consumer, parts):
            with self.lock:
                for p in parts:
                    if self.owner.get((p.topic, p.partition)) == member.name:
                        del self.owner[(p.topic, p.partition)]
            revoke(consumer, parts)

        member.callbacks = (on_assign, on_revoke)


@pytest.mark.parametrize("strategy", ["cooperative-sticky", "range"])
def test_rolling_upgrade_from_classic_members(broker_with_args, strategy):
    """A deployment of three classic consumers restarts them one by one with
    `group.protocol=consumer`: the first upgraded member turns the group
    into a consumer group, the classic members follow the coordinator's
    assignment through JoinGroup/SyncGroup, every partition keeps one owner
    at a time, and records produced at each step are read."""
    broker = broker_with_args("--group-consumer-heartbeat-interval-ms", HEARTBEAT_MS)
    topic, group = uniq("kip848-rolling"), uniq("kip848-rolling-group")
    create_topic(broker, topic, 6)
    owners = Ownership()
    log = []
    classic = {
        "group.protocol": "classic",
        "partition.assignment.strategy": strategy,
        "session.timeout.ms": 10000,
        "heartbeat.interval.ms": 500,
    }
    members = [
        Member(broker, group, [topic], f"classic{n}", log, classic, ownership=owners)
        for n in range(3)
    ]
    try:
        wait_until(
            "the classic group to settle",
            lambda: all(len(m.partitions()) == 2 for m in members),
        )
        everyone = list(members)

        def read(prefix):
            return sum(1 for m in everyone for v in list(m.values) if v.startswith(prefix))

        for step in range(3):
            produce(broker, topic, 6, 60, f"before{step}")
            members[step].close()
            members[step] = Member(
                broker, group, [topic], f"upgraded{step}", log, ownership=owners
            )
            everyone.append(members[step])
            wait_until(
                f"step {step}: every partition owned once",
                lambda: len(no_partition_twice(members)) == 6
                and all(m.partitions() for m in members),
                timeout=60,
            )
            produce(broker, topic, 6, 60, f"after{step}")
            wait_until(
                f"step {step}: its records read",
                lambda: read(f"before{step}-") >= 60 and read(f"after{step}-") >= 60,
                timeout=60,
            )
        assert not owners.violations, owners.violations
        admin = AdminClient({"bootstrap.servers": broker.bootstrap})
        d = admin.describe_consumer_groups([group])[group].result(timeout=TIMEOUT_S)
        from confluent_kafka import ConsumerGroupType

        assert d.type == ConsumerGroupType.CONSUMER
    finally:
        for m in members:
            m.close()
