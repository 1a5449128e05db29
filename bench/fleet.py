"""A fleet of tills on one tenant key, on a virtual clock: does the outbox drain a backlog
at the rate the tenant's limit leaves, without a 429 storm and without starving cashiers?

    python -m bench.fleet --tills 5000 --outage 3600 [--quick] [--seed 1]

Every till runs tillplug's own outbox code: the ``Deliverer`` (claim, send, the decision on
each answer, the row's next attempt) with its adaptive ``Pacer`` and the ``Traffic`` signal
its interactive calls set, all on one asyncio loop whose clock is virtual, so an hour of
trading runs in seconds.  What is modelled instead of run:

* the outbox store: in memory, with the SQLite store's claim order (due time, then id);
* the engine: the tenant's limiter (a token bucket, 100/s with a burst of 400, shared by
  every till; 429 with ``Retry-After: 1``, the whole seconds until a token is free), a round
  trip of ``--rtt`` seconds, and an outage during which every call answers 503;
* the cashier's calls: each use case is its number of engine requests, sent with the engine
  client's retry policy (``max_attempts`` tries; a 429/503 waits ``Retry-After`` up to 4 s);
* a day of sales: every till has its own busyness (a gamma distribution: busy city stores and
  quiet ones), sales arrive as a Poisson process, 60 % by members; a member's sale is a
  look-up, sometimes a points spend or a voucher, and a completion that queues one outbox row.

The last line printed is one JSON object:
``{"tills", "outage_s", "backlog", "drain_s", "min_drain_s", "rate_429", "interactive_success",
"p99_interactive_wait_s"}`` where ``backlog`` is the rows waiting when the engine comes back,
``drain_s`` the time until the last of them is delivered, ``min_drain_s`` the backlog over
the rate the limiter has left once the cashiers' calls are served (measured over the drain;
the sales made meanwhile queue behind the backlog, first in, first out), ``rate_429`` the
share of the requests that reached the limiter during the drain that were answered 429, and
the interactive figures those of the cashiers' calls made while the engine was up (the wait
is what rate limiting added).
``--quick`` simulates a window around the outage; without it, a whole trading day.
"""

from __future__ import annotations

import argparse
import asyncio
import heapq
import json
import math
import random
import selectors
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from tillplug.engine.client import MAX_BACKOFF, _backoff
from tillplug.engine.models import Event, EventDefinition
from tillplug.engine.traffic import OUTBOX, Traffic, use_case
from tillplug.errors import EngineServerError, RateLimited
from tillplug.outbox import Deliverer, Pacer, PacingPolicy, Row

TENANT_RATE = 100.0
TENANT_BURST = 400
MAX_ATTEMPTS = 2  # the engine client's default
MEMBER_SHARE = 0.6
# Engine requests per use case as the flows make them today (see the round-trip table).
USE_CASES = {"lookup": 2, "spend": 3, "voucher": 1, "balance": 2}
SPEND_SHARE, VOUCHER_SHARE, BALANCE_PER_SALE = 0.08, 0.05, 0.03


# -- a loop whose clock is virtual ------------------------------------------------------


class _JumpingSelector(selectors.DefaultSelector):
    """Never blocks: when nothing is ready the virtual clock jumps to the next timer."""

    def __init__(self, clock: VirtualClock) -> None:
        super().__init__()
        self.clock = clock

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        ready = super().select(0)
        if not ready and timeout:
            self.clock.now += timeout
        return ready


class VirtualClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class VirtualLoop(asyncio.SelectorEventLoop):
    def __init__(self, clock: VirtualClock) -> None:
        super().__init__(_JumpingSelector(clock))
        self.clock = clock

    def time(self) -> float:
        return self.clock.now


