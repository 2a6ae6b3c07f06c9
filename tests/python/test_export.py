"""Issue #5 acceptance: `tributary export` replays a topic into Parquet that
DuckDB and pyarrow read, locally and on S3 (moto).

100k JSON records with nested fields, keys and headers go into 6 partitions
through confluent-kafka producers using four compression codecs; the export
runs while the broker serves. Row counts, per-partition offset ranges and a
few aggregates must match what was produced; a second run changes nothing;
`--incremental` adds exactly the new records; a killed export run again
leaves a complete, duplicate-free result.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from conftest import broker_bin, free_port

TOPIC = "events"
PARTITIONS = 6
RECORDS = 100_000
TIMEOUT = 60
CODECS = ("gzip", "snappy", "lz4", "zstd")


def create_topic(bs):
    admin = AdminClient({"bootstrap.servers": bs})
    for f in admin.create_topics([NewTopic(TOPIC, PARTITIONS, 1)]).values():
        f.result(TIMEOUT)


def event(i):
    return {
        "id": i,
        "user": {"name": f"u{i % 50}", "age": i % 90},
        "amount": i * 0.5,
        "tags": ["x", "y"] if i % 2 else [],
    }


def produce(bs, start, n):
    """Produces ids start..start+n, a quarter per codec; returns
    {id: (partition, offset)} from the delivery reports."""
    acked = {}
    errors = []

    def on_delivery(err, msg):
        if err:
            errors.append(err)
        else:
            acked[json.loads(msg.value())["id"]] = (msg.partition(), msg.offset())

    quarter = -(-n // len(CODECS))
    for q, codec in enumerate(CODECS):
        p = Producer({
            "bootstrap.servers": bs,
            "compression.type": codec,
            "linger.ms": 20,
            "acks": "all",
        })
        for i in range(start + q * quarter, min(start + (q + 1) * quarter, start + n)):
            while True:
                try:
                    p.produce(
                        TOPIC,
                        key=f"user-{i % 50}".encode(),
                        value=json.dumps(event(i)).encode(),
                        # A repeated key: Kafka keeps both, in order.
                        headers=[("src", codec.encode()), ("i", str(i).encode()),
                                 ("src", b"again")],
                        on_delivery=on_delivery,
                    )
                    break
                except BufferError:
                    p.poll(0.1)
            p.poll(0)
        assert p.flush(TIMEOUT) == 0
    assert not errors, errors[:3]
    assert len(acked) == n
    return acked


def export(broker, dest, *args, env=None):
    out = subprocess.run(
        [str(broker_bin()), "export", "--data-dir", str(broker.data_dir),
         "--topic", TOPIC, "--to", dest, "--json", *args],
        capture_output=True, timeout=300, env=env,
    )
    assert out.returncode == 0, out.stderr.decode()
    return json.loads(out.stdout)


def expected_shape(acked):
    """(partition, count, min offset, max offset) rows, ordered."""
    per = {}
    for p, o in acked.values():
        c, lo, hi = per.get(p, (0, o, o))
        per[p] = (c + 1, min(lo, o), max(hi, o))
    return [(p, *per[p]) for p in sorted(per)]


def check_with_duckdb(con, source, acked):
    shape = con.execute(
        f'SELECT partition, count(*), min("offset"), max("offset") FROM {source} '
        "GROUP BY partition ORDER BY partition"
    ).fetchall()
    assert shape == expected_shape(acked)
    ids = list(acked)
    total, amount, max_age, users, dupes = con.execute(
        f"SELECT count(*), sum(value.amount), max(value.user.age), count(DISTINCT key), "
        f'count(*) - count(DISTINCT (partition, "offset")) FROM {source}'
    ).fetchone()
    assert total == len(ids) and dupes == 0
    assert amount == pytest.approx(sum(i * 0.5 for i in ids))
    assert max_age == max(i % 90 for i in ids)
    assert users == 50
    # Each record's id sits at its acknowledged offset.
    placed = con.execute(
        f'SELECT value.id, partition, "offset" FROM {source}'
    ).fetchall()
    assert {i: (p, o) for i, p, o in placed} == acked
    src, n, k1, k2, k3, again = con.execute(
        f"SELECT headers[1].value, len(headers), headers[1].key, headers[2].key, "
        f"headers[3].key, headers[3].value FROM {source} WHERE value.id = 7"
    ).fetchone()
    assert src in (c.encode() for c in CODECS) and n == 3
    assert (k1, k2, k3) == ("src", "i", "src") and again == b"again"


def parquet_files(root: Path):
    return sorted((str(p.relative_to(root)), p.stat().st_size) for p in root.rglob("*.parquet"))


def test_export_local_duckdb_pyarrow_rerun_incremental_kill(broker, tmp_path):
    create_topic(broker.bootstrap)
    acked = produce(broker.bootstrap, 0, RECORDS)

    out = tmp_path / "out"
    args = ("--value-format", "json", "--key-format", "string", "--max-rows-per-file", "5000")
    first = export(broker, f"file://{out}", *args)
    assert first["records"] == RECORDS and first["rejected"] == 0
    files = parquet_files(out)
    assert len(files) == first["files_written"]

    con = duckdb.connect()
    glob = f"read_parquet('{out}/topic={TOPIC}/*/*.parquet')"
    check_with_duckdb(con, glob, acked)

    table = pq.read_table(out / f"topic={TOPIC}")  # Hive partitions from the path
    assert table.num_rows == RECORDS
    assert {"offset", "timestamp", "key", "value", "headers", "partition"} <= set(table.column_names)
    meta = pq.read_metadata(out / files[0][0]).metadata
    assert meta[b"tributary.topic"] == TOPIC.encode()

    # The same export again changes nothing.
    again = export(broker, f"file://{out}", *args)
    assert again["files_written"] == 0 and again["records"] == 0
    assert parquet_files(out) == files

    # More records; --incremental adds exactly those.
    acked.update(produce(broker.bootstrap, RECORDS, 5_000))
    inc = export(broker, f"file://{out}", *args, "--incremental")
    assert inc["records"] == 5_000
    check_with_duckdb(con, glob, acked)

    # An export killed mid-way, run again: complete, no duplicates.
    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        [str(broker_bin()), "export", "--data-dir", str(broker.data_dir), "--topic", TOPIC,
         "--to", f"file://{killed}", "--quiet", *args],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + TIMEOUT
    while not parquet_files(killed) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    export(broker, f"file://{killed}", *args)
    check_with_duckdb(con, f"read_parquet('{killed}/topic={TOPIC}/*/*.parquet')", acked)


@pytest.fixture
def moto():
    port = free_port()
    server = Path(sys.executable).parent / "moto_server"
    proc = subprocess.Popen([str(server), "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            assert time.time() < deadline, "moto_server did not start"
            time.sleep(0.1)
    try:
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


def test_export_to_s3_read_back_with_pyarrow_and_duckdb(broker, moto):
    import boto3

    create_topic(broker.bootstrap)
    acked = produce(broker.bootstrap, 0, 20_000)
    env = dict(os.environ, AWS_ACCESS_KEY_ID="test", AWS_SECRET_ACCESS_KEY="test",
               AWS_REGION="us-east-1", AWS_EC2_METADATA_DISABLED="true")
    endpoint = f"http://127.0.0.1:{moto}"
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                 aws_access_key_id="test", aws_secret_access_key="test").create_bucket(Bucket="lake")
    dest = f"s3://lake/kafka?endpoint={endpoint}&path_style=true&region=us-east-1"
    summary = export(broker, dest, "--value-format", "json", "--key-format", "string", env=env)
    assert summary["records"] == 20_000

    fs = pafs.S3FileSystem(endpoint_override=f"127.0.0.1:{moto}", scheme="http",
                           access_key="test", secret_key="test", region="us-east-1")
    events = pq.read_table(f"lake/kafka/topic={TOPIC}", filesystem=fs)
    assert events.num_rows == 20_000
    con = duckdb.connect()
    con.register("events", events)
    check_with_duckdb(con, "events", acked)

    again = export(broker, dest, "--value-format", "json", "--key-format", "string", env=env)
    assert again["files_written"] == 0
