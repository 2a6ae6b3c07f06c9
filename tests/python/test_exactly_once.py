"""Exactly-once consume-transform-produce under SIGKILL (confluent-kafka,
send_offsets_to_transaction).

100,000 records with unique ids go to a 4-partition input topic. The
processor (eos_processor.py, a subprocess) copies them transactionally to a
4-partition output topic, committing its input offsets in each transaction.
While it works, it is SIGKILLed three times inside a transaction and
restarted, and the broker is SIGKILLed once inside a transaction and
restarted on the same data dir and port. Then the last processor runs to
the input's end.

A read_committed reader of the output must find every input id exactly once
(in input order per partition), and the group's stable committed offsets
must be the input's end offsets.

Each kill waits for progress (the group's committed offsets growing), then
for the processor to be at a randomly chosen step of a transaction:
producing its records (killed as soon as it began one), or held by the test
after its records are in the log ("produced") or after its offsets were
added to it ("offsets sent"). A killed processor's successor must abort
the transaction it held: its offsets stay where they were and its records
stay hidden. The broker is restarted under a transaction likewise, which
then goes on. Every wait has a deadline. The random choices come from a seed
printed by the test (TRIBUTARY_EOS_SEED repeats them).
"""

import ast
import json
import os
import random
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from confluent_kafka import (
    Consumer,
    ConsumerGroupTopicPartitions,
    KafkaException,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient

from eos_processor import GROUP, NO_REBOOTSTRAP
from test_transactions import Reader, create_topics

RECORDS = 100_000
PARTITIONS = 4
SOURCE, SINK = "eos-input", "eos-output"
PROCESSOR = Path(__file__).with_name("eos_processor.py")
# What is SIGKILLed while the processor works, in this order.
KILLS = ["processor", "processor", "broker", "processor"]
# Where in a transaction: "producing" is not held; the others are
# eos_processor.py's hold points.
STEPS = ["producing", "produced", "offsets sent"]
PROGRESS = (6_000, 12_000)  # committed input records between kills (random)
PROGRESS_TIMEOUT = 60  # seconds for that progress (a restart costs a session timeout)
STEP_TIMEOUT = 15  # seconds for the processor to reach a step
FINISH_TIMEOUT = 120  # seconds for the last processor to reach the input's end
READ_TIMEOUT = 60  # seconds to read the output back


def produce_input(bootstrap):
    """RECORDS records `id-NNNNNN`, round-robin over the partitions, with an
    idempotent producer. Returns {partition: [ids in offset order]}."""
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "enable.idempotence": True,
            "linger.ms": 50,
            "batch.size": 1_000_000,
        }
    )
    errors = []

    def on_delivery(err, _msg):
        if err is not None:
            errors.append(err)

    ids = {p: [] for p in range(PARTITIONS)}
    for i in range(RECORDS):
        value = f"id-{i:06d}"
        partition = i % PARTITIONS
        while True:
            try:
                producer.produce(
                    SOURCE, value=value.encode(), partition=partition, on_delivery=on_delivery
                )
                break
            except BufferError:
                producer.poll(0.1)
        producer.poll(0)
        ids[partition].append(value)
    assert producer.flush(READ_TIMEOUT) == 0, "input records still queued"
    assert errors == [], errors[:10]
    return ids


