"""The fleet benchmark (bench/fleet.py) on a tiny fleet, so CI runs the real pacing and
delivery code of many tills on the virtual clock: every queued row arrives, cashiers are served,
no 429 storm, and the last line is the JSON docs/performance.md quotes."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
KEYS = {
    "tills", "outage_s", "backlog", "drain_s", "min_drain_s", "rate_429", "interactive_success",
    "p99_interactive_wait_s",
}  # fmt: skip


def test_a_tiny_fleet_drains_its_outage_backlog_without_a_429_storm():
    run = subprocess.run(
        [sys.executable, "-m", "bench.fleet", "--tills", "50", "--outage", "60", "--quick"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert set(result) == KEYS
    assert result["tills"] == 50 and result["outage_s"] == 60
    assert result["backlog"] > 0  # sales went on during the outage and queued
    # Every row queued before the engine came back was delivered, no sooner than physics allows.
    assert 0 < result["min_drain_s"] <= result["drain_s"] < 600
    assert result["rate_429"] < 0.01
    assert result["interactive_success"] >= 0.99
