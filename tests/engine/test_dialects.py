"""Money safety against engines that answer differently where WLL publishes nothing (issue #11).

Each ``test_obsN_*`` reproduces observation N of the issue against the simulator in the
dialect that shows it; the rest run the client's use cases against every dialect.
"""

import asyncio
import json
import logging
import os
import stat
import time

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.engine_helpers import DIALECT_NAMES, calibrated_client, sim_client
from tillplug import errors as E
from tillplug.commands.virtual.till import VirtualTill
from tillplug.engine.dialect import EngineDialect
from tillplug.engine.models import EventDefinition, Order, new_event_key, points_of
from tillplug.engine.refusals import classify_voucher_refusal
from tillplug.outbox import Deliverer, OutboxStore
from tillplug.sim import SimServer
from tillplug.sim.dialects import DIALECTS

ALICE = "5a1b2c3d-0000-4000-8000-000000000001"
BOB = "5a1b2c3d-0000-4000-8000-000000000002"
ALICE_10PC = "be000000-0000-4000-8000-000000000002"  # Alice's, not yet redeemed


def run(coro):
    return asyncio.run(coro)


async def wait_for(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await predicate():
            return True
        await asyncio.sleep(0.05)
    return False


@pytest.fixture(params=DIALECT_NAMES)
def any_sim(request):
    with SimServer(dialect=request.param) as server:
        yield server


def event(etype, member, **payload):
    return EventDefinition(type=etype, subject=member, payload={"eventKey": new_event_key(), **payload})


# -- observation 1: a spend that landed reported as failed ------------------------------------


def test_obs1_nested_reactions_confirm_a_spend_instead_of_failing_it(tmp_path):
    """Reactions nested like test_reaction used to be a 502 engine_protocol_error for a spend
    the engine had deducted."""
    with VirtualTill(tmp_path / "till", dialect="strict") as till:
        assert till.api.post("/v1/checkouts", json={"transactionId": "T1", "lane": 1}).status_code == 201
        assert till.api.put("/v1/checkouts/T1/member", json={"code": "1000001"}).status_code == 200
        r = till.api.post("/v1/checkouts/T1/points", json={"points": 500})
        assert r.status_code == 200, r.text
        assert r.json()["balanceAfter"] == 750
        assert till.sim.state.members[ALICE]["pointsBalance"] == 750


@pytest.mark.parametrize("shape", ["flat", "nested"])
def test_reactions_are_read_in_both_shapes(shape):
    with SimServer(dialect=DIALECTS["default"].with_switches({"reactions": shape})) as sim:

        async def go():
            async with sim_client(sim.url) as c:
                spend = await c.report_event(event("REDEEMED_POINTS", ALICE, points=40))
                assert await wait_for(lambda: _has_points(c, spend.id))
                assert points_of(await c.event_reactions(spend.id)) == -40
                assert await c.reaction_points(spend.id) == -40

        run(go())


async def _has_points(c, event_id):
    return await c.reaction_points(event_id) is not None


@pytest.mark.parametrize("shape", ["never", "delayed"])
def test_reactions_never_listed_or_late_read_as_unconfirmed_not_failed(shape):
    with SimServer(dialect=DIALECTS["default"].with_switches({"reactions": shape})) as sim:

        async def go():
            async with sim_client(sim.url) as c:
                spend = await c.report_event(event("REDEEMED_POINTS", ALICE, points=40))
                assert await c.reaction_points(spend.id) is None  # unconfirmed, and no exception

        run(go())


@given(
    st.one_of(
        st.none(),
        st.integers(),
        st.text(max_size=5),
        st.lists(
            st.dictionaries(st.text(max_size=8), st.none() | st.integers() | st.text(max_size=5), max_size=3),
            max_size=3,
        ),
    )
)
@settings(max_examples=60, deadline=None)
def test_reactions_in_any_shape_never_raise(data):
    """An answer that only confirms a write can never turn the write into a failure."""

    def handler(request):
        if request.url.path == "/oauth/token":
            return httpx.Response(200, json={"access_token": "t", "expires_in": 3600})
        return httpx.Response(200, json={"status": "success", "data": data})

    async def go():
        from tests.engine_helpers import sim_config
        from tillplug.engine import EngineClient, load_secrets

        cfg = sim_config("http://127.0.0.1:9")
        async with EngineClient(cfg, load_secrets(cfg), transport=httpx.MockTransport(handler)) as c:
            await c.event_reactions("e1")
            await c.reaction_points("e1")

    run(go())


# -- observation 5: reconciliation trusted an undocumented filter -----------------------------


def _deduction_then_noise(sim, noise):
    key = new_event_key()
    sim.state.record_event({"type": "REDEEMED_POINTS", "subject": ALICE, "payload": {"eventKey": key, "points": 50}})
    for i in range(noise):
        sim.state.record_event({"type": "TRANSACTION", "subject": BOB, "payload": {"eventKey": f"n{i}", "total": 1}})
    return key


def _refund_row(store, reverses):
    key = new_event_key()
    store.add(
        kind="event",
        stream="tx-1",
        event_key=key,
        requires_key=reverses,
        body={"type": "POINTS_REFUND", "subject": ALICE, "payload": {"eventKey": key, "points": 50}},
    )
    return key


def _drain(sim, store, timeout, dialect=None, **client_kw):
    async def go():
        async with sim_client(sim.url, dialect=dialect, **client_kw) as c:
            return await Deliverer(store, c, rate=10_000, burst=10_000).drain(timeout)

    return run(go())


def test_obs5_refund_of_a_landed_deduction_is_sent_when_the_filter_is_ignored(tmp_path):
    """With the filter ignored, the deduction was not in the first 10 results, so its refund was
    marked "not needed" and the member lost 50 points."""
    store = OutboxStore(tmp_path / "o.db")
    with SimServer(dialect="strict") as sim:
        deduction = _deduction_then_noise(sim, noise=15)
        refund = _refund_row(store, deduction)
        assert _drain(sim, store, 10)
        assert [e["payload"]["eventKey"] for e in sim.state.ledger.events].count(refund) == 1
    assert "not needed" not in (store.by_key(refund).note or "")


def test_obs5_a_refund_is_never_marked_not_needed_on_an_ignored_filter_while_it_cannot_be_proven(tmp_path):
    """The deduction never arrived, but an engine that ignores the filter cannot prove it by the
    filter: only reading its whole list does (#21), and only once the deduction cannot be in flight."""
    store = OutboxStore(tmp_path / "o.db")
    with SimServer(dialect="strict") as sim:
        _deduction_then_noise(sim, noise=3)
        refund = _refund_row(store, "never-sent")
        assert not _drain(sim, store, 1.5)  # the default window (16 s) from this start is not over
        row = store.by_key(refund)
        assert row.state == "pending" and not row.unverifiable and "not needed" not in (row.note or "")
        assert [e for e in sim.state.ledger.events if e["type"] == "POINTS_REFUND"] == []
        with store.transaction() as tx:  # a restart with a shorter window: due now
            tx.execute("UPDATE outbox SET next_attempt=0 WHERE state='pending'")
        assert _drain(sim, store, 10, in_flight_window=1)
        assert "not needed" in (store.by_key(refund).note or "")
        assert [e for e in sim.state.ledger.events if e["type"] == "POINTS_REFUND"] == []


def test_obs5_a_transaction_whose_answer_was_lost_is_not_sent_twice(tmp_path):
    """Old: the landed TRANSACTION was beyond the first 10 unfiltered results, so it was resent."""
    store = OutboxStore(tmp_path / "o.db")
    with SimServer(dialect="strict") as sim:
        key = new_event_key()
        body = {"type": "TRANSACTION", "subject": ALICE, "payload": {"eventKey": key, "total": 100}}
        store.add(kind="event", stream="tx-1", event_key=key, body=body)
        sim.state.record_event(body)  # it landed; the answer was lost
        for i in range(15):
            sim.state.record_event({"type": "TRANSACTION", "subject": BOB, "payload": {"eventKey": f"n{i}"}})
        row = store.claim()
        store.retry_later(row.id, at=0, error="engine_outcome_unknown", needs_lookup=True)
        assert _drain(sim, store, 10)
        assert sim.state.ledger.duplicates() == {}
        assert store.by_key(key).note == "found by look-up"


def test_obs5_beyond_the_look_ups_reach_a_row_is_held_never_resent(tmp_path):
    """More writes since the row's than the unfiltered list's pages a look-up reads (#21: 3 x 1000)."""
    store = OutboxStore(tmp_path / "o.db")
    with SimServer(dialect="strict") as sim:
        key = new_event_key()
        body = {"type": "TRANSACTION", "subject": ALICE, "payload": {"eventKey": key, "total": 100}}
        store.add(kind="event", stream="tx-1", event_key=key, body=body)
        sim.state.record_event(body)
        for i in range(3020):
            sim.state.record_event({"type": "TRANSACTION", "subject": BOB, "payload": {"eventKey": f"n{i}"}})
        row = store.claim()
        store.retry_later(row.id, at=0, error="engine_outcome_unknown", needs_lookup=True)
        assert not _drain(sim, store, 1.5)
        assert sim.state.ledger.duplicates() == {}
        assert store.by_key(key).unverifiable


def test_obs5_a_rejected_filter_never_kills_the_write_it_checks(tmp_path):
    """Old: the look-up's 400 was taken as the write's rejection, and the rows went dead.  #21: the
    unfiltered list finds the deduction, and its refund is sent."""
    store = OutboxStore(tmp_path / "o.db")
    with SimServer(dialect="hostile") as sim:
        deduction = _deduction_then_noise(sim, noise=0)
        refund = _refund_row(store, deduction)
        assert _drain(sim, store, 5)
        assert store.by_key(refund).state == "delivered"
        assert store.stats().dead == 0 and store.stats().unverifiable == 0
        assert [e["payload"]["eventKey"] for e in sim.state.ledger.events].count(refund) == 1


def test_not_found_is_trusted_once_the_filter_is_seen_to_work(tmp_path):
    """A look-up whose results carry only the requested key shows the filter works."""
    store = OutboxStore(tmp_path / "o.db")
    with SimServer(dialect="default") as sim:
        seen = new_event_key()
        body = {"type": "TRANSACTION", "subject": ALICE, "payload": {"eventKey": seen, "total": 100}}
        store.add(kind="event", stream="tx-0", event_key=seen, body=body)
        assert _drain(sim, store, 5)  # sent and acknowledged: a key the engine surely has
        refund = _refund_row(store, "never-sent")
        assert _drain(sim, store, 10, in_flight_window=1)  # believed once it cannot be in flight
        assert "not needed" in store.by_key(refund).note


def test_a_dialect_file_that_says_the_filter_works_is_trusted(tmp_path):
    store = OutboxStore(tmp_path / "o.db")
    with SimServer(dialect="default") as sim:
        refund = _refund_row(store, "never-sent")
        assert _drain(sim, store, 10, dialect=EngineDialect(event_key_filter="honoured"), in_flight_window=1)
        assert "not needed" in store.by_key(refund).note


@pytest.mark.parametrize("name", DIALECT_NAMES)
def test_lost_answers_on_30_percent_of_writes_never_double_in_any_dialect(tmp_path, name, monkeypatch):
    import tillplug.outbox.deliver as d

    monkeypatch.setattr(d, "retry_delay", lambda attempts: 0.01 * min(attempts, 5))
    store = OutboxStore(tmp_path / "o.db")
    keys = []
    for i in range(60):
        key = new_event_key()
        keys.append(key)
        body = {"type": "TRANSACTION", "subject": ALICE, "payload": {"eventKey": key, "total": 100}}
        store.add(kind="event", stream=f"tx-{i}", event_key=key, body=body)
    with SimServer(dialect=name, rate=100_000, burst=100_000) as sim:
        sim.sim.faults.update({"reset_rate": 0.3, "seed": 7})
        emptied = _drain(sim, store, 20)
        got = [e["payload"]["eventKey"] for e in sim.state.ledger.events]
    assert len(got) == len(set(got)), "an event was sent twice"
    stats = store.stats()
    # Every answer unreadable and the filter refused (hostile): settled by the unfiltered list (#21).
    assert emptied and stats.unverifiable == 0 and stats.dead == 0
    assert sorted(got) == sorted(keys)


# -- observation 6: the cashier-led list trusted the owner filter --------------------------


@pytest.mark.parametrize("name", DIALECT_NAMES)
def test_obs6_only_the_members_own_benefits_whatever_the_filter_does(name):
    with SimServer(dialect=name) as sim:

        async def go():
            async with sim_client(sim.url) as c:
                bobs = await c.list_benefits(BOB)
                assert {b.code.value for b in bobs} == {"POOL-COFFEE-0001", "BOB-5OFF-0001"}
                with pytest.raises(E.BenefitNotFound):
                    await c.get_owned_benefit(ALICE_10PC, BOB)
                assert (await c.get_owned_benefit(ALICE_10PC, ALICE)).id == ALICE_10PC

        run(go())


def test_obs6_bob_never_sees_or_redeems_alices_voucher(tmp_path):
    """Old: with the owner filter ignored, Bob's list showed Alice's voucher and redeem went out."""
    with VirtualTill(tmp_path / "till", dialect="strict") as till:
        till.api.post("/v1/checkouts", json={"transactionId": "T1", "lane": 1})
        assert till.api.put("/v1/checkouts/T1/member", json={"code": "1000002"}).status_code == 200
        listed = till.api.get("/v1/checkouts/T1/benefits").json()["benefits"]
        assert ALICE_10PC not in {b["id"] for b in listed}
        r = till.api.post(f"/v1/checkouts/T1/benefits/{ALICE_10PC}/redeem", json={})
        assert r.status_code == 404, r.text
        assert till.sim.sim.requests_for("/commands/redeem_benefit") == 0
        assert till.sim.state.benefits[ALICE_10PC]["redeemedAt"] is None


# -- observation 7: voucher refusals collapsed -------------------------------------------------

SIX = [
    ("NOPE-0000", {}, E.VoucherUnknown),
    ("ALICE-USED-0003", {}, E.VoucherAlreadyUsed),
    ("ALICE-OLD-0004", {}, E.VoucherExpired),
    ("ALICE-10PC-0002", {}, E.VoucherNotRedeemed),
    ("BOB-5OFF-0001", {"user_identifier": ALICE}, E.VoucherWrongMember),
    ("ALICE-RIVER-0005", {}, E.VoucherWrongVenue),
]


@pytest.mark.parametrize("name", DIALECT_NAMES)
def test_obs7_six_voucher_outcomes_stay_distinct_without_codes(name):
    """Old: without codes, burned/expired/not-redeemed/wrong-venue were one voucher_invalid and
    another member's voucher (403) was engine_auth_failed."""
    with SimServer(dialect=name) as sim:

        async def go():
            codes = set()
            async with sim_client(sim.url, venue_identifier="branch-0001") as c:
                for code, kw, expected in SIX:
                    with pytest.raises(E.VoucherError) as info:
                        await c.validate_voucher(code, **kw)
                    assert type(info.value) is expected, (code, info.value.code, info.value.engine_message)
                    codes.add(info.value.code)
            assert len(codes) == 6 and "engine_auth_failed" not in codes

        run(go())


def test_a_403_on_a_voucher_call_is_never_a_credentials_problem():
    err = classify_voucher_refusal(403, {"status": "fail", "message": "Forbidden"}, "Forbidden")
    assert isinstance(err, E.VoucherRefused) and err.code == "voucher_refused"


@given(st.sampled_from([400, 403, 409, 422]), st.text(alphabet="abcdfghkmqwxz ", min_size=1, max_size=40))
@settings(max_examples=80, deadline=None)
def test_an_unclassifiable_refusal_is_voucher_refused_with_the_engines_message(status, message):
    message = message.strip() or "nope"
    err = classify_voucher_refusal(status, {"status": "fail", "message": message}, message)
    assert type(err) is E.VoucherRefused
    assert err.engine_message == message and message in err.message


# -- observation 8: GET /users/{authIdentifier} is not documented ----------------------------


@pytest.mark.parametrize("name", DIALECT_NAMES)
def test_obs8_members_are_never_looked_up_by_auth_identifier_in_the_path(name):
    with SimServer(dialect=name) as sim:

        async def go():
            async with sim_client(sim.url) as c:
                for ident in (ALICE, "1000001"):
                    assert (await c.get_user(ident)).id == ALICE
                try:
                    user = await c.get_user("auth-alice")
                except E.MemberNotFound as exc:
                    assert name == "hostile", exc  # the engine rejects the only route: refused with a reason
                    assert "no look-up" in exc.message
                else:
                    assert user.id == ALICE  # found through the list, and the answer names her

        run(go())
        assert sim.sim.requests_for("GET /v1/users/auth-alice") == 0


def test_a_users_list_that_ignores_the_filter_never_yields_someone_else():
    seed = json.loads(json.dumps(__import__("tillplug.sim", fromlist=["default_seed"]).default_seed()))
    for i in range(20):  # more members than one page of the list
        seed["members"].append(
            {
                "id": f"5a1b2c3d-0000-4000-8000-1000000000{i:02d}",
                "accountNumber": f"20000{i:02d}",
                "authIdentifier": f"auth-x{i}",
                "pointsBalance": 0,
            }
        )
    with SimServer(seed, dialect="strict") as sim:

        async def go():
            async with sim_client(sim.url) as c:
                with pytest.raises(E.MemberNotFound):
                    await c.get_user("auth-x19")  # not on the first page: not found, never another member

        run(go())


# -- observation 11: a new admin token at every start ------------------------------------------


def test_obs11_the_token_is_cached_in_state_dir_across_restarts(tmp_path, caplog):
    with SimServer() as sim:
        for _ in range(3):  # three daemon starts on one state_dir
            with caplog.at_level(logging.DEBUG), VirtualTill(tmp_path / "till", sim=sim) as till:
                till.api.post("/v1/checkouts", json={"transactionId": "T1", "lane": 1})
                assert till.api.put("/v1/checkouts/T1/member", json={"code": "1000001"}).status_code == 200
        assert len(sim.state.tokens) == 1
        token = next(iter(sim.state.tokens))
    cache = tmp_path / "till" / "state" / "engine-token.json"
    assert stat.S_IMODE(os.stat(cache).st_mode) == 0o600
    assert token not in caplog.text


def test_a_cached_token_near_expiry_or_for_another_tenant_is_not_reused(tmp_path):
    path = tmp_path / "token.json"
    with SimServer() as sim:

        async def use(**kw):
            async with sim_client(sim.url, token_path=path, **kw) as c:
                await c.get_wallet(ALICE)

        run(use())
        run(use(audience="wlloyalty.net"))  # same scope: reused
        assert len(sim.state.tokens) == 1
        run(use(audience="other.example"))  # another audience: another token
        assert len(sim.state.tokens) == 2
        data = json.loads(path.read_text())
        data["refresh_after"] = time.time() - 1  # due for renewal
        path.write_text(json.dumps(data))
        run(use(audience="other.example"))
        assert len(sim.state.tokens) == 3


def test_a_refused_cached_token_is_dropped_and_replaced(tmp_path):
    path = tmp_path / "token.json"
    with SimServer() as sim:

        async def use():
            async with sim_client(sim.url, token_path=path) as c:
                return (await c.get_wallet(ALICE)).points_balance

        run(use())
        sim.state.tokens.clear()  # revoked on the engine's side
        assert run(use()) == 1250
        assert len(sim.state.tokens) == 1


# -- every use case against every dialect -------------------------------------------------------


def test_client_use_cases_in_every_dialect(any_sim):
    sim = any_sim
    unreadable = sim.sim.dialect.write_bodies != "normal"

    async def go():
        async with calibrated_client(sim, venue_identifier="branch-0001") as c:
            wallet = await c.get_wallet((await c.get_user("1000001")).id)
            assert wallet.points_balance == 1250
            # earn
            earn = event("TRANSACTION", ALICE, total=1000)
            try:
                await c.report_event(earn)
            except E.OutcomeUnknown:
                assert unreadable
            assert await wait_for(lambda: _balance(c, 1260))
            assert (await c.look_up_event(earn.event_key)).outcome in ("landed", "unknown")
            # spend and refund
            spend = event("REDEEMED_POINTS", ALICE, points=60)
            try:
                await c.report_event(spend)
            except E.OutcomeUnknown:
                assert unreadable
            assert await wait_for(lambda: _balance(c, 1200))
            # user-led voucher: a burn whose answer cannot be read is settled by looking at the benefit
            try:
                burned = await c.validate_voucher("ALICE-5OFF-0001")
                assert burned.state() == "burned"
            except E.OutcomeUnknown:
                assert unreadable
                found = await c.find_voucher("ALICE-5OFF-0001", ALICE)
                assert found is not None and found.state() == "burned"
            # cashier-led
            benefit = await c.get_owned_benefit(ALICE_10PC, ALICE)
            assert benefit.state() == "created"
            # orders
            key = new_event_key()
            order = Order(
                orderId="T9",
                totalSpend=1000,
                currency="GBP",
                submitter={"authIdentifier": "auth-alice"},
                metadata={"eventKey": key},
            )
            try:
                await c.submit_order(order)
            except E.OutcomeUnknown:
                assert unreadable
            assert (await c.look_up_order(key)).outcome == "landed"  # a refused filter: the list is read

    run(go())
    assert sim.state.ledger.duplicates() == {}


async def _balance(c, points):
    return (await c.get_wallet(ALICE)).points_balance == points


# -- check-config: member rules must yield identifiers WLL documents a look-up for ----------

REAL = {"preset": "eu", "api_key": "/k", "client_id": "/i", "client_secret": "/s"}
UUID_RULE = r"^(?P<code>[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12})$"


@pytest.mark.parametrize(
    "rule, example",
    [
        (r"^MBR:(?P<code>[A-Za-z0-9._@-]{1,512})$", "a"),
        (r"^(?P<code>\d{7,12})$", "00000000"),  # more digits than an account number
        (r"^(?P<code>(?:\d{7}|[a-f]{3}))$", "aaa"),  # the second alternative
        (r"^CARD(\d{7})$", "CARD0000000"),  # no code group: the whole scan is the code
    ],
)
def test_check_config_refuses_member_rules_without_a_documented_look_up(rule, example):
    from tillplug.config.loader import validate

    report = validate(
        {"till_id": "t", "branch_id": "b", "engine": REAL, "barcodes": {"member": [UUID_RULE, rule]}},
        check_secrets=False,
    )
    errors = [p for p in report.errors if p.path == "barcodes.member[1]"]
    assert len(errors) == 1 and repr(example) in errors[0].message and not report.ok


@pytest.mark.parametrize("rule", [UUID_RULE, r"^(?P<code>\d{7})$", r"^C(?P<code>\d{7})X$"])
def test_check_config_accepts_rules_yielding_member_ids_or_account_numbers(rule):
    from tillplug.config.loader import validate

    report = validate(
        {"till_id": "t", "branch_id": "b", "engine": REAL, "barcodes": {"member": [rule]}}, check_secrets=False
    )
    assert report.ok and not [p for p in report.problems if p.path.startswith("barcodes")]


def test_the_simulator_and_the_built_in_rules_get_a_warning_not_a_refusal():
    from tillplug.config.loader import validate

    for engine in ({"preset": "simulator"}, REAL):
        report = validate({"till_id": "t", "branch_id": "b", "engine": engine}, check_secrets=False)
        assert report.ok and [p.severity for p in report.problems if p.path.startswith("barcodes")] == ["warning"]
