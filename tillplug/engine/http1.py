"""HTTP/1.1 to the engine on asyncio's own transports, under httpx's client.

httpx's default async transport (httpcore on anyio) spends about 0.45 ms of CPU per request on a
till: a liveness probe of the socket (``getpeername`` and ``poll``) before every reuse, anyio's
stream layers and a pool built for HTTP/2 and proxies.  A till talks HTTP/1.1 to one engine host a
few requests at a time, and on the scan → slip path that cost is a third of what the cashier waits
for (docs/performance.md).  Here asyncio's protocol callbacks tell us when the engine closes a
kept-alive connection, so no probe is needed, and h11 (httpcore's own HTTP/1.1 parser) frames
each message.  The engine client keeps httpx's own transport when a proxy is configured.

Failures are httpx's exceptions (``ConnectError``, ``ConnectTimeout``, ``ReadTimeout``,
``ReadError``, ``RemoteProtocolError``), so the engine client translates them as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time

import h11
import httpx

MAX_BODY = 32 * 1024 * 1024  # an engine answer is kilobytes; past this it is not one
MAX_HEADERS = 64 * 1024


class _ClosedUnanswered(httpx.RemoteProtocolError):
    """The connection ended before any byte of an answer."""


class _Connection(asyncio.Protocol):
    """One TCP (or TLS) connection: h11's state, fed by asyncio's callbacks."""

    def __init__(self) -> None:
        self.h11 = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEADERS)
        self.transport: asyncio.Transport | None = None
        self.lost: BaseException | None = None
        self.closed = False
        self.idle_since = 0.0
        self._waiter: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        with contextlib.suppress(RuntimeError):  # bytes after the engine closed: nobody reads them
            self.h11.receive_data(data)
        self._wake()

    def eof_received(self) -> bool:
        self._end()
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = exc
        self._end()

    def _end(self) -> None:
        if not self.closed:
            self.closed = True
            with contextlib.suppress(RuntimeError):
                self.h11.receive_data(b"")
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def readable(self, timeout: float | None) -> None:
        """Until more bytes came, the engine closed, or ``timeout`` passed (``TimeoutError``)."""
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            async with asyncio.timeout(timeout):
                await self._waiter
        finally:
            self._waiter = None

    def reusable(self, now: float, expiry: float) -> bool:
        return not self.closed and self.h11.our_state is h11.IDLE and now - self.idle_since < expiry

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
        self.closed = True


class Http1Transport(httpx.AsyncBaseTransport):
    """Keep-alive connections to the engine's origins, at most ``max_connections`` at once."""

    def __init__(
        self,
        *,
        verify: ssl.SSLContext | bool = True,
        max_connections: int = 32,
        max_keepalive: int = 8,
        keepalive_expiry: float = 60.0,
    ) -> None:
        if verify is False:
            raise ValueError("TLS verification is always on")
        self._given = verify if isinstance(verify, ssl.SSLContext) else None
        # Built at the first TLS connection (or by tls_context): loading the CA bundle takes ~20 ms,
        # which start-up, and an http:// engine, never need.
        self._ssl: ssl.SSLContext | None = None
        self._idle: dict[tuple[str, str, int], list[_Connection]] = {}
        self._slots = asyncio.Semaphore(max_connections)
        self._max_keepalive = max_keepalive
        self._expiry = keepalive_expiry

    def tls_context(self) -> ssl.SSLContext:
        """What TLS connections verify with: the context given, else httpx's default (certifi's CAs)."""
        if self._ssl is None:
            context = self._given or httpx.create_ssl_context(trust_env=False)
            context.set_alpn_protocols(["http/1.1"])
            self._ssl = context
        return self._ssl

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        timeouts = request.extensions.get("timeout", {})
        try:
            async with asyncio.timeout(timeouts.get("pool")):
                await self._slots.acquire()
        except TimeoutError:
            raise httpx.PoolTimeout("no free connection to the engine", request=request) from None
        try:
            origin = (request.url.scheme, request.url.host, request.url.port or _default_port(request.url.scheme))
            conn = self._reuse(origin)
            try:
                if conn is None:
                    conn = await self._connect(origin, timeouts.get("connect"), request)
                    answer = await self._exchange(conn, request, timeouts.get("read"))
                else:
                    try:
                        answer = await self._exchange(conn, request, timeouts.get("read"))
                    except _ClosedUnanswered:
                        # The engine closed this idle connection as we reused it.  A read is asked
                        # again on a new one; a write is not (it may have been taken: the caller's
                        # rules for an unknown outcome decide).
                        if request.method not in ("GET", "HEAD"):
                            raise
                        conn.close()
                        conn = await self._connect(origin, timeouts.get("connect"), request)
                        answer = await self._exchange(conn, request, timeouts.get("read"))
            except BaseException:
                if conn is not None:
                    conn.close()
                raise
            self._release(origin, conn)
        finally:
            self._slots.release()
        return answer.response(request)

    async def aclose(self) -> None:
        for idle in self._idle.values():
            for conn in idle:
                conn.close()
        self._idle.clear()

    def _reuse(self, origin: tuple[str, str, int]) -> _Connection | None:
        idle = self._idle.get(origin)
        now = time.monotonic()
        while idle:
            conn = idle.pop()  # the most recently used: the least likely to have timed out at the engine
            if conn.reusable(now, self._expiry):
                return conn
            conn.close()
        return None

    def _release(self, origin: tuple[str, str, int], conn: _Connection) -> None:
        if conn.h11.our_state is h11.DONE and conn.h11.their_state is h11.DONE and not conn.closed:
            conn.h11.start_next_cycle()
            conn.idle_since = time.monotonic()
            idle = self._idle.setdefault(origin, [])
            idle.append(conn)
            if len(idle) > self._max_keepalive:
                idle.pop(0).close()
        else:  # "Connection: close", or an answer cut short
            conn.close()

    async def _connect(
        self, origin: tuple[str, str, int], timeout: float | None, request: httpx.Request
    ) -> _Connection:
        scheme, host, port = origin
        tls = scheme == "https"
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                _, conn = await loop.create_connection(
                    _Connection,
                    host,
                    port,
                    ssl=self.tls_context() if tls else None,
                    server_hostname=host if tls else None,
                    ssl_handshake_timeout=timeout if tls else None,
                )
        except TimeoutError:
            raise httpx.ConnectTimeout(f"timed out connecting to {host}:{port}", request=request) from None
        except (OSError, ssl.SSLError) as exc:  # refused, unreachable, no such host, a certificate not trusted
            raise httpx.ConnectError(f"cannot connect to {host}:{port}: {exc}", request=request) from exc
        return conn

    async def _exchange(self, conn: _Connection, request: httpx.Request, timeout: float | None) -> _Answer:
        out = _encode(conn, request, await request.aread())
        if conn.closed:
            raise _ClosedUnanswered("the engine closed the connection", request=request)
        assert conn.transport is not None
        conn.transport.write(out)
        answer = _Answer()
        while True:
            try:
                event = conn.h11.next_event()
            except h11.RemoteProtocolError as exc:
                if conn.closed:  # h11's word for a stream that ended early
                    raise _cut_short(conn, answer, request) from exc
                raise httpx.RemoteProtocolError(f"the engine's answer is not HTTP/1.1: {exc}", request=request) from exc
            if event is h11.NEED_DATA:
                if conn.closed:  # the stream ended and h11 still needs bytes: cut short
                    raise _cut_short(conn, answer, request)
                try:
                    await conn.readable(timeout)
                except TimeoutError:
                    raise httpx.ReadTimeout("timed out waiting for the engine's answer", request=request) from None
            elif isinstance(event, h11.EndOfMessage):
                return answer
            elif isinstance(event, h11.ConnectionClosed):
                raise _cut_short(conn, answer, request)
            elif isinstance(event, h11.Event):
                answer.take(event, request)
            else:  # PAUSED: a protocol switch, nothing an engine does
                raise httpx.RemoteProtocolError("the engine switched protocols", request=request)


