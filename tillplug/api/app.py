"""The till-facing API: loopback HTTP + JSON, a server-sent event stream, an OpenAPI document.

Paths under /v1 are a contract with POS developers: keep them stable.
Money is integer minor units plus currency.  Every error is
``{"error": {"code": "...", "message": "..."}}`` with a stable code and a
sentence a cashier can read; a bad request changes nothing.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from tillplug.errors import InvalidRequest, TillplugError
from tillplug.flows.events import EventBus
from tillplug.flows.loyalty import Loyalty

log = logging.getLogger(__name__)
HEARTBEAT = 15.0


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class CheckoutCreate(Body):
    transactionId: str = Field(min_length=1, max_length=64)
    lane: int = Field(default=1, ge=1, le=999)
    cashierId: str | None = Field(default=None, min_length=1, max_length=64)


class MemberAttach(Body):
    code: str = Field(min_length=1, max_length=512)


class SpendPoints(Body):
    points: int = Field(gt=0)


class VoucherApply(Body):
    code: str = Field(min_length=1, max_length=128)
    checkOnly: bool | None = None


class RedeemBenefit(Body):
    checkOnly: bool | None = None


class BasketLine(Body):
    sku: str = Field(min_length=1, max_length=64)
    quantity: float = Field(gt=0)
    amount: int


class Complete(Body):
    total: int = Field(ge=0)
    basket: list[BasketLine] = Field(default_factory=list, max_length=500)
    paymentConfirmed: bool


class PrintBalance(Body):
    code: str = Field(min_length=1, max_length=512)
    lane: int = Field(default=1, ge=1, le=999)


class PrintTest(Body):
    printer: str | None = None


def error_response(exc: TillplugError, details: Any = None) -> JSONResponse:
    body: dict[str, Any] = {"error": exc.to_dict()}
    if details:
        body["error"]["details"] = details
    return JSONResponse(body, status_code=exc.http_status)


async def parse(request: Request, model: type[BaseModel]) -> Any:
    raw = await request.body()
    try:
        data = json.loads(raw or b"{}")
    except ValueError:
        raise InvalidRequest("The body is not valid JSON.") from None
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        details = [
            {"field": ".".join(str(p) for p in e["loc"]) or "(body)", "problem": e["msg"]}
            for e in exc.errors(include_url=False)
        ]
        first = details[0]
        raise InvalidRequest(f"{first['field']}: {first['problem']}.", details) from None


Handler = Callable[[Request], Awaitable[Any]]


class TillApi:
    def __init__(
        self,
        loyalty: Loyalty,
        events: EventBus,
        *,
        health: Callable[[], Awaitable[dict[str, Any]]],
        print_test: Callable[[str | None], Awaitable[dict[str, Any]]],
        token: str | None = None,
        metrics: Callable[[], tuple[bytes, str]] | None = None,
    ) -> None:
        self.loyalty = loyalty
        self.events = events
        self.health = health
        self.print_test = print_test
        self._token = token
        self._metrics = metrics
        self.app = Starlette(routes=self._routes(), exception_handlers={HTTPException: _http_error})

    def _routes(self) -> list[Route]:
        r = self._wrap
        L = self.loyalty
        return [
            Route("/v1/health", r(self._health), methods=["GET"]),
            Route("/v1/events", self._stream, methods=["GET"]),
            Route("/v1/openapi.json", r(self._openapi, auth=False), methods=["GET"]),
            Route("/metrics", self._metrics_endpoint, methods=["GET"]),
            Route("/v1/members/{code}", r(lambda q: L.lookup(q.path_params["code"])), methods=["GET"]),
            Route("/v1/checkouts", r(self._create, status=201), methods=["POST"]),
            Route("/v1/checkouts/{tx}", r(lambda q: _sync(L.get_checkout(q.path_params["tx"]))), methods=["GET"]),
            Route("/v1/checkouts/{tx}/member", r(self._member), methods=["PUT"]),
            Route("/v1/checkouts/{tx}/points", r(self._points), methods=["POST"]),
            Route("/v1/checkouts/{tx}/vouchers", r(self._voucher), methods=["POST"]),
            Route(
                "/v1/checkouts/{tx}/benefits",
                r(lambda q: _wrap_list(L.list_benefits(q.path_params["tx"]))),
                methods=["GET"],
            ),
            Route("/v1/checkouts/{tx}/benefits/{bid}/redeem", r(self._redeem), methods=["POST"]),
            Route("/v1/checkouts/{tx}/tender", r(lambda q: L.tender(q.path_params["tx"])), methods=["POST"]),
            Route("/v1/checkouts/{tx}/complete", r(self._complete), methods=["POST"]),
            Route("/v1/checkouts/{tx}/void", r(lambda q: L.void(q.path_params["tx"])), methods=["POST"]),
            Route("/v1/print/balance", r(self._print_balance), methods=["POST"]),
            Route("/v1/print/test", r(self._print_test), methods=["POST"]),
        ]

    def _authorised(self, request: Request) -> bool:
        if self._token is None:
            return True
        header = request.headers.get("authorization", "")
        given = header[7:] if header.lower().startswith("bearer ") else ""
        return hmac.compare_digest(given.encode(), self._token.encode())

    def _wrap(
        self, handler: Handler, *, status: int = 200, auth: bool = True
    ) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            if auth and not self._authorised(request):
                return _unauthorised()
            try:
                result = await handler(request)
            except TillplugError as exc:
                return error_response(exc, exc.details if isinstance(exc, InvalidRequest) else None)
            except Exception:
                log.exception("API %s %s failed", request.method, request.url.path)
                return error_response(TillplugError())
            if isinstance(result, dict) and result.get("pending") is True:
                return JSONResponse(result, status_code=202)  # an unknown outcome: the verdict comes on /v1/events
            return JSONResponse(result, status_code=status)

        return endpoint

    # -- handlers ------------------------------------------------------------------

    async def _health(self, request: Request) -> Any:
        return await self.health()

    async def _openapi(self, request: Request) -> Any:
        from tillplug.api.openapi import document

        return document()

    async def _metrics_endpoint(self, request: Request) -> Response:
        if not self._authorised(request):
            return _unauthorised()
        if self._metrics is None:
            return Response("metrics are not enabled\n", 404)
        body, ctype = self._metrics()
        return Response(body, media_type=ctype)

    async def _create(self, request: Request) -> Any:
        body = await parse(request, CheckoutCreate)
        return await self.loyalty.open_checkout(body.transactionId, body.lane, body.cashierId)

    async def _member(self, request: Request) -> Any:
        body = await parse(request, MemberAttach)
        return await self.loyalty.attach_member(request.path_params["tx"], body.code)

    async def _points(self, request: Request) -> Any:
        body = await parse(request, SpendPoints)
        return await self.loyalty.spend_points(request.path_params["tx"], body.points)

    async def _voucher(self, request: Request) -> Any:
        body = await parse(request, VoucherApply)
        return await self.loyalty.apply_voucher(request.path_params["tx"], body.code, body.checkOnly)

    async def _redeem(self, request: Request) -> Any:
        body = await parse(request, RedeemBenefit)
        return await self.loyalty.redeem_benefit(request.path_params["tx"], request.path_params["bid"], body.checkOnly)

    async def _complete(self, request: Request) -> Any:
        body = await parse(request, Complete)
        return await self.loyalty.complete(
            request.path_params["tx"], body.total, [line.model_dump() for line in body.basket], body.paymentConfirmed
        )

    async def _print_balance(self, request: Request) -> Any:
        body = await parse(request, PrintBalance)
        return await self.loyalty.lookup(body.code, lane=body.lane, print_slip=True)

    async def _print_test(self, request: Request) -> Any:
        body = await parse(request, PrintTest)
        return await self.print_test(body.printer)

    async def _stream(self, request: Request) -> Response:
        if not self._authorised(request):
            return _unauthorised()
        try:
            last_id = int(request.headers.get("last-event-id", "0"))
        except ValueError:
            last_id = 0
        queue = self.events.subscribe()
        backlog = self.events.since(last_id) if last_id else []

        async def stream() -> Any:
            try:
                yield ": tillplug event stream\n\n"
                for missed in backlog:
                    yield _sse(missed)
                while True:
                    try:
                        event = await asyncio.wait_for(queue.get(), HEARTBEAT)
                    except TimeoutError:
                        yield ": heartbeat\n\n"
                        continue
                    if event is None:  # the daemon is stopping
                        return
                    yield _sse(event)
            finally:
                self.events.unsubscribe(queue)

        return StreamingResponse(
            stream(), media_type="text/event-stream", headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
        )


def _unauthorised() -> JSONResponse:
    return JSONResponse(
        {"error": {"code": "unauthorized", "message": "A valid API token is required."}},
        status_code=401,
        headers={"WWW-Authenticate": "Bearer"},
    )


async def _http_error(request: Request, exc: Exception) -> Response:
    """Unknown paths and wrong methods answer in the same JSON shape as every other error."""
    assert isinstance(exc, HTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "bad_request")
    message = {
        404: f"There is no {request.url.path} in the till API (see /v1/openapi.json).",
        405: f"{request.method} is not allowed on {request.url.path}.",
    }.get(exc.status_code, str(exc.detail))
    return JSONResponse(
        {"error": {"code": code, "message": message}},
        status_code=exc.status_code,
        headers=getattr(exc, "headers", None),
    )


def _sse(event: Any) -> str:
    return f"id: {event.id}\nevent: {event.type}\ndata: {json.dumps(event.to_dict(), separators=(',', ':'))}\n\n"


async def _sync(value: Any) -> Any:
    return value


async def _wrap_list(coro: Awaitable[list[Any]]) -> dict[str, Any]:
    return {"benefits": await coro}
