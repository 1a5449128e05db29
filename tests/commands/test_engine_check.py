"""`tillplug engine-check` against the simulator in each dialect: every point detected as the dialect is."""

import json
import subprocess
import sys

import pytest

from tests.engine_helpers import DIALECT_NAMES
from tillplug.engine.dialect import read_dialect_file
from tillplug.sim import SimServer

ALICE = "5a1b2c3d-0000-4000-8000-000000000001"


def config_file(tmp_path, sim, dialect_file=None):
    cfg = tmp_path / "tillplug.toml"
    extra = f'dialect_file = "{dialect_file}"\n' if dialect_file else ""
    cfg.write_text(
        f'till_id = "t"\nbranch_id = "b"\nstate_dir = "{tmp_path / "state"}"\n'
        f'[engine]\npreset = "simulator"\nbase_url = "{sim.url}/v1"\n{extra}'
    )
    return cfg


def history(sim):
    """An order with an eventKey, as any tenant that took orders has (engine-check writes none)."""
    sim.state.submit_order(
        {
            "orderId": "old-1",
            "totalSpend": 100,
            "submitter": {"authIdentifier": "auth-bob"},
            "metadata": {"eventKey": "old-order-key"},
        }
    )


@pytest.mark.parametrize("name", DIALECT_NAMES)
def test_engine_check_detects_each_dialect_and_nets_to_zero(tmp_path, name):
    answers = tmp_path / "dialect.json"
    with SimServer(dialect=name) as sim:
        history(sim)
        cfg = config_file(tmp_path, sim, dialect_file=answers)
        r = subprocess.run(
            [sys.executable, "-m", "tillplug", "engine-check", "--config", str(cfg), "--card", "1000001", "--yes"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert r.returncode == 0, r.stdout + r.stderr
        assert sim.state.members[ALICE]["pointsBalance"] == 1250  # spent 1, refunded 1 (each time)
        spent = [e["type"] for e in sim.state.ledger.events if e["subject"] == ALICE]
        # The spend is sent again with its eventKey (#21): these engines take it, so it is refunded too.
        assert spent == ["REDEEMED_POINTS", "POINTS_REFUND"] * 2
        assert sim.state.ledger.burns == []  # the voucher probe burns nothing
        expected = sim.sim.dialect.answers()
    assert read_dialect_file(answers) == expected, r.stdout
    written = json.loads(answers.read_text())
    assert written["evidence"]["net_zero"] is True and written["evidence"]["sent"]
    assert "net zero" in r.stdout and "sim-client-secret" not in answers.read_text() + r.stdout
    # Who the check was about is kept once, as the test member the daemon's reactor check asks about at
    # start (issue 22); what was sent never names it.
    assert written.pop("testMember") == ALICE
    assert ALICE not in json.dumps(written) and "auth-alice" not in answers.read_text()


def test_without_yes_nothing_is_written_to_the_engine(tmp_path):
    with SimServer(dialect="strict") as sim:
        history(sim)
        cfg = config_file(tmp_path, sim)
        out = tmp_path / "answers.json"
        r = subprocess.run(
            [
                sys.executable,
                "-m",
                "tillplug",
                "engine-check",
                "--config",
                str(cfg),
                "--card",
                "1000001",
                "--out",
                str(out),
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert r.returncode == 0, r.stdout + r.stderr
        assert sim.state.ledger.events[1:] == []  # only the history's ORDER_PLACED
        got = read_dialect_file(out)
    assert got.reactions == "unknown" and got.write_bodies == "unknown"
    assert got.owner_filter == "ignored" and got.order_key_filter == "ignored"
    assert got.voucher_refusals == "status_only" and got.auth_identifier_lookup == "refused"


def test_the_daemon_trusts_not_found_only_when_the_dialect_file_says_the_filter_works(tmp_path):
    from tests.engine_helpers import sim_client  # noqa: F401  (the client reads the file itself)
    from tillplug.config.model import EngineConfig
    from tillplug.engine import EngineClient, load_secrets

    answers = tmp_path / "d.json"
    answers.write_text(json.dumps({"version": 1, "answers": {"event_key_filter": "honoured"}}))
    cfg = EngineConfig(preset="simulator", base_url="http://127.0.0.1:9/v1", dialect_file=str(answers))
    client = EngineClient(cfg, load_secrets(cfg))
    assert client.filter_evidence.works("event") and not client.filter_evidence.works("order")


def test_a_missing_dialect_file_is_a_warning_and_the_client_trusts_nothing(tmp_path, caplog):
    from tillplug.config.loader import validate
    from tillplug.config.model import EngineConfig
    from tillplug.engine import EngineClient, load_secrets

    missing = str(tmp_path / "none.json")
    engine = {"preset": "simulator", "dialect_file": missing}
    report = validate({"till_id": "t", "branch_id": "b", "engine": engine}, check_secrets=False)
    assert report.ok and any(p.path == "engine.dialect_file" and p.severity == "warning" for p in report.problems)
    cfg = EngineConfig(**engine)
    client = EngineClient(cfg, load_secrets(cfg))
    assert client.dialect.event_key_filter == "unknown" and "engine-check" in caplog.text
