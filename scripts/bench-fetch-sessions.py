#!/usr/bin/env python3
"""Fetch sessions (KIP-227): broker CPU and bytes per fetch for a consumer of
many partitions, with incremental sessions and without.

Starts a release broker on a fresh data directory, creates a topic of
--partitions partitions with one record in each, then for each mode runs a
kafka-python consumer (kafka-python implements KIP-227; librdkafka does not)
assigned to every partition for --seconds after it has read them all, so
every fetch after that is a caught-up long poll. Broker CPU comes from
/proc/<pid>/stat, fetch counts and answer bytes from /metrics.

    python3 scripts/bench-fetch-sessions.py [--partitions 1000] [--seconds 20]

Needs confluent-kafka and kafka-python (tests/python/requirements.txt) and
the release binary (cargo build --release -p tributary-cli).
"""

import argparse
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def metric(page, name, **labels):
    total = 0.0
    for line in page.splitlines():
        if not (line.startswith(name + "{") or line.startswith(name + " ")):
            continue
        head, _, v = line.rpartition(" ")
        found = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', head))
        if all(found.get(k) == str(x) for k, x in labels.items()):
            total += float(v)
    return total


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--partitions", type=int, default=1000)
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--bin", default=os.path.join(
        os.environ.get("CARGO_TARGET_DIR", os.path.expanduser("~/.cache/tributary/target")),
        "release", "tributary"))
    args = ap.parse_args()

    from confluent_kafka import Producer
    from confluent_kafka.admin import AdminClient, NewTopic
    from kafka import KafkaConsumer, TopicPartition

    port, admin_port = free_port(), free_port()
    data = tempfile.mkdtemp(prefix="tributary-sessions-")
    broker = subprocess.Popen(
        [args.bin, "serve", "--data-dir", data, "--listen", f"127.0.0.1:{port}",
         "--metrics-listen", f"127.0.0.1:{admin_port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    bootstrap = f"127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    sys.exit("broker did not start")
                time.sleep(0.1)
        topic = "sessions"
        admin = AdminClient({"bootstrap.servers": bootstrap})
        admin.create_topics(
            [NewTopic(topic, num_partitions=args.partitions, replication_factor=1)]
        )[topic].result(30)
        p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 50})
        for i in range(args.partitions):
            p.produce(topic, value=b"x" * 100, partition=i)
        p.flush(60)

        def scrape():
            with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/metrics", timeout=10) as r:
                return r.read().decode()

        rows = []
        for sessions in (False, True):
            c = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                              fetch_max_wait_ms=100,
                              enable_incremental_fetch_sessions=sessions)
            c.assign([TopicPartition(topic, i) for i in range(args.partitions)])
            c.seek_to_beginning()
            got = 0
            while got < args.partitions:
                got += sum(len(v) for v in c.poll(timeout_ms=500).values())
            before, cpu0 = scrape(), cpu_seconds(broker.pid)
            end = time.monotonic() + args.seconds
            while time.monotonic() < end:
                c.poll(timeout_ms=200)
            after, cpu1 = scrape(), cpu_seconds(broker.pid)
            c.close()
            fetches = metric(after, "tributary_requests_total", api="Fetch") - metric(
                before, "tributary_requests_total", api="Fetch")
            rows.append((sessions, fetches, (cpu1 - cpu0) / max(fetches, 1) * 1e6,
                         (cpu1 - cpu0) / args.seconds * 100))
        print(f"{args.partitions} partitions, caught-up consumer, {args.seconds:.0f} s each")
        print()
        print("| fetch sessions | fetches | broker CPU per fetch | broker CPU |")
        print("|---|---:|---:|---:|")
        for sessions, fetches, per_fetch, share in rows:
            print(f"| {'incremental' if sessions else 'off (full fetches)'} | {fetches:.0f} "
                  f"| {per_fetch:.0f} µs | {share:.1f} % of a core |")
    finally:
        broker.terminate()
        broker.wait(30)


if __name__ == "__main__":
    main()
