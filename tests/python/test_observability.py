"""The Grafana dashboard (deploy/grafana/tributary.json) only uses series a
live broker exposes, and consumer-group lag follows a confluent-kafka group
as it reads and commits."""

import json
import re
import time
import urllib.request
from pathlib import Path

from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from conftest import free_port

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "tributary.json"
TIMEOUT = 30


def scrape(port):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        return r.read().decode()


def series_names(page):
    names = set()
    for line in page.splitlines():
        if line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


def value(page, name, **labels):
    """The value of `name` with exactly these labels, or None."""
    for line in page.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        head, _, v = line.rpartition(" ")
        found = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', head))
        if found == {k: str(v) for k, v in labels.items()}:
            return float(v)
    return None


def dashboard_exprs():
    exprs = []

    def walk(node):
        if isinstance(node, dict):
            if isinstance(node.get("expr"), str):
                exprs.append(node["expr"])
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(json.loads(DASHBOARD.read_text()))
    return exprs


def test_dashboard_series_exist_and_lag_moves(broker_with_args):
    admin = free_port()
    broker = broker_with_args("--metrics-listen", f"127.0.0.1:{admin}")
    bs = broker.bootstrap
    admin_client = AdminClient({"bootstrap.servers": bs})
    for f in admin_client.create_topics([NewTopic("watched", num_partitions=3)]).values():
        f.result(TIMEOUT)

    p = Producer({"bootstrap.servers": bs})
    for i in range(600):
        p.produce("watched", partition=i % 3, value=b"x" * 100)
    assert p.flush(TIMEOUT) == 0

    # A group that reads 600 records but commits only the first 200 of what
    # it saw (in order per partition).
    c = Consumer({
        "bootstrap.servers": bs,
        "group.id": "dash",
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
    })
    c.subscribe(["watched"])
    seen = []
    deadline = time.monotonic() + TIMEOUT
    while len(seen) < 600 and time.monotonic() < deadline:
        m = c.poll(1.0)
        if m is not None and m.error() is None:
            seen.append(m)
    assert len(seen) == 600
    c.commit(message=seen[199], asynchronous=False)

    def lag_total(page):
        total, parts = 0.0, 0
        for line in page.splitlines():
            if line.startswith('tributary_consumer_group_lag{group="dash"'):
                total += float(line.rpartition(" ")[2])
                parts += 1
        return total, parts

    # Only the committed partition has lag: what was produced to it after
    # the committed record.
    committed = seen[199]
    in_partition = sum(1 for m in seen if m.partition() == committed.partition())
    expected = in_partition - (committed.offset() + 1)
    deadline = time.monotonic() + TIMEOUT
    while True:
        page = scrape(admin)
        total, parts = lag_total(page)
        if parts >= 1 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert (total, parts) == (expected, 1), page
    assert value(page, "tributary_consumer_group_committed_offset", group="dash",
                 topic="watched", partition=committed.partition()) == committed.offset() + 1

    # Commit everything: the lag drops to 0 at the next measurement.
    for m in seen:
        c.commit(message=m, asynchronous=True)
    c.commit(asynchronous=False)
    deadline = time.monotonic() + TIMEOUT
    while True:
        page = scrape(admin)
        total, parts = lag_total(page)
        if (parts >= 3 and total == 0) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert (total, parts) == (0, 3), page
    c.close()

    # A second flush, so the time between flushes has a sample.
    p.produce("watched", partition=0, value=b"late")
    assert p.flush(TIMEOUT) == 0
    time.sleep(1.5)  # the 1 s publisher of store, cache and memory figures
    page = scrape(admin)

    assert value(page, "tributary_produce_records_total", topic="watched") == 601
    assert value(page, "tributary_fetch_records_total", topic="watched") >= 600

    # Every series a dashboard panel queries is on the page (histograms by
    # their _bucket/_sum/_count series).
    present = series_names(page)
    exprs = dashboard_exprs()
    assert len(exprs) >= 20
    wanted = set()
    for expr in exprs:
        wanted.update(re.findall(r"\b((?:tributary|process)_[a-z0-9_]+)", expr))
    missing = sorted(w for w in wanted if w not in present)
    assert not missing, f"dashboard queries series the broker does not expose: {missing}"
