"""The till-facing API: loopback HTTP + JSON, a server-sent event stream, an OpenAPI document.

Paths under /v1 are a contract with POS developers: keep them stable.
Money is integer minor units plus currency.  Every error is
``{"error": {"code": "...", "message": "..."}}`` with a stable code and a
sentence a cashier can read; a bad request changes nothing.  The routes come
from the one table in ``tillplug.api.routes``; every JSON answer is validated
against its model in ``tillplug.api.schemas`` on the way out.  Calls that change
something take an ``Idempotency-Key`` (``tillplug.api.idempotency``); streaming
answers share one cap (``max_streams``), so listeners cannot take the room short
requests need.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import dataclasses
import errno
import hmac
import json
import logging
import math
import re
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from pydantic import BaseModel, ValidationError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from tillplug.api import schemas
from tillplug.api.guard import GuardPolicy, RequestGuard
from tillplug.api.idempotency import (
    HEADER,
    IdempotencyKeyReused,
    IdempotencyStore,
    RequestInProgress,
    fingerprint,
    keeps_key,
    valid_key,
)
from tillplug.api.routes import OPERATIONS, Operation
from tillplug.display.hub import DisplayHub
from tillplug.display.page import DisplayPages
from tillplug.errors import (
    InvalidRequest,
    PrinterNotReady,
    RetryableError,
    StorageError,
    StorageFull,
    TillplugError,
)
from tillplug.flows.completion import BasketLine
from tillplug.flows.events import EventBus
from tillplug.flows.loyalty import Loyalty
from tillplug.flows.returns import ReturnedLine, ReturnRequest
from tillplug.spool import PrintSpools

log = logging.getLogger(__name__)
HEARTBEAT = 15.0
MAX_JSON_DEPTH = 32
REFUSE_ALL = GuardPolicy()  # no Host is the API's own: the daemon always passes its policy
MAX_STREAMS = 16
EVENT_ID = re.compile(r"([0-9]{1,20})-([0-9]{1,20})")  # EPOCH-N, ASCII digits only
STREAM_RETRY_AFTER = 5  # seconds a listener refused for the stream cap waits before trying again


class TooManyStreams(RetryableError):
    code = "too_many_streams"
    default_message = "Too many event streams are open; close one, or try again in a few seconds."
    http_status = 503


class DisplayKeyRefused(TillplugError):
    code = "display_key_invalid"
    default_message = "This display's address has no key, or not this lane's key (tillplug display-url prints it)."
    http_status = 403


class UnsupportedBody(InvalidRequest):
    code = "unsupported_media_type"
    default_message = "The body must be JSON, sent as Content-Type: application/json."
    http_status = 415


class StreamAnswer(StreamingResponse):
    """A streaming answer that runs its ``on_end`` callbacks however it ends: finished, the listener gone,
    or cut at shutdown (a generator that never started would never run its own ``finally``)."""

    def __init__(self, content: AsyncIterator[str], on_end: list[Callable[[], None]], **kwargs: Any) -> None:
        super().__init__(content, **kwargs)
        self.on_end = on_end

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            for end in self.on_end:
                end()


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
    """An answer as JSON-ready data: a flow's typed answer as it is, any other checked against ``model``.

    Fields left out stay out (``exclude_unset``: ``tillplug.flows.answers`` says which may be).  The
    API's own answers (health, print jobs) are dicts: fields the model does not name pass through,
    and one that does not match its model is still sent, and logged as an error: by now the work is
    done (a job queued), and a 500 would tell the till it was not.  The contract tests are where a
    mismatch fails.
    """
    if isinstance(result, BaseModel):
        return result.model_dump(mode="json", exclude_unset=True)
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
    def __init__(  # noqa: PLR0913 -- keyword-only: each is a part the daemon owns and hands over
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
        idempotency: IdempotencyStore | None = None,
        max_streams: int = MAX_STREAMS,
        display: DisplayPages | None = None,
        display_hub: DisplayHub | None = None,
        restart_readiness: Callable[[], Awaitable[dict[str, Any]]] | None = None,
    ) -> None:
        self.display = display
        self.display_hub = display_hub
        self.spools = spools
        # The daemon passes the durable store in its state directory; without one, keys last this run only.
        self.idempotency = idempotency or IdempotencyStore(":memory:")
        self.max_streams = max_streams
        self.open_streams = 0
        self._keyed_calls: set[asyncio.Task[Response]] = set()
        self.loyalty = loyalty
        self.events = events
        self.health_source = health
        self.restart_source = restart_readiness
        self.print_test_source = print_test
        self._token = token
        self.stream_epoch = int(time.time() * 1000)  # event ids are EPOCH-N, so they never repeat across restarts
        self.metrics_source = metrics
        self.starlette = Starlette(routes=self._routes(), exception_handlers={HTTPException: _http_error})
        limits = {
            (op.method, op.path): max(op.max_body_bytes, policy.max_body_bytes)
            for op in OPERATIONS
            if op.max_body_bytes
        }
        self.app = RequestGuard(self.starlette, dataclasses.replace(policy, route_body_limits=limits))

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
                if op.typed_body and "content-type" not in request.headers:
                    raise UnsupportedBody()
                body = await parse(request, op.request) if op.request is not None else None
                key = request.headers.get(HEADER) if op.idempotent else None
                if key is None:
                    return (await self._answer(op, handler, request, body))[0]
                return await self._keyed(op, handler, request, body, key)
            except Exception as exc:  # every failure answers in the error shape
                return _failure(op, exc)

        return endpoint

    async def _answer(
        self, op: Operation, handler: Callable[[Request, Any], Awaitable[Any]], request: Request, body: Any
    ) -> tuple[Response, Exception | None]:
        """The operation's answer, and the failure behind it if it failed."""
        try:
            if op.stream:
                return await self._open_stream(handler, request, body), None
            result = await handler(request, body)
            if op.response is None:
                assert isinstance(result, Response)
                return result, None
            return JSONResponse(answer(op.response, result), status_code=op.status_for(type(result))), None
        except Exception as exc:  # every failure answers in the error shape
            return _failure(op, exc), exc

    async def _open_stream(
        self, handler: Callable[[Request, Any], Awaitable[Any]], request: Request, body: Any
    ) -> StreamAnswer:
        """Every streaming operation counts against one cap: listeners never take the room short requests need."""
        if self.open_streams >= self.max_streams:
            raise TooManyStreams(
                f"{self.open_streams} event streams are open, the most this till serves; close one, or try again "
                f"in {STREAM_RETRY_AFTER} s."
            )
        self.open_streams += 1
        try:
            stream = await handler(request, body)
        except BaseException:
            self.open_streams -= 1
            raise
        assert isinstance(stream, StreamAnswer)
        stream.on_end.append(self._stream_ended)
        return stream

    def _stream_ended(self) -> None:
        self.open_streams -= 1

    async def _keyed(
        self,
        op: Operation,
        handler: Callable[[Request, Any], Awaitable[Any]],
        request: Request,
        body: Any,
        key: str,
    ) -> Response:
        """A call with an Idempotency-Key: the first runs (to its end, even if the caller gives up) and its
        answer is kept; a retry gets that answer (see ``tillplug.api.idempotency``)."""
        if not valid_key(key):
            raise InvalidRequest(f"{HEADER} is 1 to 255 visible ASCII characters (a UUID, say).")
        params = dict(request.path_params)
        checkout = params.pop("tx", None) or getattr(body, "transactionId", None) or ""
        scope = f"{op.handler} {checkout}"
        request_fingerprint = fingerprint(
            {"params": params, "body": body.model_dump(mode="json") if body is not None else None}
        )
        claim = await asyncio.to_thread(self.idempotency.claim, scope, key, request_fingerprint)
        if claim.outcome == "mismatch":
            raise IdempotencyKeyReused()
        if claim.outcome == "running":
            raise RequestInProgress()
        if claim.outcome == "replay":
            return Response(
                claim.body, claim.status, media_type="application/json", headers={"Idempotent-Replayed": "true"}
            )

        async def run_and_keep() -> Response:
            response, failure = await self._answer(op, handler, request, body)
            try:
                if keeps_key(failure):
                    await asyncio.to_thread(
                        self.idempotency.finish, scope, key, response.status_code, bytes(response.body)
                    )
                else:
                    await asyncio.to_thread(self.idempotency.release, scope, key)
            except Exception as exc:  # the call is done; only its retry cannot be answered from the store
                log.error("API %s %s: the answer under an %s could not be kept: %s", op.method, op.path, HEADER, exc)
            return response

        # Shielded: a caller that gives up must not cut the call short; its retry is answered from the store.
        task = asyncio.ensure_future(run_and_keep())
        self._keyed_calls.add(task)
        task.add_done_callback(self._keyed_calls.discard)
        return await asyncio.shield(task)

    # -- handlers: (request, parsed body) → the answer --------------------------------

    async def _health(self, request: Request, body: None) -> Any:
        return await self.health_source()

    async def _restart(self, request: Request, body: None) -> Any:
        if self.restart_source is None:  # an API without a daemon behind it cannot tell
            raise InvalidRequest("No daemon stands behind this API to say whether a restart is safe.")
        return await self.restart_source()

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
        return schemas.BenefitList(benefits=await self.loyalty.list_benefits(request.path_params["tx"]))

    async def _redeem_benefit(self, request: Request, body: schemas.RedeemBenefit) -> Any:
        return await self.loyalty.redeem_benefit(request.path_params["tx"], request.path_params["bid"], body.checkOnly)

    async def _tender(self, request: Request, body: schemas.NoBody) -> Any:
        return await self.loyalty.tender(request.path_params["tx"])

    async def _complete(self, request: Request, body: schemas.Complete) -> Any:
        return await self.loyalty.complete(
            request.path_params["tx"],
            body.total,
            [BasketLine(line.sku, line.quantity, line.amount) for line in body.basket],
            body.paymentConfirmed,
        )

    async def _void(self, request: Request, body: schemas.NoBody) -> Any:
        return await self.loyalty.void(request.path_params["tx"])

    async def _create_return(self, request: Request, body: schemas.ReturnCreate) -> Any:
        lines = tuple(ReturnedLine(line.sku, line.quantity, line.amount) for line in body.lines)
        returned = await self.loyalty.return_sale(
            ReturnRequest(body.returnId, body.transactionId, body.lane, body.amount, lines)
        )
        return returned.model_dump()

    async def _print_balance(self, request: Request, body: schemas.PrintBalance) -> Any:
        """``{job, state}`` like every print call, with the member's view the slip shows."""
        wallet = await self.loyalty.lookup(body.code, lane=body.lane, print_slip=True)
        if wallet.print is None:  # the flows told the event stream why
            raise PrinterNotReady(f"No balance slip was queued: the printer for lane {body.lane} cannot take it now.")
        seen = wallet.model_dump(exclude_unset=True, exclude={"print"})
        return schemas.BalancePrinted.model_validate({**wallet.print.model_dump(), **seen})

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
        return await self._spools().open_drawer(
            printer=body.printer, lane=body.lane, pin=body.pin, wait_for_close=body.waitForCloseSeconds
        )

    async def _drawer(self, request: Request, body: None) -> Any:
        q = request.query_params
        lane = q.get("lane")
        if lane is not None and not (lane.isascii() and lane.isdigit() and 1 <= int(lane) <= 999):
            raise InvalidRequest("lane is a number from 1 to 999.")
        return self._spools().drawer(printer=q.get("printer"), lane=int(lane) if lane is not None else None)

    # -- the customer display (its own read-only key, never the API token) -------------------

    def _display_lane(self, request: Request) -> tuple[DisplayPages, DisplayHub, int]:
        text = request.path_params["lane"]
        if not (text.isascii() and text.isdigit() and 1 <= int(text) <= 999):
            raise InvalidRequest("A lane is a number from 1 to 999.")
        if self.display is None or self.display_hub is None:
            raise InvalidRequest("This till serves no customer display.")
        lane = int(text)
        if not self.display.allowed(lane, request.query_params.get("key")):
            raise DisplayKeyRefused()
        return self.display, self.display_hub, lane

    async def _display_page(self, request: Request, body: None) -> Response:
        pages, _, lane = self._display_lane(request)
        text, headers = pages.page(lane)
        return Response(text, media_type="text/html; charset=utf-8", headers=headers)

    async def _display_stream(self, request: Request, body: None) -> Response:
        pages, hub, lane = self._display_lane(request)
        queue = hub.watch(lane)

        first = [pages.screen_data(hub.current(lane).view())]
        return StreamAnswer(
            _sse_lines(first, queue, lambda screen: pages.screen_data(screen.view())),
            [lambda: hub.unwatch(lane, queue)],
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no", "Referrer-Policy": "no-referrer"},
        )

    async def _stream(self, request: Request, body: None) -> Response:
        backlog = self._backlog(request.headers.get("last-event-id"))
        queue = self.events.subscribe()

        first = [": tillplug event stream\n\n", *(self._sse(event) for event in backlog)]
        return StreamAnswer(
            _sse_lines(first, queue, self._sse),
            [lambda: self.events.unsubscribe(queue)],
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    def _sse(self, event: Any) -> str:
        data = json.dumps(event.to_dict(), separators=(",", ":"))
        return f"id: {self.stream_epoch}-{event.id}\nevent: {event.type}\ndata: {data}\n\n"

    def _backlog(self, last_event_id: str | None) -> list[Any]:
        """What a reconnecting listener missed.  Ids are ``EPOCH-N``: N counts from 1 at each start, so an
        id from an earlier run (another epoch) means "everything since this run began", not "after N".
        So does any other value: it is not an id of this run ('<epoch>-²' or 5,000 digits once made a 500)."""
        if not last_event_id:
            return []
        given = EVENT_ID.fullmatch(last_event_id)
        if given is not None and int(given[1]) == self.stream_epoch:
            return self.events.since(int(given[2]))
        return self.events.since(0)


MAX_JOB_ID = 2**63 - 1  # SQLite's largest integer: a larger id names no job (and SQLite cannot bind it)


def _job_id(request: Request) -> int:
    try:
        job_id = int(request.path_params["id"])
    except ValueError:
        raise InvalidRequest("A print job id is a number.") from None
    if not 1 <= job_id <= MAX_JOB_ID:
        raise InvalidRequest(f"A print job id is a whole number from 1 to {MAX_JOB_ID}.")
    return job_id


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
    if isinstance(exc, ClientDisconnect):  # gone before its body came: nothing ran, nobody reads this
        log.debug("API %s %s: the client left before sending its body", op.method, op.path)
        return error_response(InvalidRequest("The body did not arrive."))
    if isinstance(exc, BodyRefused):
        return error_response(exc, exc.details)
    if isinstance(exc, TooManyStreams):
        refused = error_response(exc)
        refused.headers["Retry-After"] = str(STREAM_RETRY_AFTER)
        return refused
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


async def _sse_lines(first: list[str], queue: asyncio.Queue[Any], line: Callable[[Any], str]) -> AsyncIterator[str]:
    """A server-sent stream: ``first``, then each item of ``queue`` as ``line`` writes it, a comment
    every ``HEARTBEAT`` seconds of quiet (proxies and browsers keep the connection), until ``None``
    (the daemon is stopping)."""
    for text in first:
        yield text
    while True:
        try:
            async with asyncio.timeout(HEARTBEAT):  # wait_for's task would cost each item a loop turn
                item = await queue.get()
        except TimeoutError:
            yield ": heartbeat\n\n"
            continue
        if item is None:
            return
        yield line(item)
