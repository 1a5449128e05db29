"""The relay's /metrics and `tillplug relay outbox`: what a technician watches and what they fix."""

import asyncio
import subprocess
import sys
import uuid
from pathlib import Path

import httpx
import psycopg
from prometheus_client.parser import text_string_to_metric_families

from tests.relay.conftest import bearer, relay_config, running

ALICE = "5a1b2c3d-0000-4000-8000-000000000001"  # 1250 points in the seed


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            found[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return found


def value(text: str, name: str, **labels: str) -> float:
    return samples(text).get((name, tuple(sorted(labels.items()))), 0.0)


def earn(tx: str) -> dict:
    return {
        "type": "TRANSACTION",
        "subject": ALICE,
        "payload": {"eventKey": str(uuid.uuid4()), "total": 1000, "transactionId": tx},
    }


def test_metrics_count_requests_429s_the_guard_engine_errors_and_the_outbox(sim, database, tmp_path):
    token_file = tmp_path / "metrics-token"
    token_file.write_text("m-secret-token\n")
    token_file.chmod(0o600)
    config = relay_config(
        sim.url, database, pacing={"rate": 0.01, "burst": 6, "max_wait": 0}, api={"metrics_token": str(token_file)}
    )

    async def go():
        async with running(config, deliver=False) as (parts, http):
            token = await parts.tokens.enrol("T01", "B01")
            assert (await http.get("/v1/users/1000001")).status_code == 401
            assert (await http.get("/v1/users/1000001", headers=bearer(token))).status_code == 200
            spend = {
                "type": "REDEEMED_POINTS",
                "subject": ALICE,
                "payload": {"eventKey": str(uuid.uuid4()), "points": 5000},
            }
            assert (await http.post("/v1/events/", json=spend, headers=bearer(token))).status_code == 409
            httpx.post(sim.url + "/_sim/faults", json={"error_rate": 1.0, "error_status": 503}, timeout=10)
            assert (await http.get("/v1/users/1000001", headers=bearer(token))).status_code == 503
            httpx.post(sim.url + "/_sim/faults", json={"error_rate": 0.0}, timeout=10)
            statuses = [(await http.get("/v1/users/1000001", headers=bearer(token))).status_code for _ in range(6)]
            assert 429 in statuses  # the chain's bucket (6 tokens, hardly refilled) ran dry
            for tx in ("tx-a", "tx-b"):
                assert (await http.post("/v1/events/", json=earn(tx), headers=bearer(token))).status_code == 200

            text = (await http.get("/metrics")).text  # loopback: no token needed
            assert value(text, "tillplug_relay_requests_total", route="/v1/users/{ident}", status="200") >= 1
            assert value(text, "tillplug_relay_requests_total", route="/v1/users/{ident}", status="401") == 1
            assert value(text, "tillplug_relay_requests_total", route="/v1/events", status="409") == 1
            assert value(text, "tillplug_relay_rate_limited_total") == statuses.count(429)
            assert value(text, "tillplug_relay_guard_refusals_total", reason="insufficient_points") == 1
            assert value(text, "tillplug_relay_guard_wait_seconds_count") == 1
            assert value(text, "tillplug_relay_engine_errors_total", endpoint="users", error="503") >= 1
            assert value(text, "tillplug_relay_outbox_rows", kind="earn", state="pending") == 2
            assert value(text, "tillplug_relay_forwarded_events_total", kind="earn") == 0
            assert "T01" not in text and "B01" not in text and ALICE not in text  # no till, branch or member label

            await parts.pacer.engine_said_wait(0)  # refill: the outbox may deliver now
            await parts.store.execute("UPDATE pacing SET tokens = 6")
            for _ in range(50):  # bounded
                await parts.deliverer.pass_once()
                after = (await http.get("/metrics")).text
                if value(after, "tillplug_relay_forwarded_events_total", kind="earn") == 2:
                    break
                await parts.store.execute("UPDATE pacing SET tokens = 6")
                await asyncio.sleep(0.05)
            assert value(after, "tillplug_relay_forwarded_events_total", kind="earn") == 2
            assert value(after, "tillplug_relay_outbox_rows", kind="earn", state="pending") == 0

            # Beyond loopback: the metrics token, and nothing else, opens it.
            remote = httpx.ASGITransport(app=parts.web.app, client=("10.1.2.3", 40000))
            async with httpx.AsyncClient(transport=remote, base_url="http://relay.test") as far:
                assert (await far.get("/metrics")).status_code == 403
                assert (await far.get("/metrics", headers=bearer(token))).status_code == 403  # a till's token
                assert (await far.get("/metrics", headers=bearer("m-secret-token"))).status_code == 200

    asyncio.run(go())


def test_behind_a_trusted_proxy_even_loopback_needs_the_metrics_token(sim, database):
    config = relay_config(sim.url, database, api={"trusted_proxy": "127.0.0.1"})

    async def go():
        async with running(config, deliver=False) as (_, http):
            assert (await http.get("/metrics")).status_code == 403

    asyncio.run(go())


def cli(config: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tillplug", "relay", "outbox", *argv, "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_outbox_cli_lists_retries_and_drops_what_needs_a_human(sim, database, tmp_path):
    config_file = tmp_path / "relay.toml"
    config_file.write_text(
        f'[engine]\npreset = "simulator"\nbase_url = "{sim.url}/v1"\n\n[database]\nurl = "{database}"\n'
    )
    refused, kept = earn("tx-dead"), earn("tx-kept")

    async def queue():
        async with running(relay_config(sim.url, database), deliver=False) as (parts, http):
            token = await parts.tokens.enrol("T01", "B01")
            for body in (refused, kept):
                assert (await http.post("/v1/events/", json=body, headers=bearer(token))).status_code == 200
            # The engine refuses the first for good (a 422): it is dead, kept for a human.
            httpx.post(sim.url + "/_sim/faults", json={"error_rate": 1.0, "error_status": 422}, timeout=10)
            await parts.store.execute(
                "UPDATE events SET due = clock_timestamp() + interval '1 hour' WHERE event_key = %s",
                (kept["payload"]["eventKey"],),
            )
            await parts.deliverer.pass_once()
            httpx.post(sim.url + "/_sim/faults", json={"error_rate": 0.0}, timeout=10)
            assert (await parts.store.event(refused["payload"]["eventKey"]))["state"] == "dead"

    asyncio.run(queue())
    dead_key, kept_key = refused["payload"]["eventKey"], kept["payload"]["eventKey"]

    listed = cli(config_file, "list")
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert lines[0].startswith("event_key\tkind\tstate")
    assert any(line.startswith(f"{dead_key}\tearn\tdead\tT01\t") for line in lines)
    assert kept_key not in listed.stdout  # merely waiting: not a human's business
    assert ALICE not in listed.stdout

    assert cli(config_file, "drop", dead_key).returncode == 2  # without --yes, nothing happens
    retried = cli(config_file, "retry", dead_key)
    assert retried.returncode == 0 and "due now" in retried.stdout
    assert cli(config_file, "retry", "no-such-key-123").returncode == 1

    async def deliver():
        async with running(relay_config(sim.url, database), deliver=False) as (parts, _):
            for _ in range(50):  # bounded
                await parts.deliverer.pass_once()
                if (await parts.store.event(dead_key))["state"] == "delivered":
                    return
                await asyncio.sleep(0.05)

    asyncio.run(deliver())
    sent = [e for e in httpx.get(sim.url + "/_sim/ledger", timeout=10).json()["events"] if e["eventKey"] == dead_key]
    assert len(sent) == 1
    assert "nothing in the relay's outbox needs a human" in cli(config_file, "list").stdout

    dropped = cli(config_file, "drop", kept_key, "--yes")
    assert dropped.returncode == 0 and "dropped" in dropped.stdout
    again = cli(config_file, "drop", kept_key, "--yes")
    assert again.returncode == 1 and "it is dropped" in again.stderr
    with psycopg.connect(database) as conn:
        state = conn.execute("SELECT state FROM events WHERE event_key = %s", (kept_key,)).fetchone()
    assert state == ("dropped",)
