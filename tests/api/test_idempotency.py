"""Idempotency-Key on the calls that change something (issues 22 and 20): a POS that retries a call
whose answer it never got is answered, never served twice.  Driven through the real HTTP server, with
the engine simulator slowed where a call must still be running."""

import base64
import contextlib
import json
import sqlite3
import threading
import uuid

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tillplug.api.idempotency import KEEP_SECONDS, IdempotencyStore, fingerprint
from tillplug.api.openapi import document
from tillplug.api.routes import OPERATIONS
from tillplug.commands.virtual.till import VirtualTill, poll_until
from tillplug.sim import SimServer

KEYED = {
    ("POST", "/v1/checkouts"),
    ("PUT", "/v1/checkouts/{tx}/member"),
    ("POST", "/v1/checkouts/{tx}/points"),
    ("POST", "/v1/checkouts/{tx}/vouchers"),
    ("POST", "/v1/checkouts/{tx}/benefits/{bid}/redeem"),
    ("POST", "/v1/checkouts/{tx}/tender"),
    ("POST", "/v1/checkouts/{tx}/complete"),
    ("POST", "/v1/checkouts/{tx}/void"),
    ("POST", "/v1/returns"),
    ("POST", "/v1/print/raw"),
    ("POST", "/v1/drawer/open"),
}


@pytest.fixture(scope="module")
def till(tmp_path_factory):
    with VirtualTill(tmp_path_factory.mktemp("till")) as t:
        yield t


def key() -> dict[str, str]:
    return {"Idempotency-Key": str(uuid.uuid4())}


def faults(sim: SimServer, **values) -> None:
    httpx.post(sim.url + "/_sim/faults", json=values, timeout=10).raise_for_status()


def balance(t: VirtualTill) -> int:
    return int(t.api.get("/v1/members/1000001").json()["pointsBalance"])


def claimed(t: VirtualTill, idempotency_key: str) -> str | None:
    """The state of a key in the daemon's store, read beside it (SQLite WAL: readers never block it)."""
    with contextlib.closing(sqlite3.connect(t.workdir / "state" / "idempotency.sqlite3")) as db:
        row = db.execute("SELECT state FROM requests WHERE key = ?", (idempotency_key,)).fetchone()
    return row[0] if row else None


def redeemed(t: VirtualTill) -> list[dict]:
    return [e for e in t.ledger()["events"] if e["type"] == "REDEEMED_POINTS"]


# -- the observation ------------------------------------------------------------------------------------


def test_a_spend_retried_with_the_same_key_after_the_client_gave_up_deducts_once(tmp_path):
    """Seen: a POS whose client gave up on a slow spend and retried "spend 500 points" deducted twice."""
    with VirtualTill(tmp_path / "till") as t:
        assert t.api.post("/v1/checkouts", json={"transactionId": "RETRY1"}, headers=key()).status_code == 201
        assert t.api.put("/v1/checkouts/RETRY1/member", json={"code": "1000001"}).status_code == 200
        start = balance(t)
        spend = key()
        faults(t.sim, slow_ms=2000)  # every engine request takes 2 s: the spend takes seconds
        gave_up: list[BaseException] = []

        def impatient() -> None:
            try:
                httpx.post(f"{t.url}/v1/checkouts/RETRY1/points", json={"points": 500}, headers=spend, timeout=0.2)
            except httpx.TimeoutException as exc:
                gave_up.append(exc)

        first = threading.Thread(target=impatient)
        first.start()
        first.join(10)
        assert gave_up, "the client was meant to give up"
        assert poll_until(lambda: claimed(t, spend["Idempotency-Key"]) == "running", 10)  # the first call runs
        retry = t.api.post("/v1/checkouts/RETRY1/points", json={"points": 500}, headers=spend)
        assert retry.status_code == 409 and retry.json()["error"]["code"] == "request_in_progress"
        faults(t.sim, slow_ms=0)
        answers: list[httpx.Response] = []

        def answered() -> bool:
            answers.append(t.api.post("/v1/checkouts/RETRY1/points", json={"points": 500}, headers=spend))
            return answers[-1].status_code != 409

        assert poll_until(answered, 30, every=0.2)
        final = answers[-1]
        assert final.status_code == 200 and final.headers["idempotent-replayed"] == "true", final.text
        assert final.json()["points"] == 500
        assert t.api.get("/v1/checkouts/RETRY1").json()["pointsSpent"] == 500
        assert t.settle()
        assert len([e for e in redeemed(t) if e["points"] == 500]) == 1
        assert balance(t) == start - 500
        # The same key with another amount is another request: refused, nothing spent.
        other = t.api.post("/v1/checkouts/RETRY1/points", json={"points": 400}, headers=spend)
        assert other.status_code == 422 and other.json()["error"]["code"] == "idempotency_key_reused"
        assert t.api.get("/v1/checkouts/RETRY1").json()["pointsSpent"] == 500


