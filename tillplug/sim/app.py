"""The simulator's HTTP face: a real server on 127.0.0.1 speaking the engine's wire format.

Routes: ``/oauth/token``; the Rewards API under ``/v1``; the Receipts API under
``/receipts/v1``; and ``/_sim/*`` for the tests and the demo (ledger, faults).
Collections answer with or without a trailing slash, as the engine does.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from dataclasses import asdict, dataclass
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tillplug.sim.dialects import Dialect, dialect
from tillplug.sim.state import EngineState, SimError


@dataclass
class Faults:
    """Switches for the failures a real network and engine produce.  Rates are 0..1."""

    down: bool = False  # every API call answers 503 with an HTML page
    error_rate: float = 0.0  # 5xx before doing anything
    error_status: int = 500
    rate_limit_rate: float = 0.0  # 429 before doing anything
    retry_after: float | None = None
    slow_ms: int = 0
    reset_rate: float = 0.0  # writes only: do the work, then drop the connection mid-answer
    malformed_rate: float = 0.0
    malformed_kind: str = "html"  # html, truncated, empty, wrong_shape
    # Writes only: the engine takes the write this many seconds after it arrived (past the
    # client's read timeout, the till sees no answer; the write lands all the same).
    late_write_seconds: float = 0.0
    seed: int | None = None

    def update(self, values: dict[str, Any]) -> None:
        for key, value in values.items():
            if key not in self.__dataclass_fields__:
                raise ValueError(f"unknown fault {key!r}")
            setattr(self, key, value)


class TokenBucket:
    def __init__(self, rate: float, burst: int) -> None:
        self.rate, self.burst = rate, burst
        self.tokens = float(burst)
        self.stamp = time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


def ok(data: Any, status: int = 200) -> JSONResponse:
    return JSONResponse({"status": "success", "data": data}, status_code=status)


def fail(err: SimError) -> JSONResponse:
    status = "error" if err.status >= 500 else "fail"
    body: dict[str, Any] = {"status": status, "message": err.message}
    if err.code:  # a refusal "by status only" carries no machine code
        body["data"] = {"code": err.code}
    return JSONResponse(body, status_code=err.status)


async def _json(request: Request) -> dict[str, Any]:
    try:
        body = json.loads(await request.body() or b"{}")
    except ValueError:
        raise SimError(400, "INVALID_JSON", "Body is not valid JSON") from None
    if not isinstance(body, dict):
        raise SimError(400, "INVALID_JSON", "Body must be a JSON object")
    return body


# How each voucher refusal is answered in the "statuses" dialect: another status, other words.
OTHER_REFUSALS: dict[str, tuple[int, str]] = {
    "VOUCHER_NOT_FOUND": (404, "No voucher matches this code"),
    "VOUCHER_ALREADY_BURNED": (400, "This code was already burned on 2026-01-02"),
    "VOUCHER_EXPIRED": (400, "The code expired and can no longer be validated"),
    "VOUCHER_NOT_REDEEMED": (400, "The benefit must be redeemed before its code can be validated"),
    "VOUCHER_WRONG_USER": (403, "The code belongs to another user"),
    "VOUCHER_WRONG_VENUE": (422, "The reward is not available at this venue"),
}


class Simulator:
    def __init__(
        self, state: EngineState, *, rate: float = 100, burst: int = 400, dialect: Dialect | None = None
    ) -> None:
        self.state = state
        self.dialect = dialect or Dialect()
        self.faults = Faults()
        self.rng = random.Random()
        self.buckets: dict[str, TokenBucket] = {}
        self.rate, self.burst = rate, burst
        self.requests = 0
        self.seen: list[str] = []  # method, path and body of every API request, for tests
        inner = Starlette(routes=self._routes(), exception_handlers={SimError: _sim_error})
        self.app = FaultLayer(self, inner)

    def requests_for(self, needle: str) -> int:
        return sum(needle in line for line in self.seen)

    # -- auth and helpers --------------------------------------------------------

    def _auth(self, request: Request, *, event_type: str | None = None) -> None:
        if request.headers.get("x-api-key") != self.state.api_key:
            raise SimError(401, "UNAUTHORIZED", "Unauthorized")
        auth = request.headers.get("authorization", "")
        token = auth[7:] if auth.lower().startswith("bearer ") else None
        if not self.state.bearer_ok(token, event_type):
            raise SimError(401, "UNAUTHORIZED", "Unauthorized")

    def _schedule_reaction(self, event_id: str) -> None:
        delay = float(self.state.reactors.get("delay_seconds", 0.05))
        self.state.reactions_due += 1
        if self.dialect.reactions == "delayed":
            delay = max(delay, self.dialect.late_reaction_seconds)
        asyncio.get_running_loop().call_later(delay, self.state.apply_reaction, event_id)

    def _filter(self, request: Request, name: str, behaviour: str) -> str | None:
        """The value of ``filter[name]`` if this dialect honours it; None if it ignores it."""
        value = request.query_params.get(f"filter[{name}]")
        if value is None or behaviour in ("ignored", "blank"):
            return None
        if behaviour == "rejected":
            raise SimError(400, "VALIDATION_ERROR", f"filter.{name} is not an allowed filter")
        return value

    def _written(self, data: Any, status: int = 200) -> Response:
        """The 2xx answer to a write, as this dialect words it."""
        if self.dialect.write_bodies == "empty":
            return Response(b"", status)
        if self.dialect.write_bodies == "unreadable":
            return Response(b"<html><body>OK</body></html>", status, media_type="text/html")
        return ok(data, status)

    def _voucher_refusal(self, err: SimError) -> SimError:
        style = self.dialect.voucher_refusals
        if style == "codes" or err.code not in OTHER_REFUSALS:
            return err
        if style == "status_only":
            return SimError(err.status, "", err.message)
        status, message = OTHER_REFUSALS[err.code]
        return SimError(status, "", message)

    def _routes(self) -> list[Route]:
        def both(path: str, endpoint: Any, methods: list[str]) -> list[Route]:
            return [Route(path, endpoint, methods=methods), Route(path + "/", endpoint, methods=methods)]

        return [
            *both("/oauth/token", self.token, ["POST"]),
            *both("/v1/users", self.users, ["GET"]),
            *both("/v1/users/{ident}", self.user, ["GET"]),
            *both("/v1/users/{ident}/wallet", self.wallet, ["GET"]),
            *both("/v1/benefits", self.benefits, ["GET"]),
            *both("/v1/benefits/{bid}", self.benefit, ["GET"]),
            *both("/v1/commands/redeem_benefit", self.redeem_benefit, ["POST"]),
            *both("/v1/commands/validate_voucher", self.validate_voucher, ["POST"]),
            *both("/v1/events/test_reaction", self.test_reaction, ["POST"]),
            *both("/v1/events", self.events, ["GET", "POST"]),
            *both("/v1/events/{eid}/reactions", self.reactions, ["GET"]),
            *both("/receipts/v1/orders", self.orders, ["GET", "POST"]),
            *both("/v1/openapi.json", self.openapi, ["GET"]),
            Route("/_sim/ledger", self.ledger, methods=["GET"]),
            Route("/_sim/faults", self.set_faults, methods=["GET", "POST"]),
            Route("/_sim/dialect", self.set_dialect, methods=["GET", "POST"]),
            Route("/_sim/reactors", self.set_reactors, methods=["GET", "POST"]),
            Route("/_sim/health", self.health, methods=["GET"]),
        ]

    # -- endpoints ---------------------------------------------------------------

    async def token(self, request: Request) -> Response:
        return JSONResponse(self.state.issue_token(await _json(request), check_audience=self.dialect.check_audience))

    async def users(self, request: Request) -> Response:
        self._auth(request)
        wanted = self._filter(request, "authIdentifier", self.dialect.user_filter)
        found = [
            self.state.user(m["id"])
            for m in self.state.members.values()
            if wanted is None or m.get("authIdentifier") == wanted
        ]
        return ok(_page(request, found))

    async def user(self, request: Request) -> Response:
        self._auth(request)
        by_auth = self.dialect.auth_identifier_lookup
        return ok(self.state.user(request.path_params["ident"], by_auth_identifier=by_auth))

    async def wallet(self, request: Request) -> Response:
        self._auth(request)
        return ok(self.state.wallet(request.path_params["ident"]))

    async def benefits(self, request: Request) -> Response:
        self._auth(request)
        owner = self._filter(request, "owner", self.dialect.owner_filter)
        if owner:
            return ok(_page(request, self.state.benefits_of(owner)))
        return ok(_page(request, [self.state.benefit_view(b) for b in self.state.benefits.values()]))

    async def benefit(self, request: Request) -> Response:
        self._auth(request)
        b = self.state.benefits.get(request.path_params["bid"])
        if b is None:
            raise SimError(404, "BENEFIT_NOT_FOUND", "Benefit not found")
        return ok(self.state.benefit_view(b))

    async def redeem_benefit(self, request: Request) -> Response:
        self._auth(request)
        body = await _json(request)
        if not isinstance(body.get("benefitId"), str):
            raise SimError(400, "VALIDATION_ERROR", "benefitId is required")
        return self._written(self.state.redeem_benefit(body["benefitId"]))

    async def validate_voucher(self, request: Request) -> Response:
        self._auth(request)
        body = await _json(request)
        try:
            benefit = self.state.validate_voucher(body)
        except SimError as err:
            raise self._voucher_refusal(err) from None
        return ok(benefit) if body.get("allowFutureValidation") else self._written(benefit)

    async def test_reaction(self, request: Request) -> Response:
        self._auth(request)
        return ok(self.state.test_reaction(await _json(request)))

    async def events(self, request: Request) -> Response:
        if request.method == "GET":
            self._auth(request)
            if _blank(request, "payload.eventKey", self.dialect.event_key_filter):
                return ok([])
            key = self._filter(request, "payload.eventKey", self.dialect.event_key_filter)
            return ok(self.state.find_events(key, _limit(request), _skip(request)))
        body = await _json(request)
        self._auth(request, event_type=body.get("type") if isinstance(body.get("type"), str) else None)
        payload = body.get("payload")
        key = payload.get("eventKey") if isinstance(payload, dict) else None
        if self.dialect.reject_duplicate_keys and key and self.state.find_events(key, 1):
            raise SimError(409, "DUPLICATE_EVENT_KEY", "An event with this eventKey already exists")
        event = self.state.record_event(body)
        self._schedule_reaction(event["id"])
        return self._written(event)

    async def reactions(self, request: Request) -> Response:
        self._auth(request)
        eid = request.path_params["eid"]
        if eid not in self.state.events:
            raise SimError(404, "EVENT_NOT_FOUND", "Event not found")
        applied = list(self.state.reactions[eid])
        if self.dialect.reactions == "never":
            return ok([])
        if self.dialect.reactions == "nested":
            reactor = {"id": f"reactor-{self.state.events[eid]['type'].lower()}", "name": "points"}
            return ok([{"reactor": reactor, "reactions": applied}] if applied else [])
        return ok(applied)

    async def orders(self, request: Request) -> Response:
        self._auth(request)
        if request.method == "GET":
            if _blank(request, "metadata.eventKey", self.dialect.order_key_filter):
                return ok([])
            key = self._filter(request, "metadata.eventKey", self.dialect.order_key_filter)
            orders = self.state.find_orders(key)
            return ok(_page(request, orders[::-1] if request.query_params.get("order") == "DESC" else orders))
        order, event = self.state.submit_order(await _json(request))
        self._schedule_reaction(event["id"])
        return self._written(order, status=201)

    async def openapi(self, request: Request) -> Response:
        from tillplug.sim.openapi import document

        return JSONResponse(document())

    async def ledger(self, request: Request) -> Response:
        return JSONResponse(self.state.ledger_view())

    async def set_faults(self, request: Request) -> Response:
        if request.method == "POST":
            values = await _json(request)
            if "dialect" in values:  # a dialect may be switched along with the faults
                try:
                    self.dialect = dialect(str(values.pop("dialect")))
                except ValueError as exc:
                    raise SimError(400, "UNKNOWN_DIALECT", str(exc)) from None
            try:
                self.faults.update(values)
            except ValueError as exc:
                raise SimError(400, "UNKNOWN_FAULT", str(exc)) from None
            if self.faults.seed is not None:
                self.rng.seed(self.faults.seed)
        return JSONResponse(asdict(self.faults))

    async def set_dialect(self, request: Request) -> Response:
        """POST {"name": "strict"} for a named dialect, and/or single switches: {"reactions": "nested"}."""
        if request.method == "POST":
            values = await _json(request)
            try:
                base = dialect(str(values.pop("name"))) if "name" in values else self.dialect
                self.dialect = base.with_switches(values)
            except (ValueError, TypeError) as exc:
                raise SimError(400, "UNKNOWN_DIALECT", str(exc)) from None
        return JSONResponse(self.dialect.to_dict())

    async def set_reactors(self, request: Request) -> Response:
        """POST {"redemption": "missing" | "conditional" | "present"}, {"take_back": "missing" | "present"}
        and/or {"delay_seconds": 0.5}."""
        if request.method == "POST":
            values = await _json(request)
            for key, value in values.items():
                if key == "redemption" and value in ("present", "missing", "conditional"):
                    continue
                if key == "take_back" and value in ("present", "missing"):  # a return's take-back reactor
                    continue
                if key == "delay_seconds" and isinstance(value, (int, float)) and 0 <= value <= 60:
                    continue
                raise SimError(400, "UNKNOWN_REACTOR_SWITCH", f"{key}={value!r} is no reactor switch")
            self.state.reactors.update(values)
        return JSONResponse({k: self.state.reactors.get(k) for k in ("redemption", "take_back", "delay_seconds")})

    async def health(self, request: Request) -> Response:
        return JSONResponse({"ok": True, "requests": self.requests})


async def _sim_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, SimError)
    return fail(exc)


def _blank(request: Request, name: str, behaviour: str) -> bool:
    """A filter this dialect does not support and answers with an empty list."""
    return behaviour == "blank" and request.query_params.get(f"filter[{name}]") is not None


def _skip(request: Request) -> int:
    try:
        return max(0, int(request.query_params.get("skip", "0")))
    except ValueError:
        raise SimError(400, "VALIDATION_ERROR", "skip must be 0 or more") from None


def _page(request: Request, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    skip = _skip(request)
    return items[skip : skip + _limit(request)]


def _limit(request: Request) -> int:
    try:
        return max(1, min(1000, int(request.query_params.get("limit", "100"))))
    except ValueError:
        raise SimError(400, "VALIDATION_ERROR", "limit must be 1..1000") from None


HTML_503 = b"<html><head><title>503 Service Unavailable</title></head><body><h1>503</h1></body></html>"


class FaultLayer:
    """ASGI middleware: rate limit, faults, and SimError → the engine's error body."""

    def __init__(self, sim: Simulator, app: ASGIApp) -> None:
        self.sim, self.app = sim, app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith("/_sim/"):
            await self.app(scope, receive, send)
            return
        sim, faults = self.sim, self.sim.faults
        sim.requests += 1
        receive = self._recording(scope, receive)
        if faults.slow_ms:
            await asyncio.sleep(faults.slow_ms / 1000)
        if faults.down:
            await Response(HTML_503, 503, media_type="text/html")(scope, receive, send)
            return
        key = dict(scope["headers"]).get(b"x-api-key", b"").decode("latin-1")
        bucket = sim.buckets.setdefault(key, TokenBucket(sim.rate, sim.burst))
        if not bucket.take() or sim.rng.random() < faults.rate_limit_rate:
            headers = {"Retry-After": str(faults.retry_after)} if faults.retry_after is not None else None
            await JSONResponse({"message": "Too Many Requests"}, 429, headers=headers)(scope, receive, send)
            return
        if sim.rng.random() < faults.error_rate:
            await JSONResponse({"status": "error", "message": "Internal server error"}, faults.error_status)(
                scope, receive, send
            )
            return
        is_write = scope["method"] == "POST" and not scope["path"].startswith("/oauth/")
        if is_write and faults.late_write_seconds > 0:
            receive = await self._held(receive, faults.late_write_seconds)
        if is_write and sim.rng.random() < faults.reset_rate:
            await self._reset_after_work(scope, receive, send)
            return
        if sim.rng.random() < faults.malformed_rate:
            await self._malformed(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _recording(self, scope: Scope, receive: Receive) -> Receive:
        line = f"{scope['method']} {scope['path']}?{scope.get('query_string', b'').decode('latin-1')} "
        self.sim.seen.append(line)
        index = len(self.sim.seen) - 1

        async def wrapped() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                self.sim.seen[index] += message.get("body", b"").decode("utf-8", "replace")
            return message

        return wrapped

    @staticmethod
    async def _held(receive: Receive, seconds: float) -> Receive:
        """The whole request read now, handed on ``seconds`` later: the engine takes it late, even
        if the client has given up waiting meanwhile."""
        messages: list[Message] = []
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request" or not message.get("more_body", False):
                break
        await asyncio.sleep(seconds)

        async def replay() -> Message:
            return messages.pop(0) if messages else {"type": "http.disconnect"}

        return replay

    async def _reset_after_work(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Do the request (the event IS recorded), then break the answer off mid-body."""
        messages: list[Message] = []

        async def keep(message: Message) -> None:
            messages.append(message)

        await self.app(scope, receive, keep)
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", b"4096")],
            }
        )
        await send({"type": "http.response.body", "body": b'{"status": "succ', "more_body": True})
        raise ConnectionAbortedError("simulated reset after the request was read")

    async def _malformed(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = self.sim.faults.malformed_kind
        bodies = {
            "html": (200, b"<html><body>Bad gateway</body></html>", "text/html"),
            "truncated": (200, b'{"status": "success", "data": {"pointsBal', "application/json"),
            "empty": (200, b"", "application/json"),
            "wrong_shape": (200, b'{"status": "success", "data": [1, "two", null]}', "application/json"),
        }
        status, body, ctype = bodies.get(kind, bodies["html"])
        await Response(body, status, media_type=ctype)(scope, receive, send)
