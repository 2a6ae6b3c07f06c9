"""The README's confluent-kafka examples, run verbatim against the broker.

`examples/producer.py` and `examples/consumer.py` are the user's code as
written (bootstrap `localhost:9092`, a 1-second poll): the broker must serve
them unchanged, including auto-creating `example_topic` and letting a new
group member receive the record within its single poll.
"""

import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).parent / "examples"
TIMEOUT_S = 60


def run_example(name: str) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / name)],
        cwd=EXAMPLES,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    print(f"--- {name} exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}")
    return result


def test_examples_verbatim(broker_9092):
    produced = run_example("producer.py")
    assert produced.returncode == 0
    assert "Message sent:" in produced.stdout

    consumed = run_example("consumer.py")
    assert consumed.returncode == 0
    assert "Received: {'id': 1, 'name': 'Alice', 'amount': 100.5}" in consumed.stdout
