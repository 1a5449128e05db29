"""Whatever a till sends, the relay answers with a clear refusal or does what it says: never a 5xx,
and a refused request leaves nothing behind."""

import asyncio
import contextlib
import json

from hypothesis import given
from hypothesis import strategies as st

from tests.relay.conftest import bearer, relay_config, running

ALICE = "5a1b2c3d-0000-4000-8000-000000000001"

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
events = st.fixed_dictionaries(
    {
        "type": st.sampled_from(["TRANSACTION", "REDEEMED_POINTS", "POINTS_REFUND", "bad type", ""]),
        "payload": st.fixed_dictionaries(
            {},
            optional={
                "eventKey": st.one_of(st.uuids().map(str), st.text(max_size=80), st.integers()),
                "points": st.one_of(st.integers(-10, 10**12), st.floats(allow_nan=False), st.text(max_size=5)),
                "reverses": st.one_of(st.uuids().map(str), st.none()),
                "tillId": st.text(max_size=10),
            },
        ),
    },
    optional={"subject": st.one_of(st.just(ALICE), st.text(max_size=40), st.integers())},
)


def test_any_body_gets_a_clear_answer_and_a_refusal_changes_nothing(sim, database):
    loop = asyncio.new_event_loop()
    stack = contextlib.AsyncExitStack()
    relay = running(relay_config(sim.url, database), deliver=False)
    parts, http = loop.run_until_complete(stack.enter_async_context(relay))
    token = loop.run_until_complete(parts.tokens.enrol("T01", "B01"))
    loop.run_until_complete(http.get(f"/v1/users/{ALICE}", headers=bearer(token)))

    @given(body=st.one_of(events, json_values))
    def check(body):
        async def go():
            before = await parts.store.counts()
            answer = await http.post("/v1/events/", content=json.dumps(body), headers=bearer(token))
            assert answer.status_code in (200, 400, 403, 404, 409, 413, 422), answer.text
            assert answer.json()["status"] in ("success", "fail")
            if answer.status_code != 200:
                assert await parts.store.counts() == before
                assert isinstance(answer.json()["data"]["code"], str)

        loop.run_until_complete(go())

    try:
        check()
    finally:
        loop.run_until_complete(stack.aclose())
        loop.close()


def test_a_nul_character_is_refused_not_a_database_error(sim, database):
    async def go():
        async with running(relay_config(sim.url, database), deliver=False) as (parts, http):
            token = await parts.tokens.enrol("T01", "B01")
            body = {"type": "TRANSACTION", "payload": {"eventKey": "k\u0000" + "x" * 20, "note": "a\u0000b"}}
            answer = await http.post("/v1/events/", content=json.dumps(body), headers=bearer(token))
            assert answer.status_code == 400, answer.text
            body["payload"]["eventKey"] = "a-good-event-key-0001"
            answer = await http.post("/v1/events/", content=json.dumps(body), headers=bearer(token))
            assert answer.status_code == 400, answer.text
            assert await parts.store.counts() == {}

    asyncio.run(go())


def test_deep_nesting_and_a_nul_in_a_query_are_refused(sim, database):
    async def go():
        async with running(relay_config(sim.url, database), deliver=False) as (parts, http):
            token = await parts.tokens.enrol("T01", "B01")
            deep = b"[" * 30000 + b"]" * 30000
            answer = await http.post("/v1/events/", content=deep, headers=bearer(token))
            assert answer.status_code == 400, answer.text
            answer = await http.get("/v1/events/?filter[payload.eventKey]=a%00b", headers=bearer(token))
            assert answer.status_code == 400, answer.text
            answer = await http.get("/v1/events/?skip=x", headers=bearer(token))
            assert answer.status_code == 400, answer.text

    asyncio.run(go())
