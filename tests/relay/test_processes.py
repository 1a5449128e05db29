"""Two relay processes, the simulator as WLL, PostgreSQL, real tills: kill -9, a database outage, revoke."""

import contextlib
import json
import os
import signal
import ssl
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import httpx
import pytest

from tests.relay.pg import Cluster, free_port
from tillplug.commands.virtual.till import VirtualTill
from tillplug.sim import SimServer

pytestmark = pytest.mark.system

ALICE = "5a1b2c3d-0000-4000-8000-000000000001"  # 1250 points


def write_config(folder: Path, sim_url: str, database_url: str, port: int) -> Path:
    # What `tillplug engine-check` finds the simulator to do, as a chain's technician would have it.
    dialect = folder / "dialect.json"
    answers = {"event_key_filter": "honoured", "order_key_filter": "honoured", "owner_filter": "honoured"}
    dialect.write_text(json.dumps({"version": 1, "answers": answers}))
    path = folder / f"relay-{port}.toml"
    path.write_text(
        f"""
[engine]
preset = "simulator"
base_url = "{sim_url}/v1"
dialect_file = "{dialect}"
connect_timeout = 1.0
read_timeout = 2.0

[database]
url = "{database_url}"

[api]
listen = "127.0.0.1:{port}"

[outbox]
lease = 9
"""
    )
    return path


def cli(*argv: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tillplug", "relay", *argv], capture_output=True, text=True, timeout=timeout
    )


