"""Exactly-once consume-transform-produce with confluent-kafka, run by
test_exactly_once.py as a subprocess that it SIGKILLs and restarts.

    eos_processor.py BOOTSTRAP INPUT_TOPIC OUTPUT_TOPIC ENDS_JSON [HOLD_FILE]

Consumes INPUT_TOPIC in the group "eos" (read_committed, no auto-commit) and
writes each record's value as `out:<value>` to the same partition of
OUTPUT_TOPIC, one transaction per polled batch, with the batch's input
offsets committed in the same transaction (send_offsets_to_transaction). The
transactional.id is fixed, so a restarted processor fences its killed
predecessor and aborts its open transaction.

Errors as librdkafka documents them: a retriable one retries the call, an
abortable one (txn_requires_abort) aborts the transaction and rewinds the
consumer to the group's committed offsets, anything else is fatal (exit 3).
Exits 0 once the group's committed offsets equal ENDS_JSON
({"partition": end offset}), 2 after IDLE_TIMEOUT_S without a record.

Progress goes to stderr, one line per step, each starting with "eos ": in
transaction N, "begin N" comes right after begin_transaction, "produced N"
once its records are acknowledged (written to the log, not yet committed),
"offsets sent N" once its input offsets are part of it, and "committed N"
after commit_transaction.

While HOLD_FILE holds a step's name ("produced" or "offsets sent"), the
processor stops after that step of its next transaction ("holding after
... N") until the file is removed: the test kills it (or the broker) there.
"""

import json
import os
import sys
import time
from pathlib import Path

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Producer,
    TopicPartition,
)

GROUP = "eos"
TRANSACTIONAL_ID = "eos-processor"
BATCH = 1000  # records per transaction, at most
OP_TIMEOUT_S = 30  # for one client call
RETRY_FOR_S = 90  # how long a retriable error is retried
IDLE_TIMEOUT_S = 90
HOLD_MAX_S = 60  # a hold nobody ends
# librdkafka (2.10 and later) answers "all brokers down" -- a single broker
# restarting -- by re-bootstrapping, which decommissions the broker handle its
# coordinator cache still points at; send_offsets_to_transaction() then hangs
# past its timeout (confluentinc/librdkafka#5511, #5456). Without
# re-bootstrapping the client reconnects to the same broker handle.
NO_REBOOTSTRAP = {"metadata.recovery.strategy": "none"}
# e.g. TRIBUTARY_EOS_DEBUG=eos,protocol: librdkafka's transaction steps.
DEBUG = os.environ.get("TRIBUTARY_EOS_DEBUG")

START = time.monotonic()


def log(message):
    print(f"eos {time.monotonic() - START:7.2f}s {message}", file=sys.stderr, flush=True)


def retry(call, what):
    """`call()`, repeated while it raises a retriable KafkaException."""
    deadline = time.monotonic() + RETRY_FOR_S
    while True:
        try:
            return call()
        except KafkaException as e:
            error = e.args[0]
            if not error.retriable() or time.monotonic() > deadline:
                raise
            log(f"{what}: retriable error, retrying: {error}")
            time.sleep(0.2)