def end_offsets(bootstrap, topic):
    """{partition: high watermark} by ListOffsets."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "eos-ends"})  # never joined
    try:
        return {
            p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=30)[1]
            for p in range(PARTITIONS)
        }
    finally:
        consumer.close()


def group_offsets(admin, require_stable):
    """{partition: committed offset} of GROUP on SOURCE (negative: none)."""
    request = ConsumerGroupTopicPartitions(
        GROUP, [TopicPartition(SOURCE, p) for p in range(PARTITIONS)]
    )
    future = admin.list_consumer_group_offsets([request], require_stable=require_stable)[GROUP]
    return {tp.partition: tp.offset for tp in future.result(30).topic_partitions}


def committed_records(admin):
    """Input records the group has committed, or None while the broker
    cannot say (it may be down)."""
    try:
        return sum(max(o, 0) for o in group_offsets(admin, require_stable=False).values())
    except (KafkaException, TimeoutError):
        return None


def read_output(bootstrap, isolation):
    """{partition: [values]} of SINK from the beginning to the stable end."""
    with Reader(bootstrap, SINK, range(PARTITIONS), isolation) as reader:
        reader.read_until(
            lambda: all(
                p in reader.ends and reader.ends[p] == reader.high_watermark(p)
                for p in range(PARTITIONS)
            ),
            f"reading the output ({isolation}) to its stable end",
            timeout=READ_TIMEOUT,
        )
        return reader.values


class Processors:
    """eos_processor.py runs, one at a time, each logging to its own file,
    and the file that holds them at a step of a transaction."""

    def __init__(self, bootstrap, ends, tmp_path: Path):
        self.dir = tmp_path
        self.hold_file = tmp_path / "hold"
        self.args = [
            sys.executable, str(PROCESSOR), bootstrap, SOURCE, SINK, json.dumps(ends),
            str(self.hold_file),
        ]
        self.runs = []  # (Popen, log path)

    @property
    def current(self):
        return self.runs[-1][0]

    def start(self):
        path = self.dir / f"processor-{len(self.runs) + 1}.log"
        with open(path, "wb") as log:
            proc = subprocess.Popen(
                self.args, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )
        self.runs.append((proc, path))

    def hold(self, step):
        """From the next transaction on, stop after `step`."""
        partial = self.hold_file.with_suffix(".partial")
        partial.write_text(step)
        partial.rename(self.hold_file)  # never read half-written

    def release(self):
        self.hold_file.unlink(missing_ok=True)

    def own_lines(self, run=-1):
        """A run's own progress lines (librdkafka logs there too)."""
        text = self.runs[run][1].read_text(errors="replace")
        return [line for line in text.splitlines() if line.startswith("eos ")]

    def last_transaction(self, run=-1):
        """(N, {partition: (first, last) input offset}) of a run's last
        `begin N` line."""
        line = next(line for line in reversed(self.own_lines(run)) if " begin " in line)
        n = int(line.split(" begin ")[1].split(":")[0])
        ranges = ast.literal_eval(line.split("input offsets ")[1])
        return n, {p: tuple(map(int, r.split("-"))) for p, r in ranges.items()}

    def log_tail(self, run=-1, lines=40):
        text = self.runs[run][1].read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def check_running(self, what):
        code = self.current.poll()
        if code is not None:
            pytest.fail(
                f"processor run {len(self.runs)} exited with {code} while waiting for "
                f"{what}\n{self.log_tail()}"
            )

    def wait_for_line(self, accept, what, timeout, poll=0.05):
        """Until accept(own lines) returns a line; returns it."""
        deadline = time.monotonic() + timeout
        while True:
            self.check_running(what)
            line = accept(self.own_lines())
            if line:
                return line
            if time.monotonic() > deadline:
                pytest.fail(f"{what}: not within {timeout}s\n{self.log_tail()}")
            time.sleep(poll)

    def kill_all(self):
        for proc, _ in self.runs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()


def wait_for_progress(admin, processors, target, what):
    """Until the group has committed at least `target` input records."""
    deadline = time.monotonic() + PROGRESS_TIMEOUT
    while True:
        processors.check_running(what)
        committed = committed_records(admin)
        if committed is not None and committed >= target:
            return committed
        if time.monotonic() > deadline:
            pytest.fail(
                f"{what}: the group committed {committed} input records, not {target}, "
                f"within {PROGRESS_TIMEOUT}s\n{processors.log_tail()}"
            )
        time.sleep(0.2)


def reach_step(processors, step, what):
    """Until the processor is at `step` of a transaction; returns its line.
    "producing": it has just begun one (its last line is `begin N`), and
    goes on. Else it holds after `step` until released."""
    if step == "producing":
        return processors.wait_for_line(
            lambda lines: lines and " begin " in lines[-1] and lines[-1],
            f"{what}: the processor beginning a transaction", STEP_TIMEOUT, poll=0.002,
        )
    marker = f" holding after {step} "
    held_before = sum(marker in line for line in processors.own_lines())
    processors.hold(step)
    return processors.wait_for_line(
        lambda lines: sum(marker in line for line in lines) > held_before and lines[-1],
        f"{what}: the processor holding after {step}", STEP_TIMEOUT,
    )


def killed_transaction_outcome(admin, processors, what):
    """After the processor's successor initialised its transactions (which
    finishes the killed one), whether the killed transaction's offsets were
    all committed or none were: (N, its records, "committed" or "aborted")."""
    n, ranges = processors.last_transaction(run=-2)
    records = sum(last - first + 1 for first, last in ranges.values())
    processors.wait_for_line(
        lambda lines: any("transactions initialised" in line for line in lines),
        f"{what}: the successor initialising its transactions", PROGRESS_TIMEOUT,
    )
    offsets = group_offsets(admin, require_stable=True)
    at = {p: max(offsets[p], 0) for p in ranges}
    if all(at[p] == last + 1 for p, (_, last) in ranges.items()):
        return n, records, "committed"
    if all(at[p] == first for p, (first, _) in ranges.items()):
        return n, records, "aborted"
    pytest.fail(
        f"{what}: the killed transaction {n} (input offsets {ranges}) is neither committed "
        f"nor aborted: the group's offsets are {offsets}"
    )