def test_the_stored_answer_survives_a_restart(tmp_path):
    """Money: a retry after the daemon restarted still answers the spend it made, and spends nothing."""
    sim = SimServer().start()
    try:
        spend = key()
        with VirtualTill(tmp_path / "till", sim=sim) as t:
            t.api.post("/v1/checkouts", json={"transactionId": "RESTART1"})
            t.api.put("/v1/checkouts/RESTART1/member", json={"code": "1000001"})
            first = t.api.post("/v1/checkouts/RESTART1/points", json={"points": 300}, headers=spend)
            assert first.status_code == 200, first.text
            assert t.settle()
            after = balance(t)
        with VirtualTill(tmp_path / "till", sim=sim) as t:
            again = t.api.post("/v1/checkouts/RESTART1/points", json={"points": 300}, headers=spend)
            assert again.status_code == first.status_code and again.json() == first.json()
            assert again.headers["idempotent-replayed"] == "true"
            assert t.api.get("/v1/checkouts/RESTART1").json()["pointsSpent"] == 300
            assert t.settle()
            assert balance(t) == after and len([e for e in redeemed(t) if e["points"] == 300]) == 1
    finally:
        sim.stop()


# -- the rules ------------------------------------------------------------------------------------------


def test_a_raw_receipt_and_a_drawer_kick_retried_with_their_keys_happen_once(till):
    """A POS retry never prints a receipt twice or kicks the drawer twice."""
    receipt = {"data": base64.b64encode(b"\x1b@RECEIPT 42\n\x1dV\x00").decode()}
    raw, drawer = key(), key()
    first = [till.api.post("/v1/print/raw", json=receipt, headers=raw) for _ in range(3)]
    kicks = [till.api.post("/v1/drawer/open", json={}, headers=drawer) for _ in range(3)]
    for answers in (first, kicks):
        assert {a.status_code for a in answers} == {202}
        assert len({a.json()["job"] for a in answers}) == 1
        assert [a.headers.get("idempotent-replayed") for a in answers] == [None, "true", "true"]
    jobs = till.api.get("/v1/print/jobs").json()["jobs"]
    assert len([j for j in jobs if j["job"] == first[0].json()["job"]]) == 1
    without_key = till.api.post("/v1/print/raw", json=receipt)
    assert without_key.json()["job"] != first[0].json()["job"]  # no key: every call runs, as before


def test_a_key_belongs_to_one_checkout(till):
    shared = key()
    for tx in ("SCOPE1", "SCOPE2"):
        assert till.api.post("/v1/checkouts", json={"transactionId": tx, "lane": 1}, headers=shared).status_code in (
            201,
            409,
        )
        voided = till.api.post(f"/v1/checkouts/{tx}/void", headers=shared)
        assert voided.status_code == 200 and voided.json()["transactionId"] == tx
        assert "idempotent-replayed" not in voided.headers


def test_a_failure_that_changed_nothing_lets_the_retry_run(till):
    """The engine down: nothing was spent, so the retry under the same key runs again (and spends)."""
    till.api.post("/v1/checkouts", json={"transactionId": "DOWN1"})
    assert till.api.put("/v1/checkouts/DOWN1/member", json={"code": "1000001"}).status_code == 200
    spend = key()
    faults(till.sim, down=True)
    try:
        refused = till.api.post("/v1/checkouts/DOWN1/points", json={"points": 10}, headers=spend)
    finally:
        faults(till.sim, down=False)
    assert refused.status_code >= 500 and refused.json()["error"]["code"].startswith("engine")
    assert till.api.get("/v1/checkouts/DOWN1").json()["pointsSpent"] == 0
    again = till.api.post("/v1/checkouts/DOWN1/points", json={"points": 10}, headers=spend)
    assert again.status_code == 200 and "idempotent-replayed" not in again.headers