class Processor:
    def __init__(self, bootstrap, source, sink, ends, hold_file):
        self.source, self.sink, self.ends, self.hold_file = source, sink, ends, hold_file
        self.producer = Producer(
            {
                "bootstrap.servers": bootstrap,
                "transactional.id": TRANSACTIONAL_ID,
                "linger.ms": 5,
                **NO_REBOOTSTRAP,
                **({"debug": DEBUG} if DEBUG else {}),
            }
        )
        # Fences the killed predecessor and aborts its open transaction, so
        # the committed offsets read below are stable.
        retry(lambda: self.producer.init_transactions(OP_TIMEOUT_S), "init_transactions")
        log("transactions initialised")
        self.consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": GROUP,
                "isolation.level": "read_committed",
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                # A killed predecessor leaves a member behind until its
                # session times out; 6 s keeps each restart short.
                "session.timeout.ms": 6000,
                "heartbeat.interval.ms": 1000,
                **NO_REBOOTSTRAP,
            }
        )
        self.consumer.subscribe(
            [source],
            on_assign=lambda _c, tps: log(f"assigned {sorted(tp.partition for tp in tps)}"),
            on_revoke=lambda _c, tps: log(f"revoked {sorted(tp.partition for tp in tps)}"),
        )
        self.transactions = 0

    def committed(self):
        """{partition: offset} the group has committed (stable offsets)."""
        tps = [TopicPartition(self.source, p) for p in self.ends]
        found = self.consumer.committed(tps, timeout=OP_TIMEOUT_S)
        return {tp.partition: tp.offset for tp in found}

    def done(self):
        try:
            return self.committed() == self.ends
        except KafkaException as e:
            log(f"reading the committed offsets: {e.args[0]}")
            return False

    def run(self):
        last_record = time.monotonic()
        while True:
            records = []
            for msg in self.consumer.consume(BATCH, 1.0):
                error = msg.error()
                if error is None:
                    records.append(msg)
                elif error.fatal():
                    raise KafkaException(error)
                elif error.code() != KafkaError._PARTITION_EOF:
                    log(f"consumer error: {error}")
            if records:
                last_record = time.monotonic()
                self.transform(records)
            elif self.done():
                log(f"done: committed offsets {self.ends}")
                return 0
            elif time.monotonic() - last_record > IDLE_TIMEOUT_S:
                log(f"idle for {IDLE_TIMEOUT_S}s; committed offsets {self.committed()}")
                return 2

    def transform(self, records):
        """One transaction: the records transformed to the sink, and the
        offsets after them committed for the group."""
        self.transactions += 1
        n = self.transactions
        # Offsets from the records themselves: position() forgets a seeked
        # partition until a record comes from it.
        first, offsets = {}, {}
        for msg in records:
            first.setdefault(msg.partition(), msg.offset())
            offsets[msg.partition()] = msg.offset() + 1
        ranges = {p: f"{first[p]}-{offsets[p] - 1}" for p in sorted(offsets)}
        try:
            self.producer.begin_transaction()
            log(f"begin {n}: {len(records)} records, input offsets {ranges}")
            for msg in records:
                self.produce(msg.partition(), b"out:" + msg.value())
            # Written out now: a kill from here on leaves records in the log
            # for the successor's init_transactions to abort.
            left = self.producer.flush(OP_TIMEOUT_S)
            log(f"produced {n}" + (f" ({left} records not yet acknowledged)" if left else ""))
            self.hold("produced", n)
            tps = [TopicPartition(self.source, p, o) for p, o in sorted(offsets.items())]
            retry(
                lambda: self.producer.send_offsets_to_transaction(
                    tps, self.consumer.consumer_group_metadata(), OP_TIMEOUT_S
                ),
                "send_offsets_to_transaction",
            )
            log(f"offsets sent {n}")
            self.hold("offsets sent", n)
            retry(lambda: self.producer.commit_transaction(OP_TIMEOUT_S), "commit_transaction")
            log(f"committed {n}: offsets {dict(sorted(offsets.items()))}")
        except KafkaException as e:
            error = e.args[0]
            if not error.txn_requires_abort():
                raise
            log(f"abort {n}: {error}")
            retry(lambda: self.producer.abort_transaction(OP_TIMEOUT_S), "abort_transaction")
            self.rewind()

    def produce(self, partition, value):
        while True:
            try:
                self.producer.produce(self.sink, value=value, partition=partition)
                return
            except BufferError:
                self.producer.poll(0.1)

    def hold(self, step, n):
        """Waits while the hold file names `step`."""
        try:
            if self.hold_file is None or self.hold_file.read_text() != step:
                return
        except FileNotFoundError:
            return
        log(f"holding after {step} {n}")
        deadline = time.monotonic() + HOLD_MAX_S
        while self.hold_file.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        log(f"released {n}")

    def rewind(self):
        """Back to the group's committed offsets: the aborted transaction's
        records are processed again."""
        committed = retry(self.committed, "reading the committed offsets")
        assigned = {tp.partition for tp in self.consumer.assignment()}
        for p, offset in sorted(committed.items()):
            if p in assigned:
                # A failed seek would skip the aborted records: fatal.
                self.consumer.seek(
                    TopicPartition(self.source, p, offset if offset >= 0 else OFFSET_BEGINNING)
                )
        log(f"rewound to {committed} (assigned {sorted(assigned)})")


def main():
    bootstrap, source, sink, ends = sys.argv[1:5]
    ends = {int(p): offset for p, offset in json.loads(ends).items()}
    hold_file = Path(sys.argv[5]) if len(sys.argv) > 5 else None
    processor = None
    try:
        processor = Processor(bootstrap, source, sink, ends, hold_file)
        return processor.run()
    except KafkaException as e:
        log(f"FATAL: {e.args[0]}")
        return 3
    finally:
        if processor is not None:
            processor.consumer.close()


if __name__ == "__main__":
    sys.exit(main())
