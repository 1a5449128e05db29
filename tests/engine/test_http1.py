"""The engine's HTTP/1.1 transport against servers that misbehave as real ones do: answers in
pieces, kept-alive connections the server closes, answers cut short, silence, garbage, TLS."""

import asyncio
import ssl
from collections.abc import Awaitable, Callable

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.certs import self_signed
from tillplug.config.loader import Secret
from tillplug.config.model import EngineConfig
from tillplug.engine import EngineClient, EngineSecrets
from tillplug.engine.http1 import MAX_BODY, Http1Transport

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def read_request(reader: asyncio.StreamReader) -> bytes:
    """One request's head and body (Content-Length only: what httpx sends)."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    return head + (await reader.readexactly(length) if length else b"")


def answer(body: bytes, *, close: bool = False) -> bytes:
    extra = b"Connection: close\r\n" if close else b""
    return b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n%s\r\n%s" % (
        len(body),
        extra,
        body,
    )


class Server:
    """A loopback server whose every connection runs ``handler``; counts the connections."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.server: asyncio.Server | None = None

    async def __aenter__(self) -> "Server":
        async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.connections += 1
            try:
                await self.handler(reader, writer)
            except (asyncio.IncompleteReadError, ConnectionError):
                pass
            finally:
                writer.close()

        self.server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"


def client(transport: Http1Transport, base: str, timeout: float = 2.0) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=transport, base_url=base, timeout=timeout)


