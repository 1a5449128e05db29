"""The engine client over httpx.MockTransport: every endpoint, every error mapping, the token cache."""

import asyncio
import json

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tillplug import errors as E
from tillplug.config.loader import Secret
from tillplug.config.model import EngineConfig
from tillplug.engine import EngineClient, EngineSecrets
from tillplug.engine.models import EventDefinition, Order

API_KEY = "live-key-d34db33f"
CLIENT_SECRET = "client-secret-c0ffee"
TOKEN = "admin-token-5ecret"
CFG = EngineConfig(
    preset="eu", api_key="/k", client_id="/i", client_secret="/s", max_attempts=2, venue_identifier="branch-0001"
)
BENEFIT = {
    "id": "b1",
    "type": "VOUCHER",
    "createdAt": "2026-01-01T00:00:00.000Z",
    "redeemedAt": "2026-01-02T00:00:00.000Z",
    "code": {"value": "ABC-123"},
    "reward": {"id": "r1", "name": "£5 off", "discounts": [{"type": "ABSOLUTE", "value": 500}]},
}
EVENT = {"id": "e1", "type": "TRANSACTION", "payload": {"eventKey": "k1"}, "createdAt": "2026-01-01T00:00:00.000Z"}


def secrets():
    return EngineSecrets(api_key=Secret(API_KEY), client_id=Secret("cid"), client_secret=Secret(CLIENT_SECRET))


class Engine:
    """A scripted engine: routes map (method, path) to a list of responses, served in turn."""

    def __init__(self, routes=None, token_status=200):
        self.routes = routes or {}
        self.requests = []
        self.token_calls = 0
        self.token_status = token_status

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if request.url.path == "/oauth/token":
            self.token_calls += 1
            return httpx.Response(
                self.token_status, json={"access_token": TOKEN, "token_type": "Bearer", "expires_in": 86400}
            )
        key = (request.method, request.url.path.removeprefix("/v1"))
        answers = self.routes[key]
        answer = answers.pop(0) if len(answers) > 1 else answers[0]
        if isinstance(answer, Exception):
            raise answer
        return answer


def ok(data, status=200):
    return httpx.Response(status, json={"status": "success", "data": data})


def client(engine, **kw):
    async def no_sleep(_):
        return None

    return EngineClient(CFG, secrets(), transport=httpx.MockTransport(engine), sleep=no_sleep, **kw)


def run(coro):
    return asyncio.run(coro)


async def call(engine, name, *args, **kw):
    async with client(engine) as c:
        return await getattr(c, name)(*args, **kw)


def test_every_endpoint_sends_what_the_engine_expects():
    engine = Engine(
        {
            ("GET", "/users/1000001"): [ok({"id": "u1", "accountNumber": "1000001", "authIdentifier": "a1"})],
            ("GET", "/users/u1/wallet"): [ok({"pointsBalance": 1250, "vouchers": [BENEFIT]})],
            ("GET", "/benefits/"): [ok([BENEFIT])],
            ("GET", "/benefits/b1"): [ok(BENEFIT)],
            ("POST", "/commands/redeem_benefit"): [ok(BENEFIT)],
            ("POST", "/commands/validate_voucher"): [ok(BENEFIT)],
            ("POST", "/events/"): [ok(EVENT)],
            ("POST", "/events/test_reaction"): [
                ok([{"reactor": {"id": "r"}, "reactions": [{"type": "POINTS", "points": 25}]}])
            ],
            ("GET", "/events/"): [ok([EVENT, {**EVENT, "id": "e2", "payload": {"eventKey": "other"}}])],
            ("GET", "/events/e1/reactions"): [ok([{"type": "POINTS", "points": 25}])],
            ("POST", "/orders"): [ok({"id": "o1"}, 201)],
        }
    )

    async def go():
        async with client(engine) as c:
            assert (await c.get_user("1000001")).auth_identifier == "a1"
            assert (await c.get_wallet("u1")).points_balance == 1250
            assert (await c.list_benefits("u1"))[0].code.value == "ABC-123"
            assert (await c.get_benefit("b1")).reward.discounts[0].value == 500
            await c.redeem_benefit("b1")
            await c.validate_voucher("ABC-123", check_only=True, user_identifier="u1")
            event = EventDefinition(type="TRANSACTION", subject="u1", payload={"eventKey": "k1", "total": 2500})
            assert (await c.report_event(event)).id == "e1"
            assert (await c.test_reaction(event))[0].reactions[0].points == 25
            assert [e.id for e in await c.find_events("k1")] == ["e1"]
            assert (await c.event_reactions("e1"))[0].points == 25
            await c.submit_order(Order(orderId="t1", totalSpend=2500, currency="GBP"))

    run(go())
    sent = {(r.method, r.url.path): r for r in engine.requests}
    for r in engine.requests:
        if r.url.path != "/oauth/token":  # the auth host takes client credentials only
            assert r.headers["x-api-key"] == API_KEY
            assert r.headers["authorization"] == f"Bearer {TOKEN}"
    assert engine.token_calls == 1  # cached across every call
    assert json.loads(sent[("POST", "/v1/commands/redeem_benefit")].content) == {"benefitId": "b1"}
    assert json.loads(sent[("POST", "/v1/commands/validate_voucher")].content) == {
        "code": "ABC-123",
        "allowFutureValidation": True,
        "userIdentifier": "u1",
        "venueIdentifier": "branch-0001",
    }
    body = json.loads(sent[("POST", "/v1/events/")].content)
    assert body["type"] == "TRANSACTION" and body["payload"]["eventKey"] == "k1"
    assert body["occurredAt"].endswith("Z") and "." in body["occurredAt"]
    assert sent[("GET", "/v1/events/")].url.params["filter[payload.eventKey]"] == "k1"
    assert sent[("POST", "/v1/orders")].url.host == "api.receipts.wlloyalty.net"
    token_body = json.loads(next(r for r in engine.requests if r.url.path == "/oauth/token").content)
    assert token_body["grant_type"] == "client_credentials" and token_body["audience"] == "wlloyalty.net"