class _Answer:
    """An answer as h11 hands it over: the head, then the body's pieces."""

    def __init__(self) -> None:
        self.head: h11.Response | None = None
        self.chunks: list[bytes] = []
        self.size = 0

    def take(self, event: h11.Event, request: httpx.Request) -> None:
        if isinstance(event, h11.Response):
            self.head = event
        elif isinstance(event, h11.Data):
            self.size += len(event.data)
            if self.size > MAX_BODY:
                raise httpx.RemoteProtocolError("the engine's answer is larger than any it sends", request=request)
            self.chunks.append(bytes(event.data))
        # h11.InformationalResponse (a 100 Continue): read on

    def response(self, request: httpx.Request) -> httpx.Response:
        assert self.head is not None
        return httpx.Response(
            self.head.status_code,
            headers=list(self.head.headers),
            stream=httpx.ByteStream(b"".join(self.chunks)),
            extensions={"http_version": b"HTTP/1.1", "reason_phrase": bytes(self.head.reason)},
            request=request,
        )


def _encode(conn: _Connection, request: httpx.Request, body: bytes) -> bytes:
    headers = list(request.headers.raw)
    names = {name.lower() for name, _ in headers}
    if body and b"content-length" not in names and b"transfer-encoding" not in names:
        headers.append((b"Content-Length", str(len(body)).encode()))
    try:
        out = conn.h11.send(h11.Request(method=request.method, target=request.url.raw_path, headers=headers)) or b""
        if body:
            out += conn.h11.send(h11.Data(data=body)) or b""
        return out + (conn.h11.send(h11.EndOfMessage()) or b"")
    except h11.LocalProtocolError as exc:
        raise httpx.LocalProtocolError(str(exc), request=request) from exc


def _cut_short(conn: _Connection, answer: _Answer, request: httpx.Request) -> httpx.TransportError:
    if conn.lost is not None:  # reset: the request may or may not have been taken
        return httpx.ReadError(f"connection to the engine lost: {conn.lost}", request=request)
    if answer.head is None:
        return _ClosedUnanswered("the engine closed the connection without an answer", request=request)
    return httpx.RemoteProtocolError("the engine closed the connection in the middle of its answer", request=request)


def _default_port(scheme: str) -> int:
    return 443 if scheme == "https" else 80