def test_a_key_that_is_not_a_key_is_refused(till):
    for bad in ("a b", "x" * 256, "caf\u00e9", "tab\there"):
        r = till.api.post(
            "/v1/checkouts",
            json={"transactionId": "BADKEY1"},
            headers={"Idempotency-Key": bad.encode()},
        )
        assert r.status_code == 400, (bad, r.text)
    assert till.api.get("/v1/checkouts/BADKEY1").status_code == 404


def test_the_openapi_document_names_the_header_on_every_keyed_call():
    doc = document()
    keyed = {(op.method, op.path) for op in OPERATIONS if op.idempotent}
    assert keyed == KEYED
    for method, path in KEYED:
        spec = doc["paths"][path][method.lower()]
        [header] = [p for p in spec["parameters"] if p["in"] == "header"]
        assert header["name"] == "Idempotency-Key" and "same key" in header["description"]
        assert {"409", "422"} <= set(spec["responses"])
    assert all(
        "parameters" not in spec or all(p["in"] != "header" for p in spec["parameters"])
        for path, methods in doc["paths"].items()
        for method, spec in methods.items()
        if (method.upper(), path) not in KEYED
    )


# -- the body-matching rule -----------------------------------------------------------------------------

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**12), 10**12) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)


@settings(max_examples=200, deadline=None)
@given(body=st.dictionaries(st.text(max_size=6), JSON_VALUES, min_size=1, max_size=5), data=st.data())
def test_the_same_request_in_other_words_matches_and_any_change_does_not(body, data):
    """Key order and spacing do not make a request different; any value or key changed does."""
    shuffled = dict(data.draw(st.permutations(list(body.items()))))
    assert fingerprint(json.loads(json.dumps(shuffled, indent=2))) == fingerprint(body)
    name = data.draw(st.sampled_from(sorted(body)))
    changed = {**body, name: data.draw(JSON_VALUES.filter(lambda v: v != body[name]))}
    assert fingerprint(changed) != fingerprint(body)
    assert fingerprint({**body, name + "!": body[name]}) != fingerprint(body)


@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    lane=st.integers(1, 9),
    cashier=st.text("abcdefgh0123456789", min_size=1, max_size=10),
    spaced=st.booleans(),
    other=st.sampled_from(["lane", "cashierId"]),
)
def test_a_retried_open_matches_by_meaning_through_the_api(till, lane, cashier, spaced, other):
    tx = f"MATCH{uuid.uuid4().hex[:12]}"
    header = key()
    body = {"transactionId": tx, "lane": lane, "cashierId": cashier}
    first = till.api.post("/v1/checkouts", json=body, headers=header)
    text = json.dumps(dict(reversed(list(body.items()))), indent=4 if spaced else None)
    same = till.api.post("/v1/checkouts", content=text, headers={**header, "Content-Type": "application/json"})
    assert (same.status_code, same.json()) == (first.status_code, first.json())
    assert same.headers["idempotent-replayed"] == "true"
    changed = {**body, other: lane % 9 + 1 if other == "lane" else cashier + "x"}
    refused = till.api.post("/v1/checkouts", json=changed, headers=header)
    assert refused.status_code == 422 and refused.json()["error"]["code"] == "idempotency_key_reused"
    till.api.post(f"/v1/checkouts/{tx}/void")


# -- the store ------------------------------------------------------------------------------------------


def test_a_call_cut_short_by_a_restart_is_said_so_and_answers_are_pruned_after_a_day(tmp_path):
    now = [1_000_000.0]
    store = IdempotencyStore(tmp_path / "keys.sqlite3", clock=lambda: now[0])
    assert store.claim("spend_points T1", "k1", "f").outcome == "new"
    assert store.claim("spend_points T1", "k2", "f").outcome == "new"
    store.finish("spend_points T1", "k2", 200, b'{"ok": true}')
    store.close()  # k1 was still running: a power cut
    store = IdempotencyStore(tmp_path / "keys.sqlite3", clock=lambda: now[0])
    cut = store.claim("spend_points T1", "k1", "f")
    assert cut.outcome == "replay" and cut.status == 409
    assert json.loads(cut.body)["error"]["code"] == "request_interrupted"
    assert store.claim("spend_points T1", "k2", "f") == store.claim("spend_points T1", "k2", "f")
    now[0] += KEEP_SECONDS - 1
    assert store.prune() == 0 and store.claim("spend_points T1", "k2", "f").outcome == "replay"
    now[0] += 2
    assert store.prune() == 2 and store.claim("spend_points T1", "k2", "f").outcome == "new"
    store.close()
