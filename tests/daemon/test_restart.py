"""Whether a restart now would cut something short (tillplug.daemon.restart) and the command that asks
(`tillplug ready-to-restart`, `restart-when-ready`), against real stores and a real daemon."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tillplug.commands.cli import main
from tillplug.commands.restart import EXIT_CANNOT_TELL, EXIT_NOT_SAFE, EXIT_SAFE, RestartPlan, wait_for_safe_moment
from tillplug.config import Config
from tillplug.daemon.restart import ABANDONED_AFTER, Blocker, find_blockers, readiness
from tillplug.flows.checkouts import Checkout, CheckoutStore
from tillplug.outbox.store import open_store
from tillplug.spool.jobs import JobStore


@pytest.fixture
def stores(tmp_path):
    outbox = open_store(tmp_path / "outbox.sqlite3")
    checkouts = CheckoutStore(outbox)  # the checkouts, deductions and burns tables, as the daemon makes them
    jobs = JobStore(tmp_path / "print_jobs.sqlite3")
    yield outbox, checkouts, jobs
    jobs.close()
    outbox.close()


def test_nothing_in_progress_is_safe(stores):
    outbox, _, jobs = stores
    assert readiness(find_blockers(outbox, jobs)) == {"safe": True, "reason": None, "blockers": []}


def test_an_open_checkout_blocks_and_names_its_lane_until_it_is_completed(stores):
    outbox, checkouts, jobs = stores
    co = Checkout(tx_id="T1", lane=3)
    with checkouts.transaction() as tx:
        checkouts.insert(tx, co)
    answer = readiness(find_blockers(outbox, jobs))
    assert answer["safe"] is False and answer["reason"] == "1 checkout open on lane 3"
    co.state = "completed"
    with checkouts.transaction() as tx:
        checkouts.save(tx, co)
    assert readiness(find_blockers(outbox, jobs))["safe"] is True


def test_a_checkout_its_till_abandoned_long_ago_no_longer_blocks(stores):
    outbox, checkouts, jobs = stores
    with checkouts.transaction() as tx:
        checkouts.insert(tx, Checkout(tx_id="OLD", lane=1))
    later = time.time() + ABANDONED_AFTER + 1
    assert find_blockers(outbox, jobs, now=later) == []
    assert [b.what for b in find_blockers(outbox, jobs)] == ["checkout_open"]


def test_an_engine_write_being_sent_blocks(stores):
    outbox, _, jobs = stores
    outbox.add(kind="event", stream="s", body={"x": 1}, event_key="k1")
    assert find_blockers(outbox, jobs) == []  # queued, not being sent: a restart keeps it queued
    assert outbox.claim() is not None  # now 'sending'
    assert find_blockers(outbox, jobs) == [Blocker("engine_write_sending", 1)]
    assert readiness(find_blockers(outbox, jobs))["reason"] == "1 engine write being sent"


def test_a_points_spend_being_sent_blocks(stores):
    outbox, checkouts, jobs = stores
    from tillplug.flows.checkouts import Deduction

    with checkouts.transaction() as tx:  # the sale is paid; its spend's answer is still on the way
        checkouts.insert(tx, Checkout(tx_id="T1", lane=1, state="completed"))
        checkouts.add_deduction(tx, Deduction("ek", "T1", 100, 100, "sending", False, time.time(), False))
    assert [b.what for b in find_blockers(outbox, jobs)] == ["engine_write_sending"]


def test_a_print_job_being_written_blocks(stores):
    outbox, _, jobs = stores
    jobs.add("printer1", 1, "slip", "api", b"\x1b@hello", hold_seconds=60)
    assert find_blockers(outbox, jobs) == []
    assert jobs.claim("printer1") is not None  # the spool is writing it to the printer
    assert readiness(find_blockers(outbox, jobs))["reason"] == "1 print job being written"


@given(st.lists(st.integers(min_value=1, max_value=99), max_size=6))
@settings(max_examples=50, deadline=None)
def test_the_reason_is_always_one_line_naming_every_busy_lane(lanes):
    found = [Blocker("checkout_open", len(lanes), tuple(sorted(set(lanes))))] if lanes else []
    found.append(Blocker("scan_in_progress", 1, (7,)))
    reason = readiness(found)["reason"]
    assert "\n" not in reason and reason.endswith("1 scan being handled on lane 7")
    for lane in set(lanes):
        assert str(lane) in reason


# -- the command, against a real daemon -----------------------------------------------------


def _config_for(till, tmp_path: Path, token: str | None = None) -> Path:
    cfg = tmp_path / "c.toml"
    text = (
        f'till_id="t"\nbranch_id="b"\n[engine]\npreset="simulator"\n[api]\nlisten="127.0.0.1:{till.daemon.api_port}"\n'
    )
    if token:
        (tmp_path / "token").write_text(token)
        text += f'token="{tmp_path / "token"}"\n'
    cfg.write_text(text)
    return cfg


def test_ready_to_restart_says_no_while_a_checkout_is_open_on_a_real_daemon(tmp_path, capsys):
    from tillplug.commands.virtual.till import VirtualTill

    with VirtualTill(tmp_path / "till") as till:
        cfg = _config_for(till, tmp_path)
        assert main(["ready-to-restart", "--config", str(cfg)]) == EXIT_SAFE
        assert capsys.readouterr().out == "safe to restart: nothing in progress\n"
        assert till.api.post("/v1/checkouts", json={"transactionId": "T1", "lane": 1}).status_code == 201
        assert main(["ready-to-restart", "--config", str(cfg)]) == EXIT_NOT_SAFE
        out = capsys.readouterr().out
        assert out == "not safe to restart: 1 checkout open on lane 1\n"
        answer = till.api.get("/v1/restart").json()
        assert answer["blockers"] == [{"what": "checkout_open", "count": 1, "lanes": [1]}]
        done = till.api.post("/v1/checkouts/T1/complete", json={"total": 1000, "paymentConfirmed": True})
        assert done.status_code == 200, done.text
        assert main(["ready-to-restart", "--config", str(cfg)]) == EXIT_SAFE
    # The daemon is gone: the command cannot tell (it never claims "safe" without having asked).
    assert main(["ready-to-restart", "--config", str(cfg)]) == EXIT_CANNOT_TELL
    assert "not running" in capsys.readouterr().out


def test_ready_to_restart_asks_with_the_api_token(tmp_path, capsys):
    from tillplug.commands.virtual.till import VirtualTill

    (tmp_path / "api-token").write_text("s3cret-token-for-the-api")
    with VirtualTill(tmp_path / "till", api={"listen": "127.0.0.1:0", "token": str(tmp_path / "api-token")}) as till:
        assert till.api.get("/v1/restart").status_code == 401
        (tmp_path / "wrong").mkdir()
        wrong = _config_for(till, tmp_path / "wrong", token="nope")
        assert main(["ready-to-restart", "--config", str(wrong)]) == EXIT_CANNOT_TELL
        assert "refused the API token" in capsys.readouterr().out
        right = _config_for(till, tmp_path, token="s3cret-token-for-the-api")
        assert main(["ready-to-restart", "--config", str(right)]) == EXIT_SAFE
        assert "s3cret" not in capsys.readouterr().out


def test_the_scheduled_restart_waits_for_the_checkout_then_goes_and_gives_up_waiting_when_bounded(tmp_path):
    from tillplug.commands.virtual.till import VirtualTill

    with VirtualTill(tmp_path / "till") as till:
        config = Config.model_validate(
            {"till_id": "t", "branch_id": "b", "engine": {"preset": "simulator"},
             "api": {"listen": f"127.0.0.1:{till.daemon.api_port}"}}
        )  # fmt: skip
        assert till.api.post("/v1/checkouts", json={"transactionId": "T9", "lane": 1}).status_code == 201
        ticks = {"n": 0}

        def sleep(_: float) -> None:  # the till finishes its sale during the third wait
            ticks["n"] += 1
            if ticks["n"] == 3:
                assert (
                    till.api.post(
                        "/v1/checkouts/T9/complete", json={"total": 500, "paymentConfirmed": True}
                    ).status_code
                    == 200
                )

        reason = wait_for_safe_moment(config, RestartPlan(within=60, every=0), sleep=sleep)
        # Not before the sale ended; maybe a tick later (its earn may still be on its way out).
        assert reason == "safe moment: nothing in progress" and ticks["n"] >= 3
        assert till.api.post("/v1/checkouts", json={"transactionId": "T10", "lane": 1}).status_code == 201
        now = iter(range(0, 1000, 10))
        reason = wait_for_safe_moment(
            config, RestartPlan(within=25, every=0), clock=lambda: float(next(now)), sleep=lambda _: None
        )
        assert reason.startswith("no safe moment within 25 s (last: not safe to restart: 1 checkout open on lane 1)")
    assert wait_for_safe_moment(config, RestartPlan(within=25, every=0)) == (
        "the daemon is not running: nothing to interrupt"
    )


def test_restart_readiness_is_in_the_openapi_document(tmp_path):
    from tillplug.api.openapi import document

    doc = document()
    assert "/v1/restart" in doc["paths"]
    assert json.dumps(doc["paths"]["/v1/restart"]).count("RestartReadiness") >= 1


def test_a_token_file_missing_is_cannot_tell_with_the_reason_not_a_traceback(tmp_path, capsys):
    from tillplug.commands.restart import ask
    from tillplug.config import load_config

    token = tmp_path / "api-token"
    token.write_text("t0ken")
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        f'till_id="t"\nbranch_id="b"\n[engine]\npreset="simulator"\n[api]\nlisten="127.0.0.1:1"\ntoken="{token}"\n'
    )
    config = load_config(str(cfg))
    token.unlink()  # gone after the config was read (a credential rotated by hand, say)
    verdict = ask(config)
    assert verdict.code == EXIT_CANNOT_TELL and verdict.line.startswith("cannot tell: ") and "api-token" in verdict.line
    assert main(["ready-to-restart", "--config", str(cfg)]) == EXIT_CANNOT_TELL  # refused with the config
    assert "api.token" in capsys.readouterr().err
