"""One relay process: the store, the engine client behind the chain's pacer, the app, the outbox.

Also what the ``tillplug relay`` verbs run (migrate, enrol, revoke), each one short-lived.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx

from tillplug.engine import EngineClient, load_secrets
from tillplug.engine.traffic import OUTBOX, current_use_case, parse_retry_after
from tillplug.errors import RateLimited
from tillplug.relay.app import RelayApp
from tillplug.relay.config import RelayConfig
from tillplug.relay.deliver import Deliverer
from tillplug.relay.guard import Guard
from tillplug.relay.metrics import RelayMetrics
from tillplug.relay.pacing import Pacer
from tillplug.relay.store import Store
from tillplug.relay.tokens import Tokens

log = logging.getLogger(__name__)


class PacedTransport(httpx.AsyncBaseTransport):
    """Every request to WLL takes a token from the chain's bucket first; a WLL 429 stops the chain."""

    def __init__(self, pacer: Pacer, inner: httpx.AsyncBaseTransport | None = None, *, outbox_wait: float = 10) -> None:
        self.pacer = pacer
        self.outbox_wait = outbox_wait  # a delivery waits this long for a token, then is tried again later
        self.inner = inner or httpx.AsyncHTTPTransport()
        self.engine_429s = 0
        self.failing = False
        self.on_back: Callable[[], Awaitable[None]] | None = None

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if current_use_case() == OUTBOX:
            waited = 0.0
            while (wait := await self.pacer.outbox()) > 0:
                if waited >= self.outbox_wait:
                    raise RateLimited(retry_after=wait)
                await asyncio.sleep(min(wait, 1.0))
                waited += min(wait, 1.0)
        else:
            await self.pacer.cashier()
        try:
            response = await self.inner.handle_async_request(request)
        except httpx.TransportError:
            self.failing = True
            raise
        if response.status_code >= 500:
            self.failing = True
        elif response.status_code < 400 and self.failing:
            self.failing = False
            if self.on_back is not None:  # the engine answers again: what waited for it goes now (paced)
                await self.on_back()
        if response.status_code == 429:
            self.engine_429s += 1
            retry_after = parse_retry_after(response.headers.get("Retry-After")) or 1.0
            log.warning("WLL answered 429: the chain waits %.1f s", retry_after)
            await self.pacer.engine_said_wait(retry_after)
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()


@dataclass
class Relay:
    config: RelayConfig
    store: Store
    client: EngineClient
    pacer: Pacer
    transport: PacedTransport
    tokens: Tokens
    deliverer: Deliverer
    web: RelayApp
    metrics: RelayMetrics


@asynccontextmanager
async def relay(config: RelayConfig, *, wait: float = 10) -> AsyncIterator[Relay]:
    """The relay's parts, opened; closed on exit."""
    store = Store(config.database)
    await store.open(wait=wait)
    pacer = Pacer(store, config.pacing)
    transport = PacedTransport(pacer, outbox_wait=config.outbox.lease / 3)
    metrics = RelayMetrics()
    client = EngineClient(config.engine, load_secrets(config.engine), transport=transport, on_call=metrics.engine_call)
    client.on_failure = metrics.engine_failure
    try:
        await pacer.ensure()
        tokens = Tokens(store)
        deliverer = Deliverer(store, client, lease=config.outbox.lease, metrics=metrics)
        transport.on_back = deliverer.engine_back
        guard = Guard(store, client, wait=config.guard.spend_wait, metrics=metrics)
        web = RelayApp(config, store, client, tokens, guard, deliverer, metrics=metrics)
        yield Relay(config, store, client, pacer, transport, tokens, deliverer, web, metrics)
    finally:
        await client.aclose()
        await store.close()


async def serve(config: RelayConfig) -> None:
    """``tillplug relay run``: serve until SIGTERM/SIGINT, delivering the outbox meanwhile."""
    import uvicorn

    from tillplug.net import listen

    class _Server(uvicorn.Server):
        """uvicorn inside our loop; the relay owns the signals."""

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            yield

    async with relay(config) as parts:
        version = await parts.store.version()
        if version == 0:
            raise SystemExit("the relay's database has no tables yet: run `tillplug relay migrate --config FILE`")
        sock = listen(config.api.host, config.api.port, backlog=1024)
        kwargs: dict[str, object] = {}
        if config.api.tls_cert and config.api.tls_key:
            kwargs = {"ssl_certfile": config.api.tls_cert, "ssl_keyfile": config.api.tls_key}
            kwargs["ssl_version"] = ssl.PROTOCOL_TLS_SERVER
        server = _Server(
            uvicorn.Config(
                parts.web.app,
                log_level="warning",
                access_log=False,
                lifespan="off",
                timeout_keep_alive=30,
                proxy_headers=False,
                **kwargs,  # type: ignore[arg-type]
            )
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        outbox = asyncio.create_task(parts.deliverer.run(stop), name="relay-outbox")
        web = asyncio.create_task(server.serve(sockets=[sock]), name="relay-api")
        print(f"tillplug relay on {config.api.listen} (schema {version})", flush=True)
        await stop.wait()
        server.should_exit = True
        with contextlib.suppress(Exception):
            await asyncio.wait_for(web, timeout=10)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(outbox, timeout=10)
        sock.close()


async def migrate(config: RelayConfig) -> list[int]:
    store = Store(config.database)
    await store.open()
    try:
        return await store.migrate()
    finally:
        await store.close()


async def enrol(config: RelayConfig, till_id: str, branch_id: str) -> str:
    store = Store(config.database)
    await store.open()
    try:
        return await Tokens(store).enrol(till_id, branch_id)
    finally:
        await store.close()


async def outbox(config: RelayConfig, action: str, event_key: str | None, attempts: int) -> Any:
    """``tillplug relay outbox``: list the rows that need a human, retry one now, or drop one."""
    store = Store(config.database, min_size=1)
    await store.open()
    try:
        if action == "list":
            return await store.stuck(attempts)
        assert event_key is not None
        found = await (store.retry_now(event_key) if action == "retry" else store.drop(event_key))
        return found, await store.event(event_key)
    finally:
        await store.close()


async def revoke(config: RelayConfig, till_id: str) -> bool:
    store = Store(config.database)
    await store.open()
    try:
        return await Tokens(store).revoke(till_id)
    finally:
        await store.close()
