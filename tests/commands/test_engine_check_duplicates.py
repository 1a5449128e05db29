"""#21: engine-check finds out whether the engine refuses a second event with the same eventKey.

Only with ``--yes``; whatever the engine does, the member's balance ends where it began, and every
test event carries the till's tillId and branchId.
"""

import subprocess
import sys

import pytest

from tillplug.engine.dialect import read_dialect_file
from tillplug.sim import SimServer
from tillplug.sim.dialects import Dialect

ALICE = "5a1b2c3d-0000-4000-8000-000000000001"


def run_check(tmp_path, sim, *extra):
    answers = tmp_path / "dialect.json"
    cfg = tmp_path / "tillplug.toml"
    cfg.write_text(
        f'till_id = "till-07"\nbranch_id = "branch-0042"\nstate_dir = "{tmp_path / "state"}"\n'
        f'[engine]\npreset = "simulator"\nbase_url = "{sim.url}/v1"\ndialect_file = "{answers}"\n'
    )
    r = subprocess.run(
        [sys.executable, "-m", "tillplug", "engine-check", "--config", str(cfg), "--card", "1000001", *extra],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout, read_dialect_file(answers)


@pytest.mark.parametrize("rejects", [False, True])
def test_a_repeated_event_key_is_probed_and_what_it_spent_is_refunded(tmp_path, rejects):
    with SimServer(dialect=Dialect(reject_duplicate_keys=rejects)) as sim:
        out, dialect = run_check(tmp_path, sim, "--yes")
        events = [e for e in sim.state.ledger.events if e["subject"] == ALICE]
        balance = sim.state.members[ALICE]["pointsBalance"]
    assert dialect.duplicate_event_key == ("rejected" if rejects else "accepted")
    assert balance == 1250, "what the probe spent was refunded"
    kinds = [e["type"] for e in events]
    assert kinds == ["REDEEMED_POINTS", "POINTS_REFUND"] * (1 if rejects else 2)
    assert all(e["payload"]["tillId"] == "till-07" and e["payload"]["branchId"] == "branch-0042" for e in events)
    assert ("took the same event twice" in out) is not rejects
    assert "duplicate_event_key" in out


def test_without_yes_the_duplicate_probe_is_not_made(tmp_path):
    with SimServer() as sim:
        _out, dialect = run_check(tmp_path, sim)
        assert sim.state.ledger.events == []
    assert dialect.duplicate_event_key == "unknown"