def test_token_is_refreshed_once_on_401_then_auth_error():
    engine = Engine({("GET", "/users/1234567"): [httpx.Response(401, json={"message": "Unauthorized"})]})
    with pytest.raises(E.EngineAuthError):
        run(call(engine, "get_user", "1234567"))
    assert engine.token_calls == 2
    assert len([r for r in engine.requests if r.url.path == "/v1/users/1234567"]) == 2


def test_token_refresh_after_401_succeeds():
    engine = Engine({("GET", "/users/1234567"): [httpx.Response(401), ok({"id": "x"})]})
    assert run(call(engine, "get_user", "1234567")).id == "x"
    assert engine.token_calls == 2


def test_token_cached_until_shortly_before_expiry():
    now = [1000.0]
    from tillplug.engine import TokenCache
    from tillplug.engine.models import Token

    cache = TokenCache(clock=lambda: now[0])
    fetched = []

    async def fetch():
        fetched.append(1)
        return Token(access_token=f"t{len(fetched)}", expires_in=3600)

    async def go():
        first = await cache.get(fetch)
        now[0] += 3600 - 300 - 1  # just before the 5-minute refresh margin
        assert await cache.get(fetch) is first
        now[0] += 2
        assert (await cache.get(fetch)).reveal() == "t2"

    run(go())
    assert len(fetched) == 2


def test_concurrent_callers_share_one_token_fetch():
    engine = Engine({("GET", "/users/1234567"): [ok({"id": "x"})]})

    async def go():
        async with client(engine) as c:
            await asyncio.gather(*(c.get_user("1234567") for _ in range(20)))

    run(go())
    assert engine.token_calls == 1


def write_or_read(write, answer):
    """An engine that answers ``answer`` to a write (an event) or to a read (a user look-up)."""
    if write:
        engine = Engine({("POST", "/events/"): [answer]})
        return engine, call(engine, "report_event", EventDefinition(type="TRANSACTION", payload={"eventKey": "k"}))
    engine = Engine({("GET", "/users/1234567"): [answer]})
    return engine, call(engine, "get_user", "1234567")


@pytest.mark.parametrize(
    "exc, write, expected",
    [
        (httpx.ConnectError("refused"), False, E.EngineUnreachable),
        (httpx.ConnectError("refused"), True, E.EngineUnreachable),
        (httpx.ConnectTimeout("slow"), True, E.EngineTimeout),
        (httpx.PoolTimeout("pool"), True, E.EngineTimeout),
        (httpx.ReadTimeout("read"), False, E.EngineTimeout),
        (httpx.ReadTimeout("read"), True, E.OutcomeUnknown),
        (httpx.RemoteProtocolError("peer closed"), True, E.OutcomeUnknown),
        (httpx.ReadError("reset"), True, E.OutcomeUnknown),
        (httpx.ReadError("reset"), False, E.EngineUnreachable),
    ],
)
def test_transport_failures_map_to_the_error_tree(exc, write, expected):
    engine, coro = write_or_read(write, exc)
    with pytest.raises(expected) as info:
        run(coro)
    assert type(info.value) is expected
    posts = [r for r in engine.requests if r.url.path != "/oauth/token"]
    # A write whose outcome is unknown is never resent by the client.
    assert len(posts) == (1 if expected is E.OutcomeUnknown else 2)