async def _inline(func: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
    """The in-memory store needs no thread (and a thread would not see the virtual clock)."""
    return func(*args, **kwargs)


# -- the outbox store, in memory ---------------------------------------------------------


class MemoryStore:
    """What the Deliverer uses of OutboxStore, with its claim order: due time, then id."""

    def __init__(self, clock: VirtualClock, on_delivered: Callable[[Row], None]) -> None:
        self.clock = clock
        self.on_delivered = on_delivered
        self.due: list[tuple[float, int]] = []
        self.rows: dict[int, Row] = {}
        self.next_id = 1

    def add(self, body: dict[str, Any], event_key: str) -> None:
        now = self.clock()
        row = Row(
            id=self.next_id,
            event_key=event_key,
            kind="event",
            stream=event_key,
            body=body,
            requires_key=None,
            state="pending",
            needs_lookup=False,
            attempts=0,
            next_attempt=now,
            last_error=None,
            engine_id=None,
            note=None,
            created=now,
            updated=now,
        )
        self.next_id += 1
        self.rows[row.id] = row
        heapq.heappush(self.due, (now, row.id))

    def recover(self) -> int:
        return 0

    def claim(self) -> Row | None:
        if not self.due or self.due[0][0] > self.clock():
            return None
        _, row_id = heapq.heappop(self.due)
        row = replace(self.rows[row_id], state="sending", attempts=self.rows[row_id].attempts + 1)
        self.rows[row_id] = row
        return row

    def claim_batch(
        self,
        limit: int,
        *,
        delivered: Sequence[tuple[int, str | None]] = (),
        unsent: Sequence[int] = (),
    ) -> list[Row]:
        for row_id, engine_id in delivered:
            self.delivered(row_id, engine_id=engine_id)
        for row_id in unsent:
            given_back = self.rows[row_id]
            self.rows[row_id] = replace(given_back, state="pending", attempts=given_back.attempts - 1)
            heapq.heappush(self.due, (given_back.next_attempt, row_id))
        claimed: list[Row] = []
        while len(claimed) < limit and (row := self.claim()) is not None:
            claimed.append(row)
        return claimed

    def delivered(self, row_id: int, *, engine_id: str | None = None, note: str | None = None) -> None:
        self.on_delivered(self.rows.pop(row_id))

    def retry_later(self, row_id: int, *, at: float, error: str, needs_lookup: bool) -> None:
        row = self.rows[row_id]
        self.rows[row_id] = replace(row, state="pending", next_attempt=at, last_error=error, needs_lookup=needs_lookup)
        heapq.heappush(self.due, (at, row_id))

    def release_waiting(self, now: float) -> int:
        waiting = [row_id for at, row_id in self.due if at > now]
        self.due = [(now if at > now else at, row_id) for at, row_id in self.due]
        heapq.heapify(self.due)
        return len(waiting)

    def dead(self, row_id: int, *, error: str) -> None:
        raise AssertionError(f"no row should die in the fleet benchmark: {error}")

    def next_due(self) -> float | None:
        return self.due[0][0] if self.due else None

    def backlog(self, before: float) -> tuple[int, int]:
        return len(self.rows), sum(1 for row in self.rows.values() if row.created < before)

    @property
    def depth(self) -> int:
        return len(self.rows)


# -- the engine: the tenant's limiter, a round trip, an outage ---------------------------------


@dataclass
class Tenant:
    clock: VirtualClock
    outage: tuple[float, float]
    rate: float = TENANT_RATE
    burst: int = TENANT_BURST
    tokens: float = TENANT_BURST
    stamp: float = 0.0
    log: list[tuple[float, str, int]] = field(default_factory=list)  # (time, use case, status)

    def answer(self, name: str) -> tuple[int, float | None]:
        """The status the engine answers one request with, and its Retry-After."""
        now = self.clock()
        if self.outage[0] <= now < self.outage[1]:
            return 503, None
        self.tokens = min(float(self.burst), self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1:
            self.tokens -= 1
            self.log.append((now, name, 200))
            return 200, None
        self.log.append((now, name, 429))
        return 429, float(math.ceil((1 - self.tokens) / self.rate))


class TillEngine:
    """One till's engine client, as the Deliverer and the cashier's calls see it."""

    def __init__(self, tenant: Tenant, traffic: Traffic, rtt: float, rng: random.Random) -> None:
        self.tenant, self.traffic, self.rtt, self.rng = tenant, traffic, rtt, rng

    async def _request(self, name: str) -> tuple[int, float | None]:
        self.traffic.request(name)
        await asyncio.sleep(self.rtt)
        status, retry_after = self.tenant.answer(name)
        self.traffic.answered(status, retry_after, name)
        return status, retry_after

    async def report_event(self, event: EventDefinition) -> Event:
        status, retry_after = await self._request(OUTBOX)
        if status == 429:
            raise RateLimited(retry_after=retry_after)
        if status == 503:
            raise EngineServerError()
        return Event(id=f"ev-{event.event_key}", type=event.type, payload=event.payload)

    async def interactive(self, name: str, requests: int) -> tuple[bool, float]:
        """A cashier's call of ``requests`` sequential engine requests; (succeeded, seconds spent waiting)."""
        waited = 0.0
        for _ in range(requests):
            for attempt in range(1, MAX_ATTEMPTS + 1):
                status, retry_after = await self._request(name)
                if status == 200:
                    break
                if attempt == MAX_ATTEMPTS:
                    return False, waited
                pause = min(retry_after, MAX_BACKOFF) if retry_after is not None else _backoff(attempt)
                waited += pause
                await asyncio.sleep(pause)
        return True, waited


# -- tills and their sales -------------------------------------------------------------------


@dataclass
class Results:
    interactive: list[tuple[float, bool, float]] = field(default_factory=list)  # (start, ok, waited)
    delivered_backlog: int = 0
    last_backlog_delivery: float = 0.0
    new_rows_after_return: list[float] = field(default_factory=list)
    backlog_deliveries: list[float] = field(default_factory=list)


class Till:
    def __init__(
        self, index: int, busyness: float, tenant: Tenant, *, share: float, rtt: float, rng: random.Random, sim: Fleet
    ) -> None:
        self.index, self.busyness, self.sim, self.rng = index, busyness, sim, rng
        self.clock = tenant.clock
        self.traffic = Traffic(self.clock)
        self.engine = TillEngine(tenant, self.traffic, rtt, rng)
        self.store = MemoryStore(self.clock, sim.delivered)
        policy = PacingPolicy(share=share, **sim.policy)
        pacer = Pacer(policy, clock=self.clock, rng=rng, traffic=self.traffic)
        self.deliverer = Deliverer(self.store, self.engine, pacer=pacer, clock=self.clock)  # type: ignore[arg-type]
        self.sales = 0

    async def trading(self, stop: asyncio.Event, sales_per_hour: Callable[[float], float]) -> None:
        while not stop.is_set():
            rate = sales_per_hour(self.clock()) * self.busyness / 3600
            await asyncio.sleep(self.rng.expovariate(rate) if rate > 0 else 60)
            if self.rng.random() < BALANCE_PER_SALE:
                self.sim.spawn(self.cashier("balance"))
            if self.rng.random() < MEMBER_SHARE:
                self.sim.spawn(self.member_sale())

    async def cashier(self, name: str) -> bool:
        start = self.clock()
        with use_case(name):
            ok, waited = await self.engine.interactive(name, USE_CASES[name])
        if self.sim.engine_up(start):
            self.sim.results.interactive.append((start, ok, waited))
        return ok

    async def member_sale(self) -> None:
        await self.cashier("lookup")
        if self.rng.random() < SPEND_SHARE:
            await self.cashier("spend")
        if self.rng.random() < VOUCHER_SHARE:
            await self.cashier("voucher")
        self.sales += 1
        key = f"t{self.index}-{self.sales}"
        self.store.add({"type": "TRANSACTION", "payload": {"eventKey": key}}, key)
        self.sim.queued(self.clock())
        self.deliverer.wake()


def quick_profile(_t: float) -> float:
    return 24.0  # sales per till-hour of an average till around midday


def day_profile(start_hour: float) -> Callable[[float], float]:
    """Sales per till-hour over a trading day: a morning rise, a lunch peak, an evening peak."""

    def rate(t: float) -> float:
        hour = start_hour + t / 3600
        lunch = math.exp(-(((hour - 12.5) / 1.5) ** 2))
        evening = 0.8 * math.exp(-(((hour - 17.5) / 1.5) ** 2))
        return 30.0 * max(0.15, 0.25 + lunch + evening) / 1.25

    return rate


class Fleet:
    def __init__(self, args: argparse.Namespace, clock: VirtualClock) -> None:
        self.args = args
        self.clock = clock
        self.spawned: set[asyncio.Future[Any]] = set()
        self.last_by_till: dict[str, float] = {}
        # The chain opts in to tills taking what quieter tills leave ([outbox] above_share).
        self.policy: dict[str, Any] = {"ceiling": args.above_share}
        self.policy.update({k: float(v) for k, v in (item.split("=", 1) for item in args.policy)})
        self.rng = random.Random(args.seed)
        warmup = 600.0 if args.quick else 4 * 3600.0  # the whole day opens at 08:00, the outage at 12:00
        self.outage = (warmup, warmup + args.outage)
        self.tenant = Tenant(self.clock, self.outage)
        self.profile = quick_profile if args.quick else day_profile(8.0)
        self.results = Results()
        self.before_return: set[int] = set()
        self.backlog = 0
        share = args.share or TENANT_RATE / args.tills
        self.figures_set = not args.dashboard
        self.tills = [
            Till(
                i,
                self.rng.gammavariate(args.spread, 1 / args.spread),
                self.tenant,
                share=share,
                rtt=args.rtt,
                rng=random.Random(self.rng.random()),
                sim=self,
            )
            for i in range(args.tills)
        ]

    def spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self.spawned.add(task)
        task.add_done_callback(self.spawned.discard)

    def engine_up(self, t: float) -> bool:
        return not (self.outage[0] <= t < self.outage[1])

    def queued(self, t: float) -> None:
        if t < self.outage[1]:
            self.backlog += 1
        else:
            self.results.new_rows_after_return.append(t)

    def delivered(self, row: Row) -> None:
        if row.created < self.outage[1]:
            self.results.delivered_backlog += 1
            self.results.last_backlog_delivery = self.clock()
            self.results.backlog_deliveries.append(self.clock())
            self.last_by_till[row.stream.split("-")[0]] = self.clock()

    def drained(self) -> bool:
        return self.clock() > self.outage[1] and self.results.delivered_backlog >= self.backlog

    async def run(self) -> dict[str, Any]:
        stop = asyncio.Event()
        tasks: list[asyncio.Future[Any]] = [asyncio.ensure_future(t.deliverer.run(stop)) for t in self.tills]
        tasks += [asyncio.ensure_future(t.trading(stop, self.profile)) for t in self.tills]
        backlog_at_return = 0
        end_cap = self.outage[1] + 4 * max(self.args.outage, 900.0)
        while self.clock() < end_cap:
            await asyncio.sleep(10)
            if not self.figures_set and self.clock() >= self.outage[0]:
                self.read_dashboard()
            if backlog_at_return == 0 and self.clock() >= self.outage[1]:
                backlog_at_return = sum(t.store.depth for t in self.tills)
            if self.drained() and (self.args.quick or self.clock() > 12 * 3600):
                break
        stop.set()
        tasks += list(self.spawned)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        return self.report(backlog_at_return)

    def read_dashboard(self) -> None:
        """What a chain's operator copies off the fleet dashboard into every till's config before the
        outage: the average interactive requests/s and outbox writes/s per till, measured over the
        time before it (``fleet_interactive_per_second``, ``fleet_writes_per_second``)."""
        self.figures_set = True
        window = self.outage[0] - min(self.outage[0], 3600.0)
        seen = [name for t, name, _ in self.tenant.log if window <= t < self.outage[0]]
        per_till = len(self.tills) * (self.outage[0] - window)
        interactive = sum(1 for name in seen if name != OUTBOX) / per_till
        writes = sum(1 for name in seen if name == OUTBOX) / per_till
        print(f"# the dashboard: {interactive:.5f} interactive and {writes:.5f} writes /s per till", file=sys.stderr)
        if self.args.misread != 1.0:  # an operator who copies figures off by a factor, or stale ones
            interactive, writes = interactive * self.args.misread, writes * self.args.misread
            print(f"# ...set as {interactive:.5f} and {writes:.5f} (--misread {self.args.misread})", file=sys.stderr)
        for till in self.tills:
            pacer = till.deliverer.pacer
            pacer.policy = replace(pacer.policy, fleet_interactive=interactive, fleet_writes=writes)

    def diagnose(self, start: float) -> None:
        """On stderr: how the backlog fell, and the tills that finished last (why the tail)."""
        done = sorted(self.results.backlog_deliveries)
        marks = (
            [f"{q:.0%} by +{done[int(q * (len(done) - 1))] - start:.0f}s" for q in (0.5, 0.9, 0.99, 1.0)]
            if done
            else []
        )
        print("# backlog delivered: " + ", ".join(marks), file=sys.stderr)
        last = sorted(self.last_by_till.items(), key=lambda kv: -kv[1])[:5]
        for name, at in last:
            till = self.tills[int(name[1:])]
            p = till.deliverer.pacer
            print(
                f"#   {name}: last backlog row at +{at - start:.0f}s, busyness {till.busyness:.2f}, "
                f"sales {till.sales}, rate {p.rate:.4f}, allowed {p.allowed_rate():.4f}, cuts {p.cuts}, "
                f"plan {'-' if p.plan is None else f'to +{p.plan.deadline() - start:.0f}s'}",
                file=sys.stderr,
            )

    def report(self, backlog_at_return: int) -> dict[str, Any]:
        r = self.results
        start, end = self.outage[1], r.last_backlog_delivery if self.drained() else self.clock()
        drain_s = end - start
        during = [(name, status) for t, name, status in self.tenant.log if start <= t < end]
        interactive_rate = sum(1 for name, _ in during if name != OUTBOX) / max(drain_s, 1e-9)
        new_rows_rate = sum(1 for t in r.new_rows_after_return if t < end) / max(drain_s, 1e-9)
        left = TENANT_RATE - interactive_rate
        self.diagnose(start)
        waits = sorted(w for _, ok, w in r.interactive if ok)
        ok_count = sum(1 for _, ok, _ in r.interactive if ok)
        print(
            f"# engine back at t={start:.0f}s; drained at t={end:.0f}s; interactive {interactive_rate:.1f}/s, "
            f"new rows {new_rows_rate:.1f}/s, left after the cashiers {left:.1f}/s; requests in the drain "
            f"{len(during)}; 429s over the whole run {sum(1 for *_, s in self.tenant.log if s == 429)}",
            file=sys.stderr,
        )
        return {
            "tills": self.args.tills,
            "outage_s": self.args.outage,
            "backlog": backlog_at_return,
            "drain_s": round(drain_s, 1),
            "min_drain_s": round(backlog_at_return / left, 1) if left > 0 else None,
            "rate_429": round(sum(1 for _, s in during if s == 429) / max(1, len(during)), 5),
            "interactive_success": round(ok_count / max(1, len(r.interactive)), 5),
            "p99_interactive_wait_s": round(waits[int(0.99 * (len(waits) - 1))], 3) if waits else 0.0,
        }


def simulate(args: argparse.Namespace) -> dict[str, Any]:
    clock = VirtualClock()
    loop = VirtualLoop(clock)
    to_thread = asyncio.to_thread
    asyncio.to_thread = _inline  # type: ignore[assignment]
    try:
        asyncio.set_event_loop(loop)

        async def main() -> dict[str, Any]:
            return await Fleet(args, clock).run()

        return loop.run_until_complete(main())
    finally:
        asyncio.to_thread = to_thread  # type: ignore[assignment]
        asyncio.set_event_loop(None)
        loop.close()


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.fleet", description=__doc__.split("\n\n")[0])
    p.add_argument("--tills", type=int, default=5000)
    p.add_argument("--outage", type=float, default=3600.0, help="seconds the engine is down")
    p.add_argument("--quick", action="store_true", help="a window around the outage instead of a whole day")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--rtt", type=float, default=0.08, help="seconds per engine round trip")
    p.add_argument(
        "--spread", type=float, default=4.0, help="gamma shape of the tills' busyness (mean 1; smaller: more uneven)"
    )
    p.add_argument(
        "--policy",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a PacingPolicy field (e.g. doubling=900, restart=0.8); repeatable",
    )
    p.add_argument("--share", type=float, default=None, help="each till's share (default: 100/s over the tills)")
    p.add_argument(
        "--above-share",
        type=float,
        default=4.0,
        help="every till's [outbox] above_share: how far above its share it may send when there is room "
        "(the daemon's default is 1, never above)",
    )
    p.add_argument(
        "--dashboard",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="set the chain's averages (fleet_interactive, fleet_writes) from the hour before the outage, "
        "as an operator would from the fleet dashboard (--no-dashboard: leave them unset)",
    )
    p.add_argument(
        "--misread",
        type=float,
        default=1.0,
        help="set the dashboard's figures multiplied by this (what wrong figures cost: 0.5, 1.5)",
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    started = time.perf_counter()
    result = simulate(args)
    print(f"# {time.perf_counter() - started:.1f} s of real time", file=sys.stderr)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