async def keep_answering(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    for _ in range(50):  # bounded: a test makes a few requests
        request = await read_request(reader)
        writer.write(answer(b'{"n": %d}' % len(request)))
        await writer.drain()


def test_requests_share_one_kept_alive_connection_and_bodies_arrive_whole():
    async def go():
        async with Server(keep_answering) as server:
            async with client(Http1Transport(), server.url) as http:
                first = await http.get("/v1/users/1")
                second = await http.post("/v1/events", json={"type": "x", "n": 1})
            assert first.status_code == second.status_code == 200
            assert second.json()["n"] > first.json()["n"]  # the POST's body reached the server
            assert server.connections == 1

    asyncio.run(go())


def sends(raw: bytes) -> Handler:
    """A connection that takes one request, sends ``raw``, and is closed."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(raw)
        await writer.drain()

    return handler


def test_a_connection_the_engine_closed_while_idle_is_not_reused():
    async def go():
        async with Server(sends(answer(b"{}"))) as server:
            async with client(Http1Transport(), server.url) as http:
                for _ in range(3):
                    assert (await http.get("/v1/x")).status_code == 200
                    await asyncio.sleep(0.05)  # the close reaches the client's loop
            assert server.connections == 3

    asyncio.run(go())


def test_connection_close_answers_and_expired_idle_connections_are_not_reused():
    async def closing(reader, writer):
        for _ in range(5):
            await read_request(reader)
            writer.write(answer(b"{}", close=True))
            await writer.drain()

    async def go():
        async with Server(closing) as server:
            async with client(Http1Transport(), server.url) as http:
                await http.get("/a")
                await http.get("/b")
            assert server.connections == 2
        async with Server(keep_answering) as server:
            async with client(Http1Transport(keepalive_expiry=0.05), server.url) as http:
                await http.get("/a")
                await asyncio.sleep(0.1)
                await http.get("/b")
            assert server.connections == 2

    asyncio.run(go())


def racing_close_server(answered: list[bytes]) -> Handler:
    """The first connection answers once, then takes the next request and closes without a word
    (an engine timing out an idle connection just as the till reuses it)."""

    async def handler(reader, writer):
        first = not answered
        answered.append(await read_request(reader))
        writer.write(answer(b"{}"))
        await writer.drain()
        if first:
            answered.append(await read_request(reader))  # taken, never answered
            return
        for _ in range(5):
            answered.append(await read_request(reader))
            writer.write(answer(b"{}"))
            await writer.drain()

    return handler


def test_a_read_on_a_connection_closed_under_it_is_asked_again_once_a_write_is_not():
    async def go():
        seen: list[bytes] = []
        async with Server(racing_close_server(seen)) as server:
            async with client(Http1Transport(), server.url) as http:
                await http.get("/v1/users/1")
                assert (await http.get("/v1/users/2")).status_code == 200  # asked again on a new connection
            assert server.connections == 2
        seen.clear()
        async with Server(racing_close_server(seen)) as server:
            async with client(Http1Transport(), server.url) as http:
                await http.get("/v1/users/1")
                with pytest.raises(httpx.RemoteProtocolError, match="without an answer"):
                    await http.post("/v1/events", json={"a": 1})  # may have been taken: never sent twice
            assert server.connections == 1
            assert sum(b"POST" in r for r in seen) == 1

    asyncio.run(go())


def test_an_answer_cut_short_silence_and_garbage_are_transport_errors():
    cut = sends(b'HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{"partial')
    garbage = sends(b"<html>Bad Gateway</html>\r\n\r\n")

    async def silent(reader, writer):
        await read_request(reader)
        await asyncio.sleep(5)

    async def huge(reader, writer):
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        chunk = b"x" * 1024 * 1024
        for _ in range(MAX_BODY // len(chunk) + 2):
            writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            await writer.drain()

    async def go():
        for handler, error, words in (
            (cut, httpx.RemoteProtocolError, "middle of its answer"),
            (silent, httpx.ReadTimeout, "timed out"),
            (garbage, httpx.RemoteProtocolError, "not HTTP/1.1"),
            (huge, httpx.RemoteProtocolError, "larger than"),
        ):
            async with Server(handler) as server, client(Http1Transport(), server.url, timeout=0.3) as http:
                with pytest.raises(error, match=words):
                    await http.get("/v1/x")

    asyncio.run(go())


def test_no_engine_listening_is_a_connect_error():
    async def go():
        async with Server(keep_answering) as server:
            url = server.url
        async with client(Http1Transport(), url) as http:
            with pytest.raises(httpx.ConnectError):
                await http.get("/v1/x")

    asyncio.run(go())


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    body=st.binary(max_size=3000),
    chunked=st.booleans(),
    cuts=st.lists(st.integers(min_value=1, max_value=4000), max_size=6),
)
def test_an_answer_arriving_in_any_pieces_reads_as_sent(body, chunked, cuts):
    """The engine's proxies split answers anywhere: Content-Length or chunked, in any number of writes."""
    if chunked:
        pieces = [body[i : i + 700] for i in range(0, len(body), 700)]
        wire = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        wire += b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"
    else:
        wire = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    points = sorted({c for c in cuts if c < len(wire)})

    async def in_pieces(reader, writer):
        for _ in range(2):
            await read_request(reader)
            for start, end in zip([0, *points], [*points, len(wire)], strict=True):
                writer.write(wire[start:end])
                await writer.drain()
                await asyncio.sleep(0)

    async def go():
        async with Server(in_pieces) as server:
            async with client(Http1Transport(), server.url) as http:
                for _ in range(2):  # and the connection is fit for the next one
                    assert (await http.get("/v1/x")).content == body
            assert server.connections == 1

    asyncio.run(go())


def test_tls_is_always_verified(tmp_path):
    cert, key = self_signed(tmp_path, "engine")
    served = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    served.load_cert_chain(cert, key)

    async def go():
        server = await asyncio.start_server(keep_answering, "127.0.0.1", 0, ssl=served)
        url = f"https://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        try:
            async with client(Http1Transport(), url) as http:
                with pytest.raises(httpx.ConnectError, match="certificate"):  # not a CA the till trusts
                    await http.get("/v1/x")
            trusted = ssl.create_default_context(cafile=str(cert))
            async with client(Http1Transport(verify=trusted), url) as http:
                assert (await http.get("/v1/x")).status_code == 200
        finally:
            server.close()

    asyncio.run(go())
    with pytest.raises(ValueError, match="always on"):
        Http1Transport(verify=False)


def test_with_a_proxy_configured_the_engine_client_goes_through_it():
    """The shop's proxy gets every request in absolute form (httpx's own transport, not this one)."""
    seen: list[bytes] = []
    user = b'{"status": "success", "data": {"id": "wll-1", "accountNumber": "1000001", "status": "ACTIVE"}}'
    token = b'{"access_token": "t0ken", "token_type": "Bearer", "expires_in": 86400}'

    async def proxy(reader, writer):
        for _ in range(2):
            request = await read_request(reader)
            seen.append(request.split(b"\r\n", 1)[0])
            writer.write(answer(token if b"/oauth/token" in seen[-1] else user))
            await writer.drain()

    async def go():
        async with Server(proxy) as server:
            config = EngineConfig(
                base_url="http://localhost:9/v1", api_key="/k", client_id="/i", client_secret="/s", proxy=server.url
            )
            secrets = EngineSecrets(api_key=Secret("k"), client_id=Secret("c"), client_secret=Secret("s"))
            async with EngineClient(config, secrets) as client:
                assert (await client.get_user("1000001")).id == "wll-1"

    asyncio.run(go())  # nothing listens on localhost:9: the answers came through the proxy
    assert seen == [
        b"POST http://localhost:9/oauth/token HTTP/1.1",
        b"GET http://localhost:9/v1/users/1000001 HTTP/1.1",
    ]


def test_the_tls_context_is_built_at_the_first_tls_connection_or_the_warm_up(monkeypatch, tmp_path):
    """Reading the CA bundle takes ~20 ms: not before READY=1, and never for an http:// engine."""
    built: list[int] = []
    real = httpx.create_ssl_context

    def counted(*args, **kwargs):
        built.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(httpx, "create_ssl_context", counted)
    secrets = EngineSecrets(api_key=Secret("k"), client_id=Secret("c"), client_secret=Secret("s"))

    async def go():
        async with Server(keep_answering) as server:
            plain = EngineClient(
                EngineConfig(base_url=server.url + "/v1", api_key="/k", client_id="/i", client_secret="/s"), secrets
            )
            plain.warm_up()
            async with client(Http1Transport(), server.url) as http:
                assert (await http.get("/v1/x")).status_code == 200
            await plain.aclose()
        assert built == []  # an http:// engine: no context, at start or ever
        tls = EngineClient(
            EngineConfig(base_url="https://127.0.0.1:9/v1", api_key="/k", client_id="/i", client_secret="/s"), secrets
        )
        assert built == []  # not at start
        tls.warm_up()
        tls.warm_up()
        assert built == [1]  # once ready, once
        await tls.aclose()

    asyncio.run(go())
