"""The till API's front door: what a web page in the till's own browser must not be able to do.

A browser on the till visits other sites.  Any page can send requests to 127.0.0.1 (a "simple"
``text/plain`` POST needs no CORS preflight), and a DNS-rebinding page can even read the answers,
because to the browser the API is then the page's own origin.  So, before any route runs:

* ``Host`` must name the API itself (127.0.0.1:PORT, localhost:PORT, [::1]:PORT, the listen
  address, or a name in ``api.allowed_hosts``): a rebound name is refused;
* a request with an ``Origin`` is refused unless that origin is in ``api.allowed_origins``
  (a web POS served from there gets correct CORS answers, preflight included);
* a body must say ``Content-Type: application/json`` (no simple cross-site form or text POST);
* on a connection the server let in beyond its cap (every other one busy), only ``GET /v1/health``;
* a body larger than ``api.max_body_bytes`` is refused from its ``Content-Length`` before it is
  read, and a chunked one as soon as it grows past the limit.  A route may have a larger limit of
  its own (``POST /v1/print/raw``: a receipt of up to 1 MiB, base64).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field

from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger(__name__)
RESERVED = "tillplug.reserved"  # set by the server on a connection let in beyond its cap: /v1/health only

CORS_METHODS = ("GET", "POST", "PUT")
CORS_HEADERS = ("Authorization", "Content-Type", "Idempotency-Key", "Last-Event-ID")
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")


def allowed_host_headers(listen_host: str, port: int, names: Iterable[str] = ()) -> frozenset[str]:
    """Every ``Host`` header value that means "this API": loopback names, the listen address, configured names."""
    host = f"[{listen_host}]" if ":" in listen_host else listen_host
    values = {f"{name}:{port}" for name in (*LOOPBACK_NAMES, host)}
    for given in names:
        name = given.lower()
        # "till-07.shop.lan" means that name on the API's port; "till-07.shop.lan:80" (a proxy) as given.
        values.add(name if name.rpartition(":")[2].isdigit() and not name.endswith("]") else f"{name}:{port}")
    return frozenset(v.lower() for v in values)


@dataclass(frozen=True)
class GuardPolicy:
    hosts: Collection[str] = ()  # Host header values, from allowed_host_headers(); empty refuses every request
    origins: Collection[str] = ()
    max_body_bytes: int = 64 * 1024
    body_timeout: float = 10.0  # seconds to send the whole body once the head is in
    # (method, path) → a body limit of that route's own, instead of max_body_bytes
    route_body_limits: Mapping[tuple[str, str], int] = field(default_factory=dict)


@dataclass(frozen=True)
class Refusal(Exception):
    status: int
    code: str
    message: str


class RequestGuard:
    """ASGI middleware in front of the till API (see the module docstring)."""

    def __init__(
        self,
        app: ASGIApp,
        policy: GuardPolicy,
    ) -> None:
        self.app = app
        self.hosts = frozenset(h.lower() for h in policy.hosts)
        self.origins = frozenset(o.rstrip("/").lower() for o in policy.origins)
        self.max_body_bytes = policy.max_body_bytes
        self.route_body_limits = dict(policy.route_body_limits)
        self.body_timeout = policy.body_timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = _headers(scope)
        origin = headers.get("origin")
        try:
            if scope.get(RESERVED) and (scope["method"], scope["path"]) != ("GET", "/v1/health"):
                raise Refusal(503, "server_busy", "Every connection to the till API is busy; try again in a moment.")
            self._check_host(headers.get("host"))
            if origin is not None and origin.rstrip("/").lower() not in self.origins:
                raise Refusal(
                    403,
                    "origin_not_allowed",
                    f"Requests from web pages at {origin[:100]} are not allowed (api.allowed_origins).",
                )
            if origin is not None and scope["method"] == "OPTIONS" and "access-control-request-method" in headers:
                await self._preflight(headers, origin, send)
                return
            receive = await self._body(scope, headers, receive)
        except Refusal as refusal:
            await _refuse(send, refusal, origin if origin and origin.lower() in self.origins else None)
            return
        if origin is None:
            await self.app(scope, receive, send)
            return

        async def send_with_cors(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *_cors_headers(origin)]
            await send(message)

        await self.app(scope, receive, send_with_cors)

    def _check_host(self, host: str | None) -> None:
        if host is None or host.lower() not in self.hosts:
            raise Refusal(
                403,
                "host_not_allowed",
                "This API answers only to its own address (add the name to api.allowed_hosts).",
            )

    async def _preflight(self, headers: dict[str, str], origin: str, send: Send) -> None:
        asked = headers["access-control-request-method"].upper()
        if asked not in CORS_METHODS:
            raise Refusal(405, "method_not_allowed", f"{asked[:20]} is not allowed from a web page.")
        extra = [(b"access-control-max-age", b"600")]
        if headers.get("access-control-request-private-network") == "true":  # Chrome's private network access
            extra.append((b"access-control-allow-private-network", b"true"))
        await send(
            {
                "type": "http.response.start",
                "status": 204,
                "headers": [
                    *_cors_headers(origin),
                    (b"access-control-allow-methods", ", ".join(CORS_METHODS).encode()),
                    (b"access-control-allow-headers", ", ".join(CORS_HEADERS).encode()),
                    *extra,
                ],
            }
        )
        await send({"type": "http.response.body", "body": b""})

    async def _body(self, scope: Scope, headers: dict[str, str], receive: Receive) -> Receive:
        """Check the body's type and size, read it (bounded), and hand the app a receive that replays it."""
        length_header = headers.get("content-length")
        chunked = "transfer-encoding" in headers
        try:
            length = int(length_header) if length_header is not None else 0
        except ValueError:
            raise Refusal(400, "invalid_request", "Content-Length is not a number.") from None
        if length == 0 and not chunked and "content-type" not in headers:
            return receive  # no body: GET, or a POST such as void
        ctype = headers.get("content-type", "")
        media, _, params = ctype.partition(";")
        charset = params.strip().lower().removeprefix("charset=").strip('"') if "charset" in params.lower() else ""
        if media.strip().lower() != "application/json" or charset not in ("", "utf-8"):
            raise Refusal(
                415, "unsupported_media_type", "The body must be JSON, sent as Content-Type: application/json."
            )
        limit = self.route_body_limits.get((scope["method"], scope["path"]), self.max_body_bytes)
        if length > limit:
            raise Refusal(413, "body_too_large", f"The body is larger than {limit} bytes.")
        try:
            async with asyncio.timeout(self.body_timeout):
                return await self._read(receive, limit)
        except TimeoutError:
            raise Refusal(408, "request_timeout", "The body did not arrive in time.") from None

    async def _read(self, receive: Receive, limit: int) -> Receive:
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return _replay([], message, receive)
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise Refusal(413, "body_too_large", f"The body is larger than {limit} bytes.")
            chunks.append(chunk)
            more = message.get("more_body", False)
        return _replay(chunks, None, receive)


def _replay(chunks: list[bytes], last: Message | None, receive: Receive) -> Receive:
    pending: list[Message] = [{"type": "http.request", "body": b"".join(chunks), "more_body": False}]
    if last is not None:
        pending = [last]

    async def replay() -> Message:
        if pending:
            return pending.pop(0)
        return await receive()  # after the body: the disconnect, when it comes

    return replay


def _headers(scope: Scope) -> dict[str, str]:
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}


def _cors_headers(origin: str) -> list[tuple[bytes, bytes]]:
    return [
        (b"access-control-allow-origin", origin.encode("latin-1")),
        (b"access-control-expose-headers", b"Idempotent-Replayed, Retry-After"),  # a web POS may read them
        (b"vary", b"Origin"),
    ]


async def _refuse(send: Send, refusal: Refusal, origin: str | None) -> None:
    body = json.dumps({"error": {"code": refusal.code, "message": refusal.message}}).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        # Unread body bytes may follow: the connection cannot be reused.
        (b"connection", b"close"),
    ]
    if origin is not None:
        headers += _cors_headers(origin)
    log.debug("refused a request: %s", refusal.code)
    await send({"type": "http.response.start", "status": refusal.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