def test_exactly_once_with_processor_and_broker_kills(broker, tmp_path):
    started = time.monotonic()
    seed = int(os.environ.get("TRIBUTARY_EOS_SEED") or random.randrange(1 << 32))
    print(f"seed {seed} (TRIBUTARY_EOS_SEED)")
    rng = random.Random(seed)
    bs = broker.bootstrap
    create_topics(bs, {SOURCE: PARTITIONS, SINK: PARTITIONS})
    inputs = produce_input(bs)
    ends = end_offsets(bs, SOURCE)
    assert ends == {p: len(ids) for p, ids in inputs.items()}, ends
    print(f"input produced in {time.monotonic() - started:.1f}s, end offsets {ends}")

    # Survives the broker's restart: see NO_REBOOTSTRAP.
    admin = AdminClient({"bootstrap.servers": bs, **NO_REBOOTSTRAP})
    processors = Processors(bs, ends, tmp_path)
    hidden_at_least = 0  # acknowledged records of aborted killed transactions
    try:
        processors.start()
        committed = 0
        for n, victim in enumerate(KILLS, 1):
            step = rng.choice(STEPS)
            what = f"kill {n} ({victim}, {step})"
            committed = wait_for_progress(
                admin, processors, committed + rng.randint(*PROGRESS), what
            )
            line = reach_step(processors, step, what)
            if victim == "processor":
                processors.current.kill()
                processors.current.wait()
                processors.release()
                processors.start()
                txn, records, outcome = killed_transaction_outcome(admin, processors, what)
                if step != "producing":
                    # It never asked for a commit.
                    assert outcome == "aborted", (
                        f"{what}: the successor committed transaction {txn}, which the "
                        f"killed processor held after {step}"
                    )
                    hidden_at_least += records
                result = f"; transaction {txn} {outcome}"
            else:
                broker.restart()
                processors.release()
                result = ""
            print(
                f"{time.monotonic() - started:6.1f}s kill {n}: {victim} SIGKILLed after "
                f"{committed} committed records, the processor at: {line}"
                f"{result}"
            )

        proc = processors.current
        try:
            code = proc.wait(timeout=FINISH_TIMEOUT)
        except subprocess.TimeoutExpired:
            pytest.fail(
                f"the last processor did not reach the input's end within {FINISH_TIMEOUT}s "
                f"(group offsets {group_offsets(admin, False)}, ends {ends})\n"
                f"{processors.log_tail()}"
            )
        assert code == 0, f"the last processor exited with {code}\n{processors.log_tail()}"
        print(f"{time.monotonic() - started:6.1f}s processed; processor runs: {len(processors.runs)}")
        for i in range(len(processors.runs)):
            aborts = [line for line in processors.own_lines(i) if " abort " in line]
            if aborts:
                print(f"processor run {i + 1} aborted: " + "; ".join(aborts))
    finally:
        processors.kill_all()

    assert group_offsets(admin, require_stable=True) == ends, "committed offsets != input end"

    output = read_output(bs, "read_committed")
    want = Counter(f"out:{v}" for ids in inputs.values() for v in ids)
    got = Counter(v for values in output.values() for v in values)
    missing = sorted(want - got)
    extra = sorted(got - want)
    duplicated = sorted(v for v, count in got.items() if count > 1)
    assert not missing and not extra, (
        f"output != input: {len(missing)} missing (e.g. {missing[:5]}), "
        f"{len(extra)} extra (e.g. {extra[:5]}), {len(duplicated)} duplicated "
        f"(e.g. {duplicated[:5]}); output records per partition "
        f"{ {p: len(v) for p, v in output.items()} }"
    )
    # Each transaction wrote a consecutive run of its partition's input.
    for p in range(PARTITIONS):
        assert output[p] == [f"out:{v}" for v in inputs[p]], f"output partition {p} out of order"

    # The aborted transactions' records are in the log, hidden from read_committed.
    hidden = sum(len(v) for v in read_output(bs, "read_uncommitted").values()) - RECORDS
    print(
        f"{time.monotonic() - started:6.1f}s checked {sum(got.values())} output records; "
        f"the log also holds {hidden} records of aborted transactions"
    )
    assert hidden >= hidden_at_least, (
        f"killed transactions with {hidden_at_least} acknowledged records were aborted, "
        f"but only {hidden} aborted records are in the output log"
    )