def test_429_honours_retry_after_then_gives_up_as_rate_limited():
    slept = []

    async def sleep(s):
        slept.append(s)

    engine = Engine(
        {
            ("GET", "/users/1234567"): [
                httpx.Response(429, headers={"Retry-After": "1.5"}, json={"message": "Too Many Requests"})
            ]
        }
    )

    async def go():
        async with EngineClient(CFG, secrets(), transport=httpx.MockTransport(engine), sleep=sleep) as c:
            await c.get_user("1234567")

    with pytest.raises(E.RateLimited) as info:
        run(go())
    assert slept == [1.5] and info.value.retry_after == 1.5


def test_503_is_retried_and_can_succeed():
    engine = Engine({("GET", "/users/1234567"): [httpx.Response(503, text="<html>down</html>"), ok({"id": "x"})]})
    assert run(call(engine, "get_user", "1234567")).id == "x"


@pytest.mark.parametrize(
    "status, write, expected",
    [
        (500, False, E.EngineServerError),
        (500, True, E.OutcomeUnknown),
        (502, True, E.OutcomeUnknown),
        (503, True, E.EngineServerError),
        (403, False, E.EngineAuthError),
        (400, True, E.EngineRejected),
    ],
)
def test_status_codes_map_to_the_error_tree(status, write, expected):
    response = httpx.Response(status, json={"status": "fail", "message": "engine says no"})
    _, coro = write_or_read(write, response)
    with pytest.raises(expected) as info:
        run(coro)
    assert type(info.value) is expected


def test_rejection_carries_the_engines_message_verbatim():
    engine = Engine(
        {("POST", "/events/"): [httpx.Response(400, json={"status": "fail", "message": "payload.total is required"})]}
    )
    with pytest.raises(E.EngineRejected) as info:
        run(call(engine, "report_event", EventDefinition(type="TRANSACTION")))
    assert info.value.engine_message == "payload.total is required"
    assert "payload.total is required" in info.value.message


def test_unknown_member_is_member_not_found():
    engine = Engine(
        {("GET", "/users/9999999"): [httpx.Response(404, json={"status": "fail", "message": "User not found"})]}
    )
    with pytest.raises(E.MemberNotFound):
        run(call(engine, "get_user", "9999999"))


@pytest.mark.parametrize(
    "status, reason, expected",
    [
        (404, "VOUCHER_NOT_FOUND", E.VoucherUnknown),
        (409, "VOUCHER_ALREADY_BURNED", E.VoucherAlreadyUsed),
        (409, "VOUCHER_EXPIRED", E.VoucherExpired),
        (400, "VOUCHER_NOT_REDEEMED", E.VoucherNotRedeemed),
        (403, "VOUCHER_WRONG_USER", E.VoucherWrongMember),
        (403, "VOUCHER_WRONG_VENUE", E.VoucherWrongVenue),
        (404, None, E.VoucherUnknown),
    ],
)
def test_six_voucher_outcomes_are_distinct_errors(status, reason, expected):
    body = {"status": "fail", "message": "no", "data": {"code": reason} if reason else {}}
    engine = Engine({("POST", "/commands/validate_voucher"): [httpx.Response(status, json=body)]})
    with pytest.raises(expected) as info:
        run(call(engine, "validate_voucher", "X"))
    assert type(info.value) is expected
    assert info.value.code != E.VoucherError.code or expected is E.VoucherError


@pytest.mark.parametrize(
    "response",
    [
        httpx.Response(200, text="<html><body>502 Bad Gateway</body></html>", headers={"content-type": "text/html"}),
        httpx.Response(200, content=b'{"status": "success", "data": {"pointsBal'),
        httpx.Response(200, content=b""),
        httpx.Response(200, json={"status": "success", "data": [1, 2]}),
        httpx.Response(200, json={"pointsBalance": 5}),
        httpx.Response(200, json={"status": "error", "data": {}}),
    ],
)
def test_bodies_that_do_not_parse_are_protocol_errors(response):
    engine = Engine({("GET", "/users/u/wallet"): [response]})
    with pytest.raises(E.EngineProtocolError):
        run(call(engine, "get_wallet", "u"))


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=20,
)
hostile_body = st.one_of(
    st.binary(max_size=200),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.fixed_dictionaries({"status": st.sampled_from(["success", "fail", "error", 3]), "data": json_values}).map(
        lambda v: json.dumps(v).encode()
    ),
)


