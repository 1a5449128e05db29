"""The client against the simulator (a real HTTP server on 127.0.0.1), for every POS flow of the seed."""

import asyncio
import time

import httpx
import pytest

from tests.engine_helpers import DIALECT_NAMES, sim_client
from tillplug import errors as E
from tillplug.engine.models import EventDefinition, Order, new_event_key, points_of
from tillplug.sim import SimServer

ALICE = "5a1b2c3d-0000-4000-8000-000000000001"
BOB = "5a1b2c3d-0000-4000-8000-000000000002"


@pytest.fixture(params=[n for n in DIALECT_NAMES if n != "hostile"])
def sim(request):
    """Every test here runs against each dialect whose writes answer readably (docs/technician.md: Engine
    dialects); the hostile one's unreadable answers are covered in test_dialects.py."""
    with SimServer(dialect=request.param) as server:
        yield server


def run(coro):
    return asyncio.run(coro)


async def wait_for(predicate, timeout=3.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await predicate():
            return True
        await asyncio.sleep(0.02)
    return False


def test_member_lookup_by_uuid_account_number_and_auth_identifier(sim):
    async def go():
        async with sim_client(sim.url) as c:
            for ident in (ALICE, "1000001", "auth-alice"):
                user = await c.get_user(ident)
                assert (user.id, user.auth_identifier) == (ALICE, "auth-alice")
            wallet = await c.get_wallet(ALICE)
            assert wallet.points_balance == 1250 and wallet.tier.name == "Gold"
            states = {v.code.value: v.state() for v in wallet.vouchers}
            assert states["ALICE-5OFF-0001"] == "redeemed" and states["ALICE-USED-0003"] == "burned"
            assert states["ALICE-OLD-0004"] == "expired" and states["ALICE-10PC-0002"] == "created"
            with pytest.raises(E.MemberNotFound):
                await c.get_user("9999999")

    run(go())


def test_earning_a_transaction_event_awards_points_asynchronously(sim):
    async def go():
        async with sim_client(sim.url) as c:
            key = new_event_key()
            event = EventDefinition(
                type="TRANSACTION",
                subject=ALICE,
                payload={"eventKey": key, "transactionId": "T1", "total": 2550, "currency": "GBP"},
            )
            preview = points_of([r for res in await c.test_reaction(event) for r in res.reactions])
            assert preview == 25
            assert (await c.get_wallet(ALICE)).points_balance == 1250  # test_reaction has no side effect
            reported = await c.report_event(event)
            assert await wait_for(lambda: _balance_is(c, 1275))
            assert points_of(await c.event_reactions(reported.id)) == 25

    run(go())
    assert sim.state.ledger_view()["duplicates"] == {}


async def _balance_is(c, points):
    return (await c.get_wallet(ALICE)).points_balance == points


def test_spending_points_and_refund_restore_the_balance(sim):
    async def go():
        async with sim_client(sim.url) as c:
            await c.report_event(
                EventDefinition(
                    type="REDEEMED_POINTS", subject=ALICE, payload={"points": 500, "eventKey": new_event_key()}
                )
            )
            assert await wait_for(lambda: _balance_is(c, 750))
            await c.report_event(
                EventDefinition(
                    type="POINTS_REFUND", subject=ALICE, payload={"points": 500, "eventKey": new_event_key()}
                )
            )
            assert await wait_for(lambda: _balance_is(c, 1250))

    run(go())


def test_negative_balances_are_allowed_like_the_real_engine(sim):
    async def go():
        async with sim_client(sim.url) as c:
            await c.report_event(EventDefinition(type="REDEEMED_POINTS", subject=BOB, payload={"points": 1000}))
            assert await wait_for(lambda: _wallet_of(c, BOB, -700))

    run(go())


async def _wallet_of(c, member, points):
    return (await c.get_wallet(member)).points_balance == points


def test_user_led_voucher_check_then_burn(sim):
    async def go():
        async with sim_client(sim.url) as c:
            checked = await c.validate_voucher("ALICE-5OFF-0001", check_only=True)
            assert checked.state() == "validated" and checked.reward.discounts[0].value == 500
            again = await c.validate_voucher("ALICE-5OFF-0001", check_only=True)  # still usable
            assert again.burned_at is None
            burned = await c.validate_voucher("ALICE-5OFF-0001")
            assert burned.state() == "burned"
            with pytest.raises(E.VoucherAlreadyUsed):
                await c.validate_voucher("ALICE-5OFF-0001")

    run(go())
    assert [b["code"] for b in sim.state.ledger.burns] == ["ALICE-5OFF-0001"]


def test_six_voucher_outcomes_from_the_simulator(sim):
    cases = [
        ("NOPE-0000", {}, E.VoucherUnknown),
        ("ALICE-USED-0003", {}, E.VoucherAlreadyUsed),
        ("ALICE-OLD-0004", {}, E.VoucherExpired),
        ("ALICE-10PC-0002", {}, E.VoucherNotRedeemed),
        ("BOB-5OFF-0001", {"user_identifier": ALICE}, E.VoucherWrongMember),
        ("ALICE-RIVER-0005", {}, E.VoucherWrongVenue),
    ]

    async def go():
        async with sim_client(sim.url, venue_identifier="branch-0001") as c:
            for code, kw, expected in cases:
                with pytest.raises(expected):
                    await c.validate_voucher(code, **kw)

    run(go())


def test_cashier_led_voucher_list_redeem_validate(sim):
    async def go():
        async with sim_client(sim.url) as c:
            benefits = await c.list_benefits(ALICE)
            ready = [b for b in benefits if b.state() == "created"]
            assert [b.code.value for b in ready] == ["ALICE-10PC-0002"]
            redeemed = await c.redeem_benefit(ready[0].id)
            assert redeemed.state() == "redeemed"
            burned = await c.validate_voucher(redeemed.code.value, user_identifier=ALICE)
            assert burned.state() == "burned" and burned.reward.discounts[0].type == "PERCENTAGE"
            with pytest.raises(E.EngineRejected):
                await c.redeem_benefit(ready[0].id)
            with pytest.raises(E.BenefitNotFound):
                await c.redeem_benefit("no-such-benefit")

    run(go())


def test_receipts_order_mode_awards_points_via_order_placed(sim):
    async def go():
        async with sim_client(sim.url) as c:
            key = new_event_key()
            await c.submit_order(
                Order(
                    orderId="T9",
                    totalSpend=1000,
                    currency="GBP",
                    submitter={"authIdentifier": "auth-alice"},
                    metadata={"eventKey": key},
                )
            )
            assert await wait_for(lambda: _balance_is(c, 1260))
            assert len(await c.find_orders(key)) == 1

    run(go())


def test_reset_after_read_records_the_event_and_lookup_finds_it(sim):
    sim.sim.faults.update({"reset_rate": 1.0})

    async def go():
        async with sim_client(sim.url) as c:
            key = new_event_key()
            with pytest.raises(E.OutcomeUnknown):
                await c.report_event(
                    EventDefinition(type="TRANSACTION", subject=ALICE, payload={"eventKey": key, "total": 100})
                )
            sim.sim.faults.update({"reset_rate": 0.0})
            assert len(await c.find_events(key)) == 1

    run(go())


@pytest.mark.parametrize("kind", ["html", "truncated", "empty", "wrong_shape"])
def test_malformed_bodies_become_protocol_errors(sim, kind):
    sim.sim.faults.update({"malformed_rate": 1.0, "malformed_kind": kind})

    async def go():
        async with sim_client(sim.url) as c:
            with pytest.raises(E.EngineProtocolError):
                await c.get_wallet(ALICE)

    run(go())


def test_engine_down_is_retryable(sim):
    sim.sim.faults.update({"down": True})

    async def go():
        async with sim_client(sim.url) as c:
            with pytest.raises(E.EngineServerError) as info:
                await c.get_wallet(ALICE)
            assert isinstance(info.value, E.RetryableError)

    run(go())


def test_wrong_api_key_is_401_and_bearer_is_required(sim):
    r = httpx.get(sim.url + "/v1/users/1000001", headers={"X-Api-Key": "wrong"})
    assert r.status_code == 401 and r.json()["status"] == "fail"
    r = httpx.get(sim.url + "/v1/users/1000001", headers={"X-Api-Key": sim.state.api_key})
    assert r.status_code == 401
    token = httpx.post(
        sim.url + "/oauth/token",
        json={
            "client_id": "sim-client",
            "client_secret": "sim-client-secret",
            "audience": "wlloyalty.net",
            "grant_type": "client_credentials",
        },
    ).json()
    for path in ("/v1/users/1000001", "/v1/users/1000001/"):  # trailing-slash tolerance
        r = httpx.get(
            sim.url + path, headers={"X-Api-Key": sim.state.api_key, "Authorization": f"Bearer {token['access_token']}"}
        )
        assert r.status_code == 200 and r.json()["data"]["id"] == ALICE


def test_rate_limit_answers_429_past_the_burst():
    """A rate low enough that no token comes back while the test runs, however loaded the machine."""
    with SimServer(rate=0.001, burst=5) as server:
        codes = [httpx.get(server.url + "/v1/users/x", headers={"X-Api-Key": "k"}).status_code for _ in range(8)]
    assert codes[:5] == [401] * 5 and codes[5:] == [429] * 3


def test_events_are_not_deduplicated_like_the_real_engine(sim):
    async def go():
        async with sim_client(sim.url) as c:
            event = EventDefinition(type="TRANSACTION", subject=ALICE, payload={"eventKey": "same", "total": 100})
            await c.report_event(event)
            await c.report_event(event)

    run(go())
    assert sim.state.ledger.duplicates() == {"same": 2}


def test_intrinsic_and_unknown_event_types_are_rejected(sim):
    async def go():
        async with sim_client(sim.url) as c:
            for etype in ("BURNED_VOUCHER", "NOT_CONFIGURED"):
                with pytest.raises(E.EngineRejected):
                    await c.report_event(EventDefinition(type=etype))

    run(go())


def test_proxy_environment_variables_do_not_reroute_the_engine(sim, monkeypatch):
    """A till's proxy is config (engine.proxy), not whatever environment the process inherited."""
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")  # nothing listens there
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)

    async def go():
        async with sim_client(sim.url) as c:
            return (await c.get_user("1000001")).id

    assert run(go()) == ALICE
