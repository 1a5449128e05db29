"""The flows on their own, against the simulator: no daemon, no HTTP API, no devices.

``Harness`` builds a ``Loyalty`` with a real engine client, outbox and checkout
store in a state directory; ``Tamper`` sits between the client and the simulator
and changes what the engine answers, to play engines that answer otherwise.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx

from tillplug.config.model import Config
from tillplug.engine import EngineClient, load_secrets
from tillplug.engine.http1 import Http1Transport
from tillplug.flows.loyalty import Loyalty
from tillplug.outbox import Deliverer, OutboxStore
from tillplug.sim import SimServer

ALICE = "5a1b2c3d-0000-4000-8000-000000000001"
BOB = "5a1b2c3d-0000-4000-8000-000000000002"

# (request, forward) -> response.  ``forward`` sends the request to the simulator.
Hook = Callable[[httpx.Request, Callable[[], Awaitable[httpx.Response]]], Awaitable[httpx.Response]]


def body_of(request: httpx.Request) -> dict[str, Any]:
    try:
        data = json.loads(request.content or b"{}")
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def is_spend(request: httpx.Request) -> bool:
    return (
        request.method == "POST"
        and request.url.path.rstrip("/").endswith("/events")
        and (body_of(request).get("type") == "REDEEMED_POINTS")
    )


def is_burn(request: httpx.Request) -> bool:
    return (
        request.method == "POST"
        and request.url.path.endswith("/commands/validate_voucher")
        and "allowFutureValidation" not in body_of(request)
    )


class Tamper(httpx.AsyncBaseTransport):
    """A real transport to the simulator, with hooks that rewrite, delay or cut chosen exchanges."""

    def __init__(self) -> None:
        self.inner: httpx.AsyncBaseTransport = Http1Transport()  # the one the daemon uses
        self.hooks: list[tuple[Callable[[httpx.Request], bool], Hook]] = []
        self.seen: list[str] = []

    def on(self, match: Callable[[httpx.Request], bool], hook: Hook, *, times: int = 1) -> None:
        """Apply ``hook`` to the next ``times`` requests that ``match``."""
        left = [times]

        def counted(request: httpx.Request) -> bool:
            if left[0] > 0 and match(request):
                left[0] -= 1
                return True
            return False

        self.hooks.append((counted, hook))

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.seen.append(f"{request.method} {request.url.path}")

        async def forward() -> httpx.Response:
            response = await self.inner.handle_async_request(request)
            await response.aread()
            return response

        for match, hook in self.hooks:
            if match(request):
                return await hook(request, forward)
        return await forward()

    async def aclose(self) -> None:
        await self.inner.aclose()


async def answer_2xx(request: httpx.Request, forward: Callable[[], Awaitable[httpx.Response]]) -> httpx.Response:
    """The engine does the work and answers 200 in a shape tillplug cannot read."""
    await forward()
    return httpx.Response(200, json={"status": "success", "data": {"accepted": True}})


async def reset_after(request: httpx.Request, forward: Callable[[], Awaitable[httpx.Response]]) -> httpx.Response:
    """The engine does the work; the connection drops before the answer arrives."""
    await forward()
    raise httpx.ReadError("connection reset by peer", request=request)


async def reset_before(request: httpx.Request, forward: Callable[[], Awaitable[httpx.Response]]) -> httpx.Response:
    """The request is lost on its way: the engine never sees it, the client cannot tell."""
    raise httpx.ReadError("connection reset by peer", request=request)


def held_in_flight(
    in_flight: asyncio.Event, seconds: float = 0.3
) -> Callable[[httpx.Request, Callable[[], Awaitable[httpx.Response]]], Awaitable[httpx.Response]]:
    """A tamper handler: says the request is in flight, then holds it ``seconds`` before it goes on
    (for racing a second call against a write the engine has not answered yet)."""

    async def slow(request: httpx.Request, forward: Callable[[], Awaitable[httpx.Response]]) -> httpx.Response:
        in_flight.set()
        await asyncio.sleep(seconds)
        return await forward()

    return slow


def config(state_dir: Path, sim_url: str, **overrides: Any) -> Config:
    return Config.model_validate(
        {
            "till_id": overrides.pop("till_id", "till-01"),
            "branch_id": "branch-0001",
            "state_dir": str(state_dir),
            "cache_dir": str(state_dir / "cache"),
            "engine": {
                "preset": "simulator",
                "base_url": sim_url + "/v1",
                "auth_url": sim_url + "/oauth/token",
                "receipts_url": sim_url + "/receipts/v1",
                "read_timeout": 2.0,
                "connect_timeout": 1.0,
                **overrides.pop("engine", {}),
            },
            "receipts": {"points_slip": False, "voucher_receipt": False, "sale_summary": False},
            **overrides,
        }
    )


class Harness:
    """One till's flows on ``state_dir``; ``close`` and build again to restart on the same state."""

    def __init__(self, state_dir: Path, sim: SimServer, *, tamper: Tamper | None = None, **overrides: Any) -> None:
        self.state_dir = state_dir
        self.sim = sim
        self.tamper = tamper or Tamper()
        self.config = config(state_dir, sim.url, **overrides)
        self.store = OutboxStore(state_dir / "outbox.sqlite3")
        # Calibrated as `tillplug engine-check` would have left it against this simulator's dialect.
        self.client = EngineClient(
            self.config.engine,
            load_secrets(self.config.engine),
            transport=self.tamper,
            dialect=sim.sim.dialect.answers(),
        )
        self.deliverer = Deliverer(self.store, self.client, rate=1000, burst=1000)
        self.loyalty = Loyalty(self.config, self.client, self.store, wake_outbox=self.deliverer.wake)
        self.deliverer.on_not_applied = self.loyalty.points.saw_not_applied  # as the daemon wires it
        self.published: list[tuple[str, dict[str, Any]]] = []
        original = self.loyalty.events.publish

        def record(type_: str, data: dict[str, Any] | None = None, *, lane: int | None = None) -> Any:
            self.published.append((type_, dict(data or {})))
            return original(type_, data, lane=lane)

        self.loyalty.events.publish = record  # type: ignore[method-assign]

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [d for t, d in self.published if t == kind]

    async def drain(self, timeout: float = 10) -> bool:
        return await self.deliverer.drain(timeout)

    async def close(self) -> None:
        await self.client.aclose()
        self.store.close()


async def settled_balance(sim: SimServer, member: str, expected: float, timeout: float = 5) -> float:
    """The member's balance once the simulator's asynchronous reactions reach ``expected`` (or the timeout)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        balance = float(sim.state.members[member]["pointsBalance"])
        if balance == expected:
            return balance
        await asyncio.sleep(0.02)
    return float(sim.state.members[member]["pointsBalance"])