@given(
    status=st.sampled_from([200, 201, 204, 301, 400, 401, 403, 404, 409, 418, 422, 429, 500, 502, 503, 504]),
    body=hostile_body,
    endpoint=st.sampled_from(
        ["get_user", "get_wallet", "list_benefits", "validate_voucher", "report_event", "test_reaction", "find_events"]
    ),
)
def test_hostile_responses_only_ever_raise_tillplug_errors(status, body, endpoint):
    def handler(request):
        if request.url.path == "/oauth/token":
            return httpx.Response(200, json={"access_token": TOKEN, "expires_in": 86400})
        return httpx.Response(status, content=body)

    args = {
        "report_event": (EventDefinition(type="TRANSACTION"),),
        "test_reaction": (EventDefinition(type="TRANSACTION"),),
    }

    async def go():
        async def no_sleep(_):
            return None

        async with EngineClient(CFG, secrets(), transport=httpx.MockTransport(handler), sleep=no_sleep) as c:
            await getattr(c, endpoint)(*args.get(endpoint, ("x",)))

    try:
        run(go())
    except E.TillplugError as exc:
        text = f"{exc!s} {exc!r} {exc.to_dict()}"
        assert API_KEY not in text and TOKEN not in text and CLIENT_SECRET not in text


def test_secrets_never_appear_in_reprs_or_errors():
    engine = Engine({("GET", "/users/1234567"): [httpx.ConnectError(f"refused {API_KEY}")]})
    c = client(engine)
    assert API_KEY not in repr(c) and API_KEY not in repr(c._secrets) and CLIENT_SECRET not in repr(c._secrets)
    with pytest.raises(E.EngineUnreachable) as info:
        run(c.get_user("1234567"))
    assert API_KEY not in str(info.value) and TOKEN not in repr(c.tokens.valid())


def test_token_endpoint_refusal_is_an_auth_error():
    engine = Engine({("GET", "/users/1234567"): [ok({"id": "x"})]}, token_status=401)
    with pytest.raises(E.EngineAuthError):
        run(call(engine, "get_user", "1234567"))


def test_event_type_secret_replaces_the_admin_token():
    engine = Engine({("POST", "/events/"): [ok(EVENT)]})
    s = secrets()
    s.event_type_secrets["TRANSACTION"] = Secret("evt-secret")

    async def go():
        async with EngineClient(CFG, s, transport=httpx.MockTransport(engine)) as c:
            await c.report_event(EventDefinition(type="TRANSACTION"))

    run(go())
    assert engine.token_calls == 0
    assert engine.requests[0].headers["authorization"] == "Bearer evt-secret"


def test_a_401_on_a_voucher_call_is_an_auth_problem_not_a_voucher_problem():
    engine = Engine({("POST", "/commands/validate_voucher"): [httpx.Response(401, json={"message": "Unauthorized"})]})
    with pytest.raises(E.EngineAuthError):
        run(call(engine, "validate_voucher", "X"))


def test_an_unreadable_2xx_answer_to_a_write_is_outcome_unknown():
    """The engine said yes but the body is garbage: the write may be applied, so never 'failed'."""
    engine = Engine({("POST", "/events/"): [httpx.Response(200, text="<html>ok</html>")]})
    with pytest.raises(E.OutcomeUnknown):
        run(call(engine, "report_event", EventDefinition(type="TRANSACTION")))


@pytest.mark.parametrize(
    "exc",
    [
        httpx.DecodingError("Error -3 while decompressing data: incorrect header check"),
        httpx.TooManyRedirects("redirected"),
        httpx.StreamConsumed(),
    ],
)
@pytest.mark.parametrize("write", [False, True])
def test_every_httpx_error_is_translated_a_reads_as_protocol_trouble_a_writes_as_an_unknown_outcome(exc, write):
    """Issue 22, observation 3: a proxy's broken gzip (``httpx.DecodingError``, no TransportError)
    escaped the client.  Now nothing from httpx does: a write's is an unknown outcome (never resent),
    a read's is protocol trouble."""
    engine, coro = write_or_read(write, exc)
    with pytest.raises(E.TillplugError) as info:
        run(coro)
    assert type(info.value) is (E.OutcomeUnknown if write else E.EngineProtocolError)
    assert len([r for r in engine.requests if r.url.path != "/oauth/token"]) == 1


def test_a_streak_of_401s_refreshes_the_token_at_most_once():
    """Issue 22, observation 6: each call answered 401 minted a new token (two per voucher scan).
    A refresh that did not help is not repeated until some call succeeds again."""
    engine = Engine(
        {
            ("POST", "/commands/validate_voucher"): [httpx.Response(401, json={"message": "Unauthorized"})],
            ("GET", "/users/1234567"): [ok({"id": "x"})],
        }
    )

    async def go():
        async with client(engine) as c:
            for _ in range(3):
                with pytest.raises(E.EngineAuthError):
                    await c.validate_voucher("X")
            assert engine.token_calls == 2  # the first token, one refresh
            await c.get_user("1234567")  # a success ends the streak
            engine.routes[("GET", "/users/1234567")] = [httpx.Response(401)]
            with pytest.raises(E.EngineAuthError):
                await c.get_user("1234567")
            assert engine.token_calls == 3

    run(go())
