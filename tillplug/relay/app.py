"""The relay's HTTP face: WLL's wire format for the tills, each call scoped to the till's token.

Every route is in ``routes()``; docs/relay.md's interface table says what each answers and from
where.  Errors from the engine client and the store are answered here in WLL's shape
(``{"status": "fail", "message", "data": {"code"}}``), never passed through raw.
"""

from __future__ import annotations

import hmac
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tillplug.config.loader import read_secret
from tillplug.engine import EngineClient
from tillplug.engine.models import EventDefinition
from tillplug.engine.refusals import VOUCHER_REASONS
from tillplug.errors import (
    BenefitNotFound,
    DuplicateEvent,
    EngineAuthError,
    EngineProtocolError,
    EngineRejected,
    EngineUnavailable,
    InsufficientPoints,
    MemberNotFound,
    OutcomeUnknown,
    PointsExceedSale,
    RateLimited,
    RefundTooLarge,
    RelayForbidden,
    RelayRefusal,
    RelayTooLarge,
    RelayUnavailable,
    ReturnExceedsSale,
    ReturnIdReused,
    TillplugError,
    VoucherError,
)
from tillplug.logs import mask
from tillplug.relay import scope
from tillplug.relay.config import RelayConfig, is_loopback
from tillplug.relay.deliver import Deliverer
from tillplug.relay.guard import Guard
from tillplug.relay.metrics import RelayMetrics
from tillplug.relay.sales import Sales, request_of
from tillplug.relay.store import Store, body_hash
from tillplug.relay.tokens import Till, Tokens

log = logging.getLogger(__name__)
calls = logging.getLogger("tillplug.relay.calls")  # one line per call, by till

VOUCHER_CODES = {cls: code for code, cls in reversed(VOUCHER_REASONS.items())}
PAGE = 100
MAX_POINTS = 10**9

Handler = Callable[[Request, Till], Awaitable[Response]]


def ok(data: Any, status: int = 200) -> JSONResponse:
    return JSONResponse({"status": "success", "data": data}, status_code=status)