class RelayProcess:
    def __init__(self, config: Path, port: int, log: Path, *, ca_file: str | None = None, wait: bool = True) -> None:
        self.port = port
        self.url = f"{'https' if ca_file else 'http'}://127.0.0.1:{port}"
        self.verify: ssl.SSLContext | bool = ssl.create_default_context(cafile=ca_file) if ca_file else True
        self.log_path = log
        self.log = log.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tillplug", "relay", "run", "--config", str(config)],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        if wait:
            self.wait_ready()

    def wait_ready(self) -> None:
        deadline = time.monotonic() + 30
        while True:
            assert self.proc.poll() is None, self.log_path.read_text()
            try:
                if httpx.get(self.url + "/relay/health", timeout=1, verify=self.verify).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the relay did not start"
            time.sleep(0.1)

    def kill(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()
        self.log.close()


class Chain:
    """PostgreSQL (a cluster of its own: a test may stop it), the simulator, two relay processes."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.cluster = Cluster()
        self.sim = SimServer().start()
        database = self.database = self.cluster.create_database()
        self.configs = []
        self.relays = []
        for name in ("a", "b"):
            port = free_port()
            config = write_config(folder, self.sim.url, database, port)
            self.configs.append(config)
            if name == "a":
                done = cli("migrate", "--config", str(config))
                assert done.returncode == 0, done.stderr
            self.relays.append(RelayProcess(config, port, folder / f"relay-{name}.log", wait=False))
        try:
            for relay in self.relays:  # both start at once: each takes a second or two
                relay.wait_ready()
        except BaseException:
            self.close()
            raise

    def enrol(self, till: str, branch: str = "B01") -> str:
        done = cli("enrol", "--config", str(self.configs[0]), "--till", till, "--branch", branch)
        assert done.returncode == 0, done.stderr
        lines = done.stdout.splitlines()
        assert len(lines) == 1  # the token alone on one line
        return lines[0]

    def faults(self, **values) -> None:
        httpx.post(self.sim.url + "/_sim/faults", json=values, timeout=10).raise_for_status()

    def ledger(self) -> dict:
        return httpx.get(self.sim.url + "/_sim/ledger", timeout=10).json()

    def row(self, event_key: str) -> dict | None:
        import psycopg
        from psycopg.rows import dict_row

        with psycopg.connect(self.database, row_factory=dict_row) as conn:
            return conn.execute(
                "SELECT state, attempts, due, lease_until, last_error, clock_timestamp() AS now FROM events"
                " WHERE event_key = %s",
                (event_key,),
            ).fetchone()

    def close(self) -> None:
        for relay in self.relays:
            relay.stop()
        self.sim.stop()
        self.cluster.destroy()


@pytest.fixture
def chain(tmp_path):
    c = Chain(tmp_path)
    try:
        yield c
    finally:
        c.close()


def wait_until(predicate, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, what() if callable(what) else what
        time.sleep(0.1)


def event(type_: str, subject: str | None, **payload) -> dict:
    body = {"type": type_, "payload": {"eventKey": str(uuid.uuid4()), **payload}}
    if subject:
        body["subject"] = subject
    return body


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def relay_till(chain: Chain, folder: Path, name: str, relay: RelayProcess, **engine) -> VirtualTill:
    """A real till enrolled as ``name`` whose engine is ``relay``: its token in a file only it reads."""
    token_file = folder / f"{name}-token"
    token_file.write_text(chain.enrol(name) + "\n")
    token_file.chmod(0o600)
    engine = {"relay_url": relay.url, "relay_token": str(token_file), **engine}
    return VirtualTill(folder / name, sim=chain.sim, till_id=name, engine=engine)


@contextlib.contextmanager
def two_relay_tills(chain: Chain, folder: Path, names: tuple[str, str], **engine):
    """Tills ``names``, the first through relay A, the second through relay B, closed after."""
    tills = []
    try:
        for name, relay in zip(names, chain.relays, strict=True):
            tills.append(relay_till(chain, folder, name, relay, **engine))
        yield tills
    finally:
        for till in tills:
            till.close()


def test_a_relay_killed_mid_delivery_leaves_the_earn_to_the_other_exactly_once(chain):
    token = chain.enrol("T01")
    a, b = chain.relays
    chain.faults(late_write_seconds=1.5)  # the engine takes the write after the relay is gone
    earn = event("TRANSACTION", ALICE, total=2500, transactionId="tx-k9")
    key = earn["payload"]["eventKey"]
    # Only relay a delivers at first: b is paused, so a claims the row and is killed mid-send.
    os.kill(b.proc.pid, signal.SIGSTOP)
    try:
        assert httpx.post(a.url + "/v1/events/", json=earn, headers=auth(token), timeout=10).status_code == 200
        wait_until(lambda: chain.sim.sim.requests_for(key) >= 1, 10, "relay a never sent the earn")
        a.kill()
    finally:
        os.kill(b.proc.pid, signal.SIGCONT)
    chain.faults(late_write_seconds=0)
    # b takes it over after the lease, looks it up (the write landed late) and does not send it again.
    wait_until(lambda: any(e["eventKey"] == key for e in chain.ledger()["events"]), 20, "the earn never landed")
    resend = httpx.post(b.url + "/v1/events/", json=earn, headers=auth(token), timeout=10)  # the till resends
    assert resend.status_code == 200
    time.sleep(6)  # past b's lease and in-flight window: any second send would have happened
    sent = [e for e in chain.ledger()["events"] if e["eventKey"] == key]
    assert len(sent) == 1
    assert not chain.ledger()["duplicates"]


def test_a_relay_killed_mid_spend_leaves_it_counted_so_the_next_spend_is_not_overdrawn(chain):
    token = chain.enrol("T01")
    other = chain.enrol("T02")
    a, b = chain.relays
    for t, relay in ((token, a), (other, b)):
        assert httpx.get(f"{relay.url}/v1/users/{ALICE}", headers=auth(t), timeout=10).status_code == 200
    chain.faults(late_write_seconds=1.5)
    first = event("REDEEMED_POINTS", ALICE, points=875, transactionId="tx-1")

    def spend_through_a():
        with contextlib.suppress(httpx.HTTPError):  # the relay dies under it: the till's outcome-unknown path
            httpx.post(a.url + "/v1/events/", json=first, headers=auth(token), timeout=10)

    caller = threading.Thread(target=spend_through_a)
    caller.start()
    wait_until(lambda: chain.sim.sim.requests_for(first["payload"]["eventKey"]) >= 1, 10, "the spend never left a")
    a.kill()
    caller.join(15)
    chain.faults(late_write_seconds=0)
    second = event("REDEEMED_POINTS", ALICE, points=875, transactionId="tx-2")
    answer = httpx.post(b.url + "/v1/events/", json=second, headers=auth(other), timeout=15)
    assert answer.status_code == 409, answer.text
    assert answer.json()["data"]["code"] == "insufficient_points"
    # b settles a's spend by look-up; the till's look-up then finds it.
    lookup = f"{b.url}/v1/events/?filter[payload.eventKey]={first['payload']['eventKey']}"

    def settled():
        r = httpx.get(lookup, headers=auth(token), timeout=10)
        return r.status_code == 200 and len(r.json()["data"]) == 1

    wait_until(settled, 30, "relay b never settled the spend relay a was killed in")
    time.sleep(0.3)
    assert chain.ledger()["balances"][ALICE] == 1250 - 875
    assert sum(e["type"] == "REDEEMED_POINTS" for e in chain.ledger()["events"]) == 1


def test_postgresql_away_gives_503_then_everything_resumes(chain):
    token = chain.enrol("T01")
    a, _ = chain.relays
    chain.faults(down=True)  # the engine away too: the earn waits in the relay's table
    earn = event("TRANSACTION", ALICE, total=1000, transactionId="tx-pg")
    assert httpx.post(a.url + "/v1/events/", json=earn, headers=auth(token), timeout=10).status_code == 200
    chain.cluster.stop()
    try:
        during = httpx.post(
            a.url + "/v1/events/", json=event("TRANSACTION", None, total=5), headers=auth(token), timeout=20
        )
        assert during.status_code in (401, 503), during.text  # a cached token, or none: never a 5xx crash
        if during.status_code == 503:
            assert during.json()["data"]["code"] == "relay_unavailable"
        health = httpx.get(a.url + "/relay/health", timeout=20)
        assert health.status_code == 503
        time.sleep(5)
    finally:
        chain.cluster.start()
    chain.faults(down=False)
    wait_until(
        lambda: httpx.get(a.url + "/relay/health", timeout=10).status_code == 200, 30, "the relay never came back"
    )
    # A cashier's answered call shows the engine is back: what waited for it is sent now.
    assert httpx.get(f"{a.url}/v1/users/1000001", headers=auth(token), timeout=10).status_code == 200
    key = earn["payload"]["eventKey"]
    wait_until(lambda: any(e["eventKey"] == key for e in chain.ledger()["events"]), 15, lambda: chain.row(key))
    assert sum(e["eventKey"] == key for e in chain.ledger()["events"]) == 1


def test_a_revoked_till_is_refused_by_every_relay_within_5_s_mid_sale(chain, tmp_path):
    a, b = chain.relays
    with relay_till(chain, tmp_path, "till-01", a) as till:
        assert till.api.post("/v1/checkouts", json={"transactionId": "TXR", "lane": 1}).status_code == 201
        attached = till.api.put("/v1/checkouts/TXR/member", json={"code": "1000001"})
        assert attached.status_code == 200, attached.text
        spent = till.api.post("/v1/checkouts/TXR/points", json={"points": 100})
        assert spent.status_code == 200, spent.text
        token = (tmp_path / "till-01-token").read_text().strip()
        for relay in (a, b):
            assert httpx.get(f"{relay.url}/v1/users/{ALICE}", headers=auth(token), timeout=10).status_code == 200
        done = cli("revoke", "--config", str(chain.configs[1]), "--till", "till-01")
        assert done.returncode == 0, done.stderr
        revoked = time.monotonic()
        for relay in (a, b):
            wait_until(
                lambda relay=relay: (
                    httpx.get(f"{relay.url}/v1/users/{ALICE}", headers=auth(token), timeout=10).status_code == 401
                ),
                5 - (time.monotonic() - revoked),
                "a revoked token was still served after 5 s",
            )
        # The revoked till is told its credentials are refused (a technician re-enrols it); nothing moves.
        completed = till.api.post("/v1/checkouts/TXR/complete", json={"total": 1500, "paymentConfirmed": True})
        assert completed.status_code == 502, completed.text
        assert completed.json()["error"]["code"] == "engine_auth_failed"
    time.sleep(0.3)
    assert chain.ledger()["balances"][ALICE] == 1250 - 100
    assert [e["type"] for e in chain.ledger()["events"]] == ["REDEEMED_POINTS"]


def test_real_tills_through_two_relays_earn_exactly_once_and_hold_no_wll_secret(chain, tmp_path):
    with two_relay_tills(chain, tmp_path, ("till-01", "till-02")) as (t1, t2):
        for till in (t1, t2):
            assert till.config.engine.api_key is None and till.config.engine.client_secret is None
        for n, till in enumerate((t1, t2)):
            tx = f"TXE{n}"
            assert till.api.post("/v1/checkouts", json={"transactionId": tx, "lane": 1}).status_code == 201
            assert till.api.put(f"/v1/checkouts/{tx}/member", json={"code": "1000001"}).status_code == 200
            done = till.api.post(f"/v1/checkouts/{tx}/complete", json={"total": 2000, "paymentConfirmed": True})
            assert done.status_code == 200, done.text
        wait_until(
            lambda: sum(e["type"] == "TRANSACTION" for e in chain.ledger()["events"]) >= 2, 30, "earns never landed"
        )
        time.sleep(2)
        earns = [e for e in chain.ledger()["events"] if e["type"] == "TRANSACTION"]
        assert len(earns) == 2
        assert not chain.ledger()["duplicates"]


def test_a_till_keeps_selling_while_the_relay_is_away_and_its_outbox_delivers_after(chain, tmp_path):
    a = chain.relays[0]
    with relay_till(chain, tmp_path, "till-01", a) as till:
        a.stop()  # the till's relay is away
        assert till.api.post("/v1/checkouts", json={"transactionId": "TXO", "lane": 1}).status_code == 201
        attached = till.api.put("/v1/checkouts/TXO/member", json={"code": "1000001"})
        assert attached.status_code == 200, attached.text  # attached offline, as with WLL away
        done = till.api.post("/v1/checkouts/TXO/complete", json={"total": 3000, "paymentConfirmed": True})
        assert done.status_code == 200, done.text
        assert not [e for e in chain.ledger()["events"] if e["type"] == "TRANSACTION"]
        chain.relays[0] = RelayProcess(chain.configs[0], a.port, tmp_path / "relay-a2.log")  # back
        wait_until(
            lambda: sum(e["type"] == "TRANSACTION" for e in chain.ledger()["events"]) == 1,
            60,
            "the till's queued earn never reached WLL through the relay",
        )
    time.sleep(1)
    assert sum(e["type"] == "TRANSACTION" for e in chain.ledger()["events"]) == 1


def test_two_real_tills_spending_70_percent_of_one_member_at_once_never_both_keep_it(chain, tmp_path):
    """The engine applies deductions 1.5 s late (the hostile dialect's timing): without the relay's
    guard both tills see the whole balance (tests/flows/test_money_through_api.py's xfail)."""
    httpx.post(chain.sim.url + "/_sim/dialect", json={"reactions": "delayed"}, timeout=10).raise_for_status()
    with two_relay_tills(chain, tmp_path, ("till-01", "till-02")) as tills:
        for till in tills:
            assert till.api.post("/v1/checkouts", json={"transactionId": "TX70", "lane": 1}).status_code == 201
            assert till.api.put("/v1/checkouts/TX70/member", json={"code": "1000001"}).status_code == 200
        answers: dict[int, httpx.Response] = {}

        def spend(n: int) -> None:
            answers[n] = tills[n].api.post("/v1/checkouts/TX70/points", json={"points": 875})

        threads = [threading.Thread(target=spend, args=(n,)) for n in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        granted = [r for r in answers.values() if r.status_code == 200]
        refused = [r for r in answers.values() if r.status_code != 200]
        assert len(granted) == 1, [r.text for r in answers.values()]
        assert refused[0].json()["error"]["code"] == "insufficient_points", refused[0].text
        time.sleep(2)  # the late reaction applies
        assert chain.ledger()["balances"][ALICE] == 1250 - 875


def test_a_sale_at_one_till_is_returned_half_at_another_and_half_at_its_own_points_exact(chain, tmp_path):
    """Sale at till A (500 points spent, 25 earned), half returned at till B, the other half at A:
    every point moves back exactly once, and a further return is refused at either till."""
    with two_relay_tills(chain, tmp_path, ("till-a", "till-b")) as (a, b):
        assert a.api.post("/v1/checkouts", json={"transactionId": "SR1", "lane": 1}).status_code == 201
        assert a.api.put("/v1/checkouts/SR1/member", json={"code": "1000001"}).status_code == 200
        assert a.api.post("/v1/checkouts/SR1/points", json={"points": 500}).status_code == 200
        assert a.api.post("/v1/checkouts/SR1/tender", json={}).status_code == 200
        basket = [{"sku": "SHIRT", "quantity": 2, "amount": 1500}, {"sku": "SOCKS", "quantity": 2, "amount": 1500}]
        done = a.api.post(
            "/v1/checkouts/SR1/complete", json={"total": 2500, "basket": basket, "paymentConfirmed": True}
        )
        assert done.status_code == 200, done.text
        wait_until(lambda: any(e["type"] == "TRANSACTION" for e in chain.ledger()["events"]), 30, "no earn")

        shirts = {"returnId": "RB-1", "transactionId": "SR1", "lane": 1, "amount": 1500, "lines": [basket[0]]}
        at_b = b.api.post("/v1/returns", json=shirts)
        assert at_b.status_code == 201, at_b.text
        assert at_b.json()["giveBack"]["points"] == 250 and at_b.json()["returnable"] == 1500

        def taken_back(till, points: int):
            moves = [e for e in chain.ledger()["events"] if e["type"] == "POINTS_TAKEN_BACK"]
            return sum(e["points"] for e in moves) == points

        wait_until(lambda: taken_back(b, 15), 60, lambda: f"B's take-back never landed: {chain.ledger()['events']}")
        socks = {"returnId": "RA-1", "transactionId": "SR1", "lane": 1, "amount": 1500, "lines": [basket[1]]}
        at_a = a.api.post("/v1/returns", json=socks)
        assert at_a.status_code == 201, at_a.text
        assert at_a.json()["returnedSoFar"] == 3000 and at_a.json()["returnable"] == 0
        assert at_a.json()["giveBack"]["points"] == 250 and at_a.json()["takeBack"]["points"] == 10
        for till in (a, b):
            more = {"returnId": "R-MORE", "transactionId": "SR1", "lane": 1, "amount": 100}
            refused = till.api.post("/v1/returns", json=more)
            assert refused.status_code == 409, refused.text
            assert refused.json()["error"]["code"] == "return_exceeds_sale"

        def moved_back() -> bool:
            moves = [e for e in chain.ledger()["events"] if e["type"] in ("POINTS_REFUND", "POINTS_TAKEN_BACK")]
            return len(moves) == 4

        wait_until(moved_back, 60, lambda: chain.ledger()["events"])
        time.sleep(2)  # nothing more arrives
        ledger = chain.ledger()
        assert ledger["balances"][ALICE] == 1250  # -500 +25, then +250 -15 (at B) and +250 -10 (at A)
        assert not ledger["duplicates"]
        assert sorted(e["points"] for e in ledger["events"] if e["type"] == "POINTS_REFUND") == [250, 250]


def test_a_return_taken_while_the_relay_was_away_still_counts_once_it_is_back(chain, tmp_path):
    """Till A's own sale: a first return while A's relay is away (taken on A's knowledge), then the
    relay is back: a second return continues the shares, and past the sale is refused at A and at B."""
    a_relay = chain.relays[0]
    with two_relay_tills(chain, tmp_path, ("till-a", "till-b"), max_attempts=1) as (a, b):
        assert a.api.post("/v1/checkouts", json={"transactionId": "SR2", "lane": 1}).status_code == 201
        assert a.api.put("/v1/checkouts/SR2/member", json={"code": "1000001"}).status_code == 200
        assert a.api.post("/v1/checkouts/SR2/points", json={"points": 500}).status_code == 200
        assert a.api.post("/v1/checkouts/SR2/tender", json={}).status_code == 200
        done = a.api.post("/v1/checkouts/SR2/complete", json={"total": 2500, "paymentConfirmed": True})
        assert done.status_code == 200, done.text
        wait_until(lambda: any(e["type"] == "TRANSACTION" for e in chain.ledger()["events"]), 30, "no earn")
        a_relay.stop()
        first = a.api.post("/v1/returns", json={"returnId": "R1", "transactionId": "SR2", "lane": 1, "amount": 1500})
        assert first.status_code == 201, first.text
        assert first.json()["giveBack"]["points"] == 250
        chain.relays[0] = RelayProcess(chain.configs[0], a_relay.port, tmp_path / "relay-a2.log")
        second = a.api.post("/v1/returns", json={"returnId": "R2", "transactionId": "SR2", "lane": 1, "amount": 1500})
        assert second.status_code == 201, second.text
        assert second.json()["giveBack"]["points"] == 250  # the share continues from the first return's
        assert second.json()["returnedSoFar"] == 3000 and second.json()["returnable"] == 0
        more = {"returnId": "R3", "transactionId": "SR2", "lane": 1, "amount": 1}
        at_a = a.api.post("/v1/returns", json=more)
        assert at_a.status_code == 409 and at_a.json()["error"]["code"] == "return_exceeds_sale", at_a.text
        # B sees only what the relay was told (the second return: the first was taken while it was
        # away), so B takes another 15.00; the relay still caps the points moved back at the sale's.
        at_b = b.api.post("/v1/returns", json={**more, "amount": 1500})
        assert at_b.status_code == 201, at_b.text

        def given_back() -> int:
            return sum(e["points"] for e in chain.ledger()["events"] if e["type"] == "POINTS_REFUND")

        wait_until(lambda: given_back() >= 500, 60, lambda: chain.ledger()["events"])
        time.sleep(3)  # whatever B queued has had its turn at the relay
        assert given_back() == 500  # never past the 500 points spent on the sale
        assert not chain.ledger()["duplicates"]
