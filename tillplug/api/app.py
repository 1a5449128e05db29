"""The till-facing API: loopback HTTP + JSON, a server-sent event stream, an OpenAPI document.

Paths under /v1 are a contract with POS developers: keep them stable.
Money is integer minor units plus currency.  Every error is
``{"error": {"code": "...", "message": "..."}}`` with a stable code and a
sentence a cashier can read; a bad request changes nothing.  The routes come
from the one table in ``tillplug.api.routes``; every JSON answer is validated
against its model in ``tillplug.api.schemas`` on the way out.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import errno
import hmac
import json
import logging
import math
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from pydantic import BaseModel, ValidationError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from tillplug.api import schemas
from tillplug.api.guard import GuardPolicy, RequestGuard
from tillplug.api.routes import OPERATIONS, Operation
from tillplug.errors import InvalidRequest, StorageError, StorageFull, TillplugError
from tillplug.flows.events import EventBus
from tillplug.flows.loyalty import Loyalty
from tillplug.spool import PrintSpools

log = logging.getLogger(__name__)
HEARTBEAT = 15.0
MAX_JSON_DEPTH = 32
REFUSE_ALL = GuardPolicy()  # no Host is the API's own: the daemon always passes its policy


class BodyRefused(InvalidRequest):
    """A request body the models refuse, with one entry per field at fault."""

    def __init__(self, message: str, details: list[dict[str, str]]) -> None:
        super().__init__(message)
        self.details = details


def error_response(exc: TillplugError, details: Any = None) -> JSONResponse:
    body: dict[str, Any] = {"error": exc.to_dict()}
    if details:
        body["error"]["details"] = details
    return JSONResponse(body, status_code=exc.http_status)


def _field_problems(exc: ValidationError) -> list[dict[str, str]]:
    return [
        {"field": ".".join(str(p) for p in e["loc"]) or "(body)", "problem": e["msg"]}
        for e in exc.errors(include_url=False)
    ]


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e400 reads as infinity
        raise InvalidRequest(f"The number {text[:20]} is too large.")
    return value


def _not_a_number(name: str) -> Any:
    raise InvalidRequest(f"{name} is not a JSON number; send a finite number.")


def _depth(data: Any) -> int:
    """How deeply arrays and objects nest (iteratively: no recursion on hostile input)."""
    deepest, stack = 0, [(data, 1)]
    while stack:
        value, level = stack.pop()
        if isinstance(value, dict | list):
            deepest = max(deepest, level)
            stack.extend((v, level + 1) for v in (value.values() if isinstance(value, dict) else value))
    return deepest


def strict_json(raw: bytes) -> Any:
    """JSON as RFC 8259 has it: no NaN or Infinity, every number finite, nesting bounded."""
    try:
        data = json.loads(raw, parse_constant=_not_a_number, parse_float=_finite)
    except RecursionError:
        raise InvalidRequest(f"The body nests deeper than {MAX_JSON_DEPTH} levels.") from None
    except (ValueError, UnicodeDecodeError):
        raise InvalidRequest("The body is not valid JSON.") from None
    if _depth(data) > MAX_JSON_DEPTH:
        raise InvalidRequest(f"The body nests deeper than {MAX_JSON_DEPTH} levels.")
    return data


async def parse(request: Request, model: type[BaseModel]) -> Any:
    data = strict_json(await request.body() or b"{}")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        details = _field_problems(exc)
        first = details[0]
        raise BodyRefused(f"{first['field']}: {first['problem']}.", details) from None


def answer(model: type[BaseModel], result: Any) -> Any:
    """The flows' result checked against the documented model, as JSON-ready data.

    Fields the flows left out stay out (``exclude_unset``); fields the model does not name pass through.
    An answer that does not match its model is still sent, and logged as an error: by now the work is
    done (points taken, a sale completed), and a 500 would tell the till it was not.  The contract
    tests are where a mismatch fails.
    """
    try:
        return model.model_validate(result).model_dump(mode="json", exclude_unset=True)
    except ValidationError as exc:
        first = _field_problems(exc)[0]
        log.error(
            "the answer does not match its documented model %s (%s: %s); sent as it is",
            model.__name__,
            first["field"],
            first["problem"],
        )
        return jsonable(result)


def jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


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
        policy: GuardPolicy = REFUSE_ALL,
        spools: PrintSpools | None = None,
    ) -> None:
        self.spools = spools
        self.loyalty = loyalty
        self.events = events
        self.health_source = health
        self.print_test_source = print_test
        self._token = token
        self.stream_epoch = int(time.time() * 1000)  # event ids are EPOCH-N, so they never repeat across restarts
        self.metrics_source = metrics
        self.starlette = Starlette(routes=self._routes(), exception_handlers={HTTPException: _http_error})
        self.app = RequestGuard(self.starlette, policy)

    def _routes(self) -> list[Route]:
        return [Route(op.path, self._endpoint(op), methods=[op.method]) for op in OPERATIONS]

    def _authorised(self, request: Request) -> bool:
        if self._token is None:
            return True
        header = request.headers.get("authorization", "")
        given = header[7:] if header.lower().startswith("bearer ") else ""
        return hmac.compare_digest(given.encode(), self._token.encode())

    def _endpoint(self, op: Operation) -> Callable[[Request], Awaitable[Response]]:
        handler: Callable[[Request, Any], Awaitable[Any]] = getattr(self, f"_{op.handler}")

        async def endpoint(request: Request) -> Response:
            if op.auth and not self._authorised(request):
                return _unauthorised()
            try:
                body = await parse(request, op.request) if op.request is not None else None
                result = await handler(request, body)
                if op.response is None:
                    assert isinstance(result, Response)
                    return result
                # An unknown outcome is 202: the verdict follows on /v1/events.
                pending = isinstance(result, dict) and result.get("pending") is True
                return JSONResponse(answer(op.response, result), status_code=202 if pending else op.status)
            except Exception as exc:  # every failure answers in the error shape
                return _failure(op, exc)

        return endpoint

    # -- handlers: (request, parsed body) → the answer --------------------------------

    async def _health(self, request: Request, body: None) -> Any:
        return await self.health_source()

    async def _openapi(self, request: Request, body: None) -> Any:
        from tillplug.api.openapi import document

        return document()

    async def _metrics(self, request: Request, body: None) -> Response:
        if self.metrics_source is None:
            return Response("metrics are not enabled\n", 404)
        text, ctype = self.metrics_source()
        return Response(text, media_type=ctype)

    async def _lookup(self, request: Request, body: None) -> Any:
        return await self.loyalty.lookup(request.path_params["code"])

    async def _open_checkout(self, request: Request, body: schemas.CheckoutCreate) -> Any:
        return await self.loyalty.open_checkout(body.transactionId, body.lane, body.cashierId)

    async def _get_checkout(self, request: Request, body: None) -> Any:
        return self.loyalty.get_checkout(request.path_params["tx"])

    async def _attach_member(self, request: Request, body: schemas.MemberAttach) -> Any:
        return await self.loyalty.attach_member(request.path_params["tx"], body.code, body.entry)

    async def _spend_points(self, request: Request, body: schemas.SpendPoints) -> Any:
        return await self.loyalty.spend_points(request.path_params["tx"], body.points)

    async def _apply_voucher(self, request: Request, body: schemas.VoucherApply) -> Any:
        return await self.loyalty.apply_voucher(request.path_params["tx"], body.code, body.checkOnly)

    async def _list_benefits(self, request: Request, body: None) -> Any:
        return {"benefits": await self.loyalty.list_benefits(request.path_params["tx"])}

    async def _redeem_benefit(self, request: Request, body: schemas.RedeemBenefit) -> Any:
        return await self.loyalty.redeem_benefit(request.path_params["tx"], request.path_params["bid"], body.checkOnly)

    async def _tender(self, request: Request, body: schemas.NoBody) -> Any:
        return await self.loyalty.tender(request.path_params["tx"])

    async def _complete(self, request: Request, body: schemas.Complete) -> Any:
        return await self.loyalty.complete(
            request.path_params["tx"], body.total, [line.model_dump() for line in body.basket], body.paymentConfirmed
        )

    async def _void(self, request: Request, body: schemas.NoBody) -> Any:
        return await self.loyalty.void(request.path_params["tx"])

    async def _print_balance(self, request: Request, body: schemas.PrintBalance) -> Any:
        return await self.loyalty.lookup(body.code, lane=body.lane, print_slip=True)

    async def _print_test(self, request: Request, body: schemas.PrintTest) -> Any:
        return await self.print_test_source(body.printer)

    # -- the print spool -------------------------------------------------------------

    def _spools(self) -> PrintSpools:
        if self.spools is None:
            raise InvalidRequest("This till has no print spool.")
        return self.spools

    async def _list_print_jobs(self, request: Request, body: None) -> Any:
        q = request.query_params
        try:
            limit = max(1, min(1000, int(q.get("limit", "100"))))
        except ValueError:
            raise InvalidRequest("limit is a number.") from None
        jobs = await self._spools().jobs(printer=q.get("printer"), state=q.get("state"), limit=limit)
        return {"jobs": [j.to_dict() for j in jobs]}

    async def _get_print_job(self, request: Request, body: None) -> Any:
        return (await self._spools().job(_job_id(request))).to_dict()

    async def _cancel_print_job(self, request: Request, body: None) -> Any:
        return await self._spools().cancel(_job_id(request))

    async def _reprint(self, request: Request, body: schemas.NoBody) -> Any:
        return await self._spools().reprint(_job_id(request))

    async def _print_raw(self, request: Request, body: schemas.PrintRaw) -> Any:
        try:
            data = base64.b64decode(body.data, validate=True)
        except (binascii.Error, ValueError):
            raise InvalidRequest("data must be base64.") from None
        if len(data) > schemas.MAX_RAW_BYTES:
            raise InvalidRequest(f"data is over {schemas.MAX_RAW_BYTES} bytes.")
        return await self._spools().submit_raw(data, printer=body.printer, lane=body.lane)

    async def _open_drawer(self, request: Request, body: schemas.DrawerOpen) -> Any:
        return await self._spools().open_drawer(printer=body.printer, lane=body.lane, pin=body.pin)

    async def _stream(self, request: Request, body: None) -> Response:
        queue = self.events.subscribe()
        backlog = self._backlog(request.headers.get("last-event-id"))

        async def stream() -> AsyncIterator[str]:
            try:
                yield ": tillplug event stream\n\n"
                for event in backlog:
                    yield self._sse(event)
                while True:
                    try:
                        item = await asyncio.wait_for(queue.get(), HEARTBEAT)
                    except TimeoutError:
                        yield ": heartbeat\n\n"
                        continue
                    if item is None:  # the daemon is stopping
                        return
                    yield self._sse(item)
            finally:
                self.events.unsubscribe(queue)

        return StreamingResponse(
            stream(), media_type="text/event-stream", headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
        )

    def _sse(self, event: Any) -> str:
        data = json.dumps(event.to_dict(), separators=(",", ":"))
        return f"id: {self.stream_epoch}-{event.id}\nevent: {event.type}\ndata: {data}\n\n"

    def _backlog(self, last_event_id: str | None) -> list[Any]:
        """What a reconnecting listener missed.  Ids are ``EPOCH-N``: N counts from 1 at each start, so an
        id from an earlier run (another epoch) means "everything since this run began", not "after N"."""
        if not last_event_id:
            return []
        epoch, _, seq = last_event_id.partition("-")
        if epoch == str(self.stream_epoch) and seq.isdigit():
            return self.events.since(int(seq))
        return self.events.since(0)


def _job_id(request: Request) -> int:
    try:
        return int(request.path_params["id"])
    except ValueError:
        raise InvalidRequest("A print job id is a number.") from None


def storage_failure(exc: BaseException) -> StorageError | None:
    """A failed write to the till's own disk, in the error tree (None if ``exc`` is something else)."""
    if isinstance(exc, sqlite3.OperationalError | sqlite3.DatabaseError):
        code = getattr(exc, "sqlite_errorcode", None)
        if code == sqlite3.SQLITE_FULL:
            return StorageFull()
        if code in (sqlite3.SQLITE_IOERR, sqlite3.SQLITE_READONLY, sqlite3.SQLITE_CANTOPEN, sqlite3.SQLITE_CORRUPT):
            return StorageError()
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return StorageFull()
    return None


def _failure(op: Operation, exc: Exception) -> JSONResponse:
    if (storage := storage_failure(exc)) is not None:
        log.error("API %s %s: the outbox could not be written (%s): %s", op.method, op.path, storage.code, exc)
        return error_response(storage)
    if isinstance(exc, BodyRefused):
        return error_response(exc, exc.details)
    if isinstance(exc, TillplugError):
        return error_response(exc)
    log.exception("API %s %s failed", op.method, op.path, exc_info=exc)
    return error_response(TillplugError())


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