def refusal(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    body = {"status": "error" if status >= 500 else "fail", "message": message, "data": {"code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


def answer_error(exc: TillplugError) -> JSONResponse:  # noqa: PLR0911 -- one answer per kind of error
    """The till's answer to an error, worded as WLL would (the till's client reads it as from WLL)."""
    if isinstance(exc, RateLimited):
        wait = max(1, round(exc.retry_after or 1))
        return refusal(429, "rate_limited", "The chain is at its request limit.", {"Retry-After": str(wait)})
    if isinstance(exc, (RelayRefusal, InsufficientPoints, ReturnExceedsSale, ReturnIdReused)):
        return refusal(exc.http_status, exc.code, exc.message)
    if isinstance(exc, RelayUnavailable):
        return refusal(503, exc.code, exc.message)
    if isinstance(exc, EngineAuthError):  # the relay's own credentials: the tills wait, as for an outage
        log.error("the engine refused the relay's credentials: %s", exc.message)
        return refusal(503, "relay_unavailable", "The relay cannot reach the loyalty service.")
    if isinstance(exc, MemberNotFound):
        return refusal(404, "USER_NOT_FOUND", exc.engine_message or "User not found")
    if isinstance(exc, BenefitNotFound):
        return refusal(404, "BENEFIT_NOT_FOUND", exc.engine_message or "Benefit not found")
    if isinstance(exc, VoucherError):
        code = VOUCHER_CODES.get(type(exc), "VOUCHER_REFUSED")
        return refusal(exc.status or 400, code, exc.engine_message or exc.message)
    if isinstance(exc, EngineRejected):
        return refusal(exc.status or 422, "ENGINE_REJECTED", exc.engine_message or exc.message)
    if isinstance(exc, OutcomeUnknown):
        return refusal(504, "outcome_unknown", "The loyalty service's answer was lost; look the event up later.")
    if isinstance(exc, EngineUnavailable):
        return refusal(503, "relay_unavailable", "The relay cannot reach the loyalty service.")
    if isinstance(exc, EngineProtocolError):
        return refusal(502, exc.code, exc.message)
    return refusal(500, exc.code, exc.message)


def _event_answer(row: dict[str, Any]) -> dict[str, Any]:
    """An event as the relay shows it to the till that sent it (WLL's id once it has one)."""
    if row["kind"] == "spend" and isinstance(row.get("answer"), dict):
        return dict(row["answer"])
    body = row["body"]
    created = row["created_at"].isoformat().replace("+00:00", "Z")
    if row["kind"] == "order":
        return {**body, "id": row["engine_id"] or row["event_key"], "createdAt": created}
    answer = {k: body[k] for k in ("type", "subject", "payload", "occurredAt") if k in body}
    return {**answer, "id": row["engine_id"] or row["event_key"], "createdAt": created}


def _has_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any("\x00" in k or _has_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_nul(v) for v in value)
    return False


class RelayApp:
    def __init__(
        self,
        config: RelayConfig,
        store: Store,
        client: EngineClient,
        tokens: Tokens,
        guard: Guard,
        deliverer: Deliverer,
        *,
        metrics: RelayMetrics | None = None,
    ) -> None:
        self.config = config
        self.metrics = metrics or RelayMetrics()
        # A scraper beyond loopback (or behind the trusted proxy) shows this token; loopback needs none.
        self.metrics_token = read_secret(config.api.metrics_token) if config.api.metrics_token else None
        self.store = store
        self.client = client
        self.tokens = tokens
        self.guard = guard
        self.deliverer = deliverer
        self.types = config.engine.event_types
        self.sales = Sales(store, client, self.types.transaction)
        self.app = Starlette(routes=self.routes())

    def routes(self) -> list[Route]:
        def both(path: str, handler: Handler, methods: list[str]) -> list[Route]:
            endpoint = self._endpoint(handler, path)
            return [Route(path, endpoint, methods=methods), Route(path + "/", endpoint, methods=methods)]

        return [
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
            Route("/relay/v1/sales/{tx}", self._endpoint(self.sale, "/relay/v1/sales/{tx}"), methods=["GET"]),
            Route(
                "/relay/v1/sales/{tx}/returns",
                self._endpoint(self.register_return, "/relay/v1/sales/{tx}/returns"),
                methods=["POST"],
            ),
            Route("/relay/health", self.health, methods=["GET"]),
            Route("/metrics", self.scrape, methods=["GET"]),
        ]

    # -- the edge: proxy, token, body limit, errors, the per-till log ------------------------

    def _endpoint(self, handler: Handler, route: str) -> Callable[[Request], Awaitable[Response]]:
        """The handler behind the edge; its log line names the route, never a card code or member id."""

        async def endpoint(request: Request) -> Response:
            start = time.perf_counter()
            till: Till | None = None
            try:
                self._check_peer(request)
                till = await self.tokens.till(request.headers.get("authorization"))
                response = await handler(request, till)
            except TillplugError as exc:
                response = answer_error(exc)
            self.metrics.requests.labels(route, str(response.status_code)).inc()
            if response.status_code == 429:
                self.metrics.rate_limited.inc()
            calls.info(
                "till=%s branch=%s %s %s -> %d (%.0f ms)",
                till.till_id if till else "-",
                till.branch_id if till else "-",
                request.method,
                route,
                response.status_code,
                (time.perf_counter() - start) * 1000,
            )
            return response

        return endpoint

    def _check_peer(self, request: Request) -> None:
        proxy = self.config.api.trusted_proxy
        if proxy is not None and (request.client is None or request.client.host != proxy):
            raise RelayForbidden("Only the trusted proxy may connect to this relay.")

    async def _body(self, request: Request) -> dict[str, Any]:
        limit = self.config.api.max_body_bytes
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > limit):
            raise RelayTooLarge(f"The request body is over {limit} bytes.")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise RelayTooLarge(f"The request body is over {limit} bytes.")
            chunks.append(chunk)
        try:
            body = json.loads(b"".join(chunks) or b"{}")
        except (ValueError, UnicodeDecodeError, RecursionError):
            raise RelayRefusal("The body is not valid JSON (or is nested too deep).") from None
        if not isinstance(body, dict):
            raise RelayRefusal("The body must be a JSON object.")
        if _has_nul(body):  # PostgreSQL stores no NUL in text or jsonb, and no till writes one
            raise RelayRefusal("The body holds a NUL character.")
        return body

    @staticmethod
    def _number(request: Request, name: str, default: int) -> int:
        value = request.query_params.get(name) or str(default)
        if not value.isdigit() or len(value) > 9:
            raise RelayRefusal(f"{name} must be a whole number.")
        return int(value)

    async def _member(self, till: Till, ident: str) -> str:
        """The member id behind ``ident`` if this till looked the member up; else ``RelayForbidden``."""
        member_id = await self.store.member_seen(till.till_id, ident, scope.MEMBER_HOURS)
        if member_id is None:
            raise RelayForbidden("This till has not looked this member up by their card.")
        return member_id

    # -- members, wallets, benefits, vouchers ------------------------------------------------

    async def _saw(self, till: Till, ident: str, user: Any) -> dict[str, Any]:
        aliases = [a for a in (ident, user.account_number, user.auth_identifier) if a]
        await self.store.saw_member(till.till_id, user.id, aliases)
        return dict(scope.trimmed(user.model_dump(by_alias=True, exclude_none=True), scope.USER_FIELDS))

    async def user(self, request: Request, till: Till) -> Response:
        ident = request.path_params["ident"]
        return ok(await self._saw(till, ident, await self.client.get_user(ident)))

    async def users(self, request: Request, till: Till) -> Response:
        wanted = request.query_params.get("filter[authIdentifier]")
        if not wanted or self._number(request, "skip", 0) > 0:
            if wanted:
                return ok([])
            raise RelayForbidden("Members are looked up by a card's code only; there is no listing.")
        try:
            user = await self.client.find_user_by_auth_identifier(wanted)
        except MemberNotFound:
            return ok([])
        return ok([await self._saw(till, wanted, user)])

    async def wallet(self, request: Request, till: Till) -> Response:
        member_id = await self._member(till, request.path_params["ident"])
        wallet = await self.client.get_wallet(member_id)
        return ok(scope.trimmed_wallet(wallet.model_dump(by_alias=True, exclude_none=True)))

    async def benefits(self, request: Request, till: Till) -> Response:
        owner = request.query_params.get("filter[owner]")
        if not owner:
            raise RelayForbidden("Benefits are listed only for a member this till looked up (filter[owner]).")
        member_id = await self._member(till, owner)
        if self._number(request, "skip", 0) > 0:
            return ok([])  # the first page holds them all (read by the relay's client, owner checked)
        found = await self.client.list_benefits(member_id)
        return ok([scope.trimmed_owner(b.model_dump(by_alias=True, exclude_none=True)) for b in found])

    async def _owned_benefit(self, till: Till, benefit_id: str) -> Any:
        benefit = await self.client.get_benefit(benefit_id)
        if not benefit.owner_ids() or not await self.store.any_member_seen(
            till.till_id, sorted(benefit.owner_ids()), scope.MEMBER_HOURS
        ):
            raise BenefitNotFound("This voucher is not in the wallet of a member this till looked up.")
        return benefit

    async def benefit(self, request: Request, till: Till) -> Response:
        benefit = await self._owned_benefit(till, request.path_params["bid"])
        return ok(scope.trimmed_owner(benefit.model_dump(by_alias=True, exclude_none=True)))

    async def redeem_benefit(self, request: Request, till: Till) -> Response:
        body = await self._body(request)
        benefit_id = body.get("benefitId")
        if not isinstance(benefit_id, str) or not benefit_id or len(benefit_id) > 128:
            raise RelayRefusal("benefitId is required.")
        await self._owned_benefit(till, benefit_id)
        redeemed = await self.client.redeem_benefit(benefit_id)
        return ok(scope.trimmed_owner(redeemed.model_dump(by_alias=True, exclude_none=True)))

    async def validate_voucher(self, request: Request, till: Till) -> Response:
        body = await self._body(request)
        code = body.get("code")
        if not isinstance(code, str) or not 1 <= len(code) <= 128:
            raise RelayRefusal("code is required.")
        user = body.get("userIdentifier")
        if user is not None:
            if not isinstance(user, str):
                raise RelayRefusal("userIdentifier must be a string.")
            await self._member(till, user)
        check_only = body.get("allowFutureValidation") is True
        benefit = await self.client.validate_voucher(code, check_only=check_only, user_identifier=user)
        return ok(scope.trimmed_owner(benefit.model_dump(by_alias=True, exclude_none=True)))

    async def test_reaction(self, request: Request, till: Till) -> Response:
        event = self._definition(await self._body(request), till)
        results = await self.client.test_reaction(event)
        return ok([r.model_dump(by_alias=True, exclude_none=True) for r in results])

    # -- events ---------------------------------------------------------------------------

    def _definition(self, body: dict[str, Any], till: Till) -> EventDefinition:
        try:
            return EventDefinition.model_validate(scope.stamped(body, till))
        except ValidationError as exc:
            where = ", ".join(".".join(str(p) for p in e["loc"]) for e in exc.errors()[:3])
            raise RelayRefusal(f"The event is not valid ({where}).") from None

    async def events(self, request: Request, till: Till) -> Response:
        if request.method == "GET":
            return await self._look_up(request, till, "payload.eventKey")
        raw = await self._body(request)
        event = self._definition(raw, till)
        key = event.payload.get("eventKey")
        if not isinstance(key, str) or not 8 <= len(key) <= 64:
            raise RelayRefusal("Every event carries its own eventKey (8 to 64 characters) in its payload.")
        body = event.body()
        row = {
            "event_key": key,
            "till_id": till.till_id,
            "branch_id": till.branch_id,
            "type": event.type,
            "subject": event.subject,
            "body": body,
            # What the till sent (stamped), not what defaults were filled in: a resend hashes the same.
            "body_hash": body_hash(scope.stamped(raw, till)),
            "transaction_id": tx_id if isinstance(tx_id := event.payload.get("transactionId"), str) else None,
        }
        move = scope.return_move(event.type, event.payload, self.types)
        if move is not None:
            existing = await self.store.event(key)
            return self._replay(existing, row) if existing is not None else await self._return_move(event, row, move)
        if event.type not in (self.types.redeemed_points, self.types.points_refund):
            return await self._queue(row | {"kind": "earn", "state": "pending"})  # a resend: the key's conflict
        existing = await self.store.event(key)
        if existing is not None:
            return self._replay(existing, row)
        if event.type == self.types.redeemed_points:
            return await self._spend(event, row, till)
        return await self._refund(event, row, till)

    async def orders(self, request: Request, till: Till) -> Response:
        if request.method == "GET":
            return await self._look_up(request, till, "metadata.eventKey")
        body = await self._body(request)
        metadata = body.get("metadata")
        key = metadata.get("eventKey") if isinstance(metadata, dict) else None
        if not isinstance(key, str) or not 8 <= len(key) <= 64:
            raise RelayRefusal("Every order carries its own eventKey (8 to 64 characters) in its metadata.")
        body["metadata"] = {**metadata, "tillId": till.till_id, "branchId": till.branch_id}  # type: ignore[dict-item]
        row = {
            "event_key": key,
            "till_id": till.till_id,
            "branch_id": till.branch_id,
            "type": "ORDER",
            "subject": None,
            "body": body,
            "body_hash": body_hash(body),
            "transaction_id": order_id if isinstance(order_id := body.get("orderId"), str) else None,
        }
        return await self._queue(row | {"kind": "order", "state": "pending"})

    def _replay(self, existing: dict[str, Any], row: dict[str, Any]) -> Response:
        """A resend: answered as the first time if it is the same event from the same till."""
        if existing["till_id"] != row["till_id"] or existing["body_hash"] != row["body_hash"]:
            raise DuplicateEvent()
        if existing["kind"] == "spend":
            if existing["state"] in ("sending", "unknown"):
                raise OutcomeUnknown()
            if existing["state"] == "failed":
                raise DuplicateEvent("This spend did not reach the loyalty service; send a new one.")
        return ok(_event_answer(existing), 201 if existing["kind"] == "order" else 200)

    async def _queue(self, row: dict[str, Any]) -> Response:
        stored = await self.store.insert_event(row)
        if stored is None:
            existing = await self.store.event(row["event_key"])
            if existing is None:  # inserted and gone: cannot happen (rows are never deleted)
                raise RelayUnavailable()
            return self._replay(existing, row)
        self.deliverer.wake.set()
        return ok(_event_answer(stored), 201 if row["kind"] == "order" else 200)

    def _points(self, event: EventDefinition) -> int:
        points = event.payload.get("points")
        if isinstance(points, bool) or not isinstance(points, (int, float)) or points != int(points):
            raise RelayRefusal("points must be a whole number.")
        if not 0 < points <= MAX_POINTS:
            raise RelayRefusal("points must be positive.")
        return int(points)

    async def _spend(self, event: EventDefinition, row: dict[str, Any], till: Till) -> Response:
        points = self._points(event)
        if event.subject is None:
            raise RelayRefusal("A spend names its member (subject).")
        member_id = await self._member(till, event.subject)
        if member_id != event.subject:
            raise RelayForbidden("A spend names the member by their id.")
        key, sent = row["event_key"], False
        try:
            async with self.guard.member(member_id):
                available = await self.guard.available(member_id)
                if available < points:
                    self.metrics.guard_refusals.labels("insufficient_points").inc()
                    raise InsufficientPoints(f"The member has {max(0, int(available))} points available.")
                settle_after = self.deliverer.window + self.client.config.read_timeout
                if not await self.store.insert_event(
                    row | {"kind": "spend", "state": "sending", "points": points, "due_in": settle_after}
                ):  # the same spend sent twice at once: the second one answers as a resend
                    existing = await self.store.event(key)
                    if existing is None:
                        raise RelayUnavailable()
                    return self._replay(existing, row)
                sent = True  # from here the engine may hear of it: written down first, settled by look-up
                try:
                    reported = await self.client.report_event(event)
                except (OutcomeUnknown, EngineProtocolError):
                    await self.store.settle(key, "unknown")
                    raise OutcomeUnknown() from None
                except TillplugError as exc:
                    await self.store.settle(key, "failed", last_error=exc.code)
                    raise
                answer = scope.trimmed(reported.model_dump(by_alias=True, exclude_none=True), scope.EVENT_FIELDS)
                await self.store.settle(key, "landed", engine_id=reported.id, answer=answer)
        except RelayUnavailable:
            if sent:  # the database went away around the engine's write: the till looks it up later
                raise OutcomeUnknown() from None
            raise
        log.info("spend %s: %d points of %s landed", key, points, mask(member_id))
        return ok(answer)

    async def _refund(self, event: EventDefinition, row: dict[str, Any], till: Till) -> Response:
        points = self._points(event)
        reverses = event.payload.get("reverses")
        if not isinstance(reverses, str) or not reverses:
            raise RefundTooLarge("A refund names the deduction it reverses (payload.reverses).")

        def limit(original: dict[str, Any]) -> int:
            if original["subject"] != event.subject:
                return -1
            return scope.may_give_back(till, original, self.config.chain_id)

        left = await self.store.insert_refund(row | {"points": points, "reverses": reverses}, limit)
        if left is None:
            existing = await self.store.event(row["event_key"])
            assert existing is not None
            return self._replay(existing, row)
        if left < 0:
            raise RefundTooLarge("The deduction this refund reverses was not reported through this relay.")
        if left < points:
            raise RefundTooLarge(f"Only {left} points of that deduction are left to give back.")
        self.deliverer.wake.set()
        stored = await self.store.event(row["event_key"])
        assert stored is not None
        return ok(_event_answer(stored))

    async def _return_move(self, event: EventDefinition, row: dict[str, Any], kind: str) -> Response:
        """A return's give-back or take-back: within what the chain reported for the sale, across tills."""
        points = self._points(event)
        if row["transaction_id"] is None:
            raise RelayRefusal("A return's points move names its sale (payload.transactionId).")
        sale = await self.sales.facts(row["transaction_id"])
        if sale.member is None or event.subject != sale.member:
            raise RelayForbidden("A return's points move names the sale's member (subject).")
        if kind == "give_back":
            cap = sale.spent
        elif sale.earn.state == "known":
            cap = sale.earn.points
        else:  # the till sends it again later (its outbox): the relay learns the earn meanwhile
            raise RelayUnavailable(f"The sale's earned points are not known yet ({sale.earn.reason}).")
        left = await self.store.insert_return_move(row | {"kind": kind, "points": points}, cap)
        if left is None:
            existing = await self.store.event(row["event_key"])
            assert existing is not None
            return self._replay(existing, row)
        if left < points:
            what = "given back (of the points spent)" if kind == "give_back" else "taken back (of the points earned)"
            raise PointsExceedSale(f"Only {max(0, left)} points of sale {row['transaction_id']} are left to be {what}.")
        self.deliverer.wake.set()
        stored = await self.store.event(row["event_key"])
        assert stored is not None
        return ok(_event_answer(stored))

    # -- a sale of the chain, for a return at any of its tills (docs/relay.md, "Returns") -----------

    async def sale(self, request: Request, till: Till) -> Response:
        return_id = request.query_params.get("returnId")
        facts = await self.sales.facts(request.path_params["tx"], till.till_id, return_id)
        return ok(facts.model_dump())

    async def register_return(self, request: Request, till: Till) -> Response:
        wanted = request_of(request.path_params["tx"], await self._body(request))
        facts = await self.sales.register(till.till_id, wanted)
        if facts.member is not None:  # the till moves this member's points for the return: in its scope now
            await self.store.saw_member(till.till_id, facts.member, [])
        log.info("return %s of sale %s registered by %s", wanted.return_id, wanted.transaction_id, till.till_id)
        return ok(facts.model_dump())

    async def _look_up(self, request: Request, till: Till, field: str) -> Response:
        """The till's own events, by eventKey or newest first: from the relay's table, never WLL's list."""
        key = request.query_params.get(f"filter[{field}]")
        skip = self._number(request, "skip", 0)
        limit = min(PAGE, max(1, self._number(request, "limit", PAGE)))
        order = field.startswith("metadata")
        if key is None:
            rows = await self.store.till_events(till.till_id, limit, skip)
            return ok([_event_answer(r) for r in rows if (r["kind"] == "order") == order])
        row = await self.store.event(key)
        if row is None or row["till_id"] != till.till_id or skip > 0 or (row["kind"] == "order") != order:
            return ok([])
        if row["kind"] == "spend":
            if row["state"] in ("sending", "unknown"):
                raise RelayUnavailable("This spend is being settled; look it up again shortly.")
            if row["state"] == "failed":
                return ok([])
        return ok([_event_answer(row)])

    async def reactions(self, request: Request, till: Till) -> Response:
        row = await self.store.event_by_engine_id(till.till_id, request.path_params["eid"])
        if row is None:
            return refusal(404, "EVENT_NOT_FOUND", "Event not found")
        if not row["engine_id"]:
            return ok([])
        reactions = await self.client.event_reactions(str(row["engine_id"]))
        return ok([r.model_dump(by_alias=True, exclude_none=True) for r in reactions])

    # -- metrics: loopback, or the metrics token -----------------------------------------------

    async def scrape(self, request: Request) -> Response:
        """Prometheus text.  Loopback scrapers need nothing (unless a proxy sits in front: then every
        request comes from it); any other needs ``[api] metrics_token``, as a Bearer token."""
        given = request.headers.get("authorization", "")
        token = (given[7:].strip() if given.lower().startswith("bearer ") else "").encode()
        expected = self.metrics_token.reveal().encode() if self.metrics_token is not None else b""
        if expected and token and hmac.compare_digest(token, expected):
            allowed = True
        else:
            host = request.client.host if request.client else ""
            allowed = self.config.api.trusted_proxy is None and is_loopback(host)
        if not allowed:
            return refusal(403, "forbidden", "Metrics are served to loopback, or with [api] metrics_token.")
        try:
            body = await self.metrics.render(self.store)
        except RelayUnavailable:
            return refusal(503, "relay_unavailable", "The relay's database cannot be reached.")
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    # -- health (no token: it says nothing about members or tills) ----------------------------

    async def health(self, request: Request) -> Response:
        try:
            version = await self.store.version()
        except RelayUnavailable:
            return JSONResponse({"status": "degraded", "database": "unreachable"}, status_code=503)
        return JSONResponse({"status": "ok", "database": "ok", "schema": version})
