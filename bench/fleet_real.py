"""A small real fleet: N ``tillplug run`` daemons against one ``tillplug sim --rate R --burst B``,
a scaled-down copy of the fleet simulation (bench/fleet.py) with real processes.

    python -m bench.fleet_real [--tills 20] [--rate 20] [--burst 40] [--warmup 60]
                                          [--outage 90] [--seed 1] [--no-dashboard] [--no-normalise]

Each daemon's share is ``rate / tills`` (``[outbox] rate_per_second``).  The day is the fleet
simulation's, scaled so that what a till uses stands in the same ratio to its share: there a
till's share is 0.02/s and its sales (24 an hour for an average till) use about 0.48 of it in
cashiers' calls and 0.2 in writes; here, with a share of 1/s, an average till makes a sale every
three seconds.  Every till has its own busyness (a gamma distribution, the twenty draws scaled to a
mean of 1 as over the simulation's thousands of tills; ``--no-normalise``: raw), sales arrive as
a Poisson process, 3 % of them come with a balance look-up (``GET /v1/members/{card}``) and 60 %
are members' sales through the till API: open a checkout, attach the member's card (the look-up),
sometimes spend points (8 %) or burn a voucher (5 %), complete (which queues the outbox row).
A sale without a member is not a loyalty sale: as in the simulation it never reaches tillplug.

1. Warm-up (``--warmup`` s) with the engine up.
2. The dashboard: the chain's average interactive requests/s and outbox writes/s per till are
   read off the daemons' own /metrics (``tillplug_engine_requests_total{use_case}``) over the
   warm-up, written into every daemon's config (``[outbox] fleet_interactive_per_second``,
   ``fleet_writes_per_second``) and applied with SIGHUP (``--no-dashboard``: left unset).
3. An outage (``/_sim/faults {"down": true}``, ``--outage`` s): sales go on (look-ups fail or
   attach offline, completions queue rows); then the engine comes back, sales go on, the
   backlog drains.
4. The last line is one JSON object with the fleet simulation's keys: ``backlog`` (rows not yet
   in the engine when it came back, by their eventKey), ``drain_s`` (until the last of them is
   in, by the simulator's ledger: receivedAt per eventKey), ``min_drain_s`` (the backlog less the
   limiter's burst, over what the limiter had left once cashiers' calls were served, measured over
   the drain: the fleet simulation's definition; new sales' rows queue behind), ``rate_429`` (429s
   over the engine requests made during the drain, from the daemons' /metrics),
   ``interactive_success`` (cashiers' calls — attach, spend, voucher, balance look-up — answered
   2xx, of those made while the engine was up, none that overlapped the outage),
   ``p99_interactive_wait_s`` (of those calls, the 99th percentile of the time taken beyond their
   use case's median in the warm-up: rate limiting's waits and the machine's load).  Diagnostics go to stderr.

Not a test: it takes four to five minutes and about 1.5 GB of memory.  Everything runs on 127.0.0.1 and
every process started is stopped on the way out (also on Ctrl-C or a failure).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from tillplug.sim.state import default_seed

TILLPLUG = [sys.executable, "-m", "tillplug"]
# The fleet simulation's day (bench/fleet.py, --quick): sales per second of an average
# till, its share, and the mix of a sale.
FLEET_SALES_PER_S, FLEET_SHARE = 24.0 / 3600, 100.0 / 5000
MEMBER_SHARE, SPEND_SHARE, VOUCHER_SHARE, BALANCE_PER_SALE = 0.6, 0.08, 0.05, 0.03
# What a cashier waits on the engine for, named as the daemon counts them (a balance look-up is "lookup").
CASHIER_CALLS = ("attach", "spend", "voucher", "lookup")
MEMBERS_PER_TILL, VOUCHERS_PER_TILL = 100, 40
SPEND_POINTS = 100


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def log(message: str) -> None:
    print(f"# {message}", file=sys.stderr, flush=True)


# -- the engine's members and vouchers -------------------------------------------------------


def card(till: int, k: int) -> str:
    return f"{2_000_000 + till * MEMBERS_PER_TILL + k}"


def voucher_code(till: int, k: int) -> str:
    return f"FLEET-{till:03d}-{k:03d}"


def write_seed(path: Path, tills: int) -> None:
    """Members of their own for each till (two tills never spend one member's points at once), rich
    enough to spend all run, and vouchers ready to burn, one sale each."""
    seed = default_seed()
    voucher_reward = seed["rewards"][0]["id"]
    members, benefits = [], []
    for till in range(tills):
        for k in range(MEMBERS_PER_TILL):
            number = card(till, k)
            members.append(
                {
                    "id": f"5a1b2c3d-0000-4000-8000-{int(number):012d}",
                    "accountNumber": number,
                    "authIdentifier": f"auth-{number}",
                    "pointsBalance": 1_000_000,
                    "lifetimeEarn": 1_000_000,
                    "tier": None,
                }
            )
        for k in range(VOUCHERS_PER_TILL):
            benefits.append(
                {
                    "id": f"be000000-0000-4000-8000-{till * VOUCHERS_PER_TILL + k:012d}",
                    "owner": f"auth-{card(till, k % MEMBERS_PER_TILL)}",
                    "reward": voucher_reward,
                    "code": voucher_code(till, k),
                    "state": "redeemed",
                }
            )
    seed["members"], seed["benefits"] = members, benefits
    path.write_text(json.dumps(seed))


# -- the daemons' figures ----------------------------------------------------------------------

_SAMPLE = re.compile(r'^(tillplug_engine_(?:requests|rate_limited)_total)\{use_case="([^"]*)"\} ([0-9.e+]+)$', re.M)


@dataclass
class Snapshot:
    """Every daemon's engine requests and 429s by use case, at one moment (summed over the tills)."""

    at: float
    requests: Counter[str] = field(default_factory=Counter)
    limited: Counter[str] = field(default_factory=Counter)

    def minus(self, earlier: Snapshot) -> tuple[Counter[str], Counter[str]]:
        return self.requests - earlier.requests, self.limited - earlier.limited


def parse_metrics(texts: list[str], at: float) -> Snapshot:
    snap = Snapshot(at)
    for text in texts:
        for name, use_case, value in _SAMPLE.findall(text):
            (snap.requests if name.startswith("tillplug_engine_requests") else snap.limited)[use_case] += int(
                float(value)
            )
    return snap


def interactive(requests: Counter[str]) -> int:
    return sum(n for name, n in requests.items() if name != "outbox")


# -- the tills ---------------------------------------------------------------------------------


@dataclass
class Call:
    till: int
    use_case: str
    start: float
    end: float
    status: int
    code: str | None


class Till:
    """One till: its daemon's config and process, and the sales its cashiers make through the till API."""

    def __init__(self, index: int, work: Path, sim_url: str, share: float, busyness: float, rng: random.Random):
        self.index, self.share, self.busyness, self.rng = index, share, busyness, rng
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config = work / f"till{index:02d}.toml"
        self.base_config = (
            f'till_id = "till-{index:02d}"\nbranch_id = "branch-{index // 5:02d}"\nstate_dir = "{work}/state{index}"\n'
            f'cache_dir = "{work}/cache{index}"\nlog_level = "warning"\n'
            f'[engine]\npreset = "simulator"\nbase_url = "{sim_url}/v1"\nauth_url = "{sim_url}/oauth/token"\n'
            f'[api]\nlisten = "127.0.0.1:{self.port}"\n'
            f"[outbox]\nrate_per_second = {share!r}\nabove_share = 4.0\n"
        )
        self.config.write_text(self.base_config)
        self.stderr = (work / f"till{index:02d}.log").open("wb")
        self.process = subprocess.Popen(
            [*TILLPLUG, "run", "--config", str(self.config)], stdout=subprocess.DEVNULL, stderr=self.stderr
        )
        self.sales = 0
        self.vouchers = [voucher_code(index, k) for k in range(VOUCHERS_PER_TILL)]
        self.voucher_owner = {voucher_code(index, k): k % MEMBERS_PER_TILL for k in range(VOUCHERS_PER_TILL)}

    def set_dashboard(self, interactive_per_s: float, writes_per_s: float) -> None:
        self.config.write_text(
            self.base_config
            + f"fleet_interactive_per_second = {interactive_per_s!r}\nfleet_writes_per_second = {writes_per_s!r}\n"
        )
        self.process.send_signal(signal.SIGHUP)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()

    def reap(self) -> None:
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
        self.stderr.close()


class Fleet:
    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        self.args, self.work = args, work
        self.rng = random.Random(args.seed)
        self.calls: list[Call] = []
        self.completed: dict[str, tuple[int, float]] = {}  # eventKey -> (till, answered at, wall clock)
        self.tasks: set[asyncio.Task[None]] = set()
        self.stop_trading = asyncio.Event()
        self.tills: list[Till] = []
        self.sim: subprocess.Popen[bytes] | None = None
        self.sim_url = ""
        self.http: httpx.AsyncClient | None = None

    # -- processes ---------------------------------------------------------------------------

    async def start(self) -> None:
        a = self.args
        seed = self.work / "seed.json"
        write_seed(seed, a.tills)
        port = free_port()
        self.sim_url = f"http://127.0.0.1:{port}"
        sim_cmd = [*TILLPLUG, "sim", "--port", str(port), "--rate", str(a.rate), "--burst", str(a.burst)]
        self.sim = subprocess.Popen([*sim_cmd, "--seed", str(seed)], stdout=subprocess.DEVNULL)
        self.http = httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=200))
        await self.until(lambda: self.answers(self.sim_url + "/_sim/health"), 60, "the simulator did not start")
        share = a.rate / a.tills
        # Scaled to a mean of 1, as it is over the thousands of tills of the fleet simulation: twenty draws
        # alone can make a chain a fifth busier or quieter than the one whose ratios to the share it copies.
        spread = a.spread
        draws = [(self.rng.gammavariate(spread, 1 / spread), random.Random(self.rng.random())) for _ in range(a.tills)]
        mean = sum(b for b, _ in draws) / len(draws) if a.normalise else 1.0
        for i, (busyness, rng) in enumerate(draws):
            self.tills.append(Till(i, self.work, self.sim_url, share, busyness / mean, rng))
        for till in self.tills:
            await self.until(lambda t=till: self.answers(t.url + "/v1/health"), 90, f"{till.url} did not start")

    async def stop(self) -> None:
        self.stop_trading.set()
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        if self.http is not None:
            await self.http.aclose()
        for till in self.tills:
            till.stop()
        for till in self.tills:
            till.reap()
        if self.sim is not None:
            self.sim.terminate()
            try:
                self.sim.wait(10)
            except subprocess.TimeoutExpired:
                self.sim.kill()
                self.sim.wait(10)

    async def answers(self, url: str) -> bool:
        assert self.http is not None
        try:
            await self.http.get(url, timeout=2)
            return True
        except httpx.TransportError:
            return False

    @staticmethod
    async def until(predicate: Any, timeout: float, failure: str, every: float = 0.2) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if await predicate():
                return
            await asyncio.sleep(every)
        raise RuntimeError(failure)

    async def snapshot(self) -> Snapshot:
        assert self.http is not None
        answers = await asyncio.gather(*(self.http.get(t.url + "/metrics") for t in self.tills))
        return parse_metrics([r.text for r in answers], time.time())

    async def health(self) -> list[dict[str, Any]]:
        assert self.http is not None
        answers = await asyncio.gather(*(self.http.get(t.url + "/v1/health") for t in self.tills))
        return [r.json() for r in answers]

    async def fault(self, down: bool) -> float:
        assert self.http is not None
        (await self.http.post(self.sim_url + "/_sim/faults", json={"down": down})).raise_for_status()
        return time.time()

    async def ledger(self) -> dict[str, float]:
        """eventKey -> when the engine received it (wall clock), for every event it holds."""
        assert self.http is not None
        events = (await self.http.get(self.sim_url + "/_sim/ledger")).json()["events"]
        return {e["eventKey"]: _seconds(e["receivedAt"]) for e in events if e.get("eventKey")}

    # -- trading -----------------------------------------------------------------------------

    def spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def trading(self, till: Till) -> None:
        rate = till.share * FLEET_SALES_PER_S / FLEET_SHARE * till.busyness
        while not self.stop_trading.is_set():
            await asyncio.sleep(till.rng.expovariate(rate))
            if till.rng.random() < BALANCE_PER_SALE:
                self.spawn(self.call(till, "lookup", "GET", f"/v1/members/{card(till.index, self.member(till))}"))
            if till.rng.random() < MEMBER_SHARE:
                self.spawn(self.member_sale(till))

    def member(self, till: Till) -> int:
        return till.rng.randrange(MEMBERS_PER_TILL)

    async def call(self, till: Till, use_case: str, method: str, path: str, body: Any = None) -> httpx.Response | None:
        assert self.http is not None
        start = time.time()
        try:
            answer = await self.http.request(method, till.url + path, json=body)
        except httpx.HTTPError as exc:
            self.calls.append(Call(till.index, use_case, start, time.time(), 0, type(exc).__name__))
            return None
        code = None
        if answer.status_code >= 300:
            try:
                code = answer.json()["error"]["code"]
            except (ValueError, KeyError, TypeError):
                code = "unreadable"
        self.calls.append(Call(till.index, use_case, start, time.time(), answer.status_code, code))
        return answer

    async def member_sale(self, till: Till) -> None:
        till.sales += 1
        tx = f"T{till.index}-{till.sales}"
        voucher = till.vouchers.pop() if till.vouchers and till.rng.random() < VOUCHER_SHARE else None
        member = till.voucher_owner[voucher] if voucher else self.member(till)
        spend = till.rng.random() < SPEND_SHARE
        await self.call(till, "open", "POST", "/v1/checkouts", {"transactionId": tx, "lane": 1, "cashierId": "c1"})
        await self.call(till, "attach", "PUT", f"/v1/checkouts/{tx}/member", {"code": card(till.index, member)})
        if spend:
            await self.call(till, "spend", "POST", f"/v1/checkouts/{tx}/points", {"points": SPEND_POINTS})
        if voucher:
            await self.call(till, "voucher", "POST", f"/v1/checkouts/{tx}/vouchers", {"code": voucher})
        done = await self.call(
            till, "complete", "POST", f"/v1/checkouts/{tx}/complete", {"total": 2500, "paymentConfirmed": True}
        )
        if done is not None and done.status_code == 200:
            self.completed[done.json()["eventKey"]] = (till.index, time.time())

    def per_call(self, requests: Counter[str]) -> None:
        """On stderr: the engine requests each use case made per till API call in the warm-up (measured)."""
        made = Counter(c.use_case for c in self.calls)
        told = ", ".join(f"{name} {requests[name] / made[name]:.2f}" for name in sorted(made) if made[name])
        log(f"engine requests per call in the warm-up: {told}; outbox {requests['outbox']}, other {requests['other']}")

    # -- the run -----------------------------------------------------------------------------

    async def read_dashboard(self, since: Snapshot) -> tuple[float, float]:
        """What an operator copies off the fleet dashboard into every till's config: the chain's average
        interactive requests/s and outbox writes/s per till over the warm-up; applied with SIGHUP."""
        now = await self.snapshot()
        requests, _ = now.minus(since)
        per_till = len(self.tills) * (now.at - since.at)
        interactive_per_s = round(interactive(requests) / per_till, 4)
        writes_per_s = round(requests["outbox"] / per_till, 4)
        share = self.tills[0].share
        log(f"the dashboard: {interactive_per_s} interactive and {writes_per_s} writes /s per till (share {share:g})")
        for till in self.tills:
            till.set_dashboard(interactive_per_s, writes_per_s)

        async def applied() -> bool:
            pacing = [h["outbox"]["pacing"] for h in await self.health()]
            return all(p.get("fleetWritesPerSecond") == writes_per_s for p in pacing)

        await self.until(applied, 30, "the daemons did not take the dashboard's figures on SIGHUP", every=0.5)
        return interactive_per_s, writes_per_s

    async def run(self) -> dict[str, Any]:
        a = self.args
        await self.start()
        log(f"{a.tills} daemons up; busyness {', '.join(f'{t.busyness:.2f}' for t in self.tills)}")
        for till in self.tills:
            self.spawn(self.trading(till))
        started = await self.snapshot()
        await asyncio.sleep(a.warmup)
        self.per_call((await self.snapshot()).minus(started)[0])
        dashboard = await self.read_dashboard(started) if a.dashboard else None
        down = await self.fault(True)
        log("engine down")
        await asyncio.sleep(a.outage)
        at_return = await self.snapshot()
        back = await self.fault(False)
        log(f"engine back after {back - down:.1f} s")
        # Every second: the metrics (to cut the drain's window exactly) and whether every row that
        # waited on the engine has reached it.
        snapshots = [at_return]
        deadlines: list[float] = []
        received: dict[str, float] = {}
        waiting: set[str] = set()
        end_by = time.monotonic() + a.timeout
        while time.monotonic() < end_by:
            await asyncio.sleep(1.0)
            snapshots.append(await self.snapshot())
            if len(snapshots) % 5 == 2:
                pacing = [h["outbox"]["pacing"] for h in await self.health()]
                deadlines += [p["drainDeadlineSeconds"] + time.time() for p in pacing if p["drainDeadlineSeconds"]]
            received = await self.ledger()
            waiting = {k for k, (_, t) in self.completed.items() if t < back and received.get(k, back) >= back}
            if all(k in received for k in waiting):
                break
        self.stop_trading.set()
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        return self.report(
            down=down,
            back=back,
            backlog_keys=waiting,
            received=received,
            snapshots=snapshots,
            dashboard=dashboard,
            deadlines=deadlines,
        )

    def report(
        self,
        *,
        down: float,
        back: float,
        backlog_keys: set[str],
        received: dict[str, float],
        snapshots: list[Snapshot],
        dashboard: tuple[float, float] | None,
        deadlines: list[float],
    ) -> dict[str, Any]:
        a = self.args
        missing = [k for k in backlog_keys if k not in received]
        end = max((received[k] for k in backlog_keys if k in received), default=back)
        drain_s = end - back
        # The drain's window by the metrics: from the engine's return to the first snapshot after the last row.
        last = next((s for s in snapshots if s.at >= end), snapshots[-1])
        requests, limited = last.minus(snapshots[0])
        window = max(1e-9, last.at - snapshots[0].at)
        interactive_rate = interactive(requests) / window
        new_rows_rate = sum(1 for _, t in self.completed.values() if back <= t < end) / max(drain_s, 1e-9)
        left = a.rate - interactive_rate
        # Cashiers' calls while the engine was up (none that overlapped the outage).
        up = [c for c in self.calls if c.use_case in CASHIER_CALLS and (c.end < down or c.start >= back)]
        ok = [c for c in up if 200 <= c.status < 300]
        warm = {
            name: sorted(c.end - c.start for c in ok if c.use_case == name and c.end < down) for name in CASHIER_CALLS
        }
        typical = {name: times[len(times) // 2] if times else 0.0 for name, times in warm.items()}
        waits = sorted(max(0.0, c.end - c.start - typical[c.use_case]) for c in ok)
        self.diagnose(
            back=back,
            backlog_keys=backlog_keys,
            received=received,
            requests=requests,
            limited=limited,
            up=up,
            deadlines=deadlines,
            missing=missing,
        )
        log(
            f"drain window {window:.1f} s: interactive {interactive_rate:.2f}/s, new rows {new_rows_rate:.2f}/s, "
            f"left for the backlog {left:.2f}/s; requests {sum(requests.values())}, 429s {sum(limited.values())}"
        )
        return {
            "tills": a.tills,
            "tenant_rate": a.rate,
            "outage_s": round(back - down, 1),
            "backlog": len(backlog_keys),
            "drain_s": round(drain_s, 1) if not missing else None,
            # The limiter's bucket is full when the engine comes back (its 503s took no tokens): at this
            # scale its burst is a tenth of the backlog, so it counts (in fleet.py it is 0.6 %).
            "min_drain_s": round(max(0, len(backlog_keys) - a.burst) / left, 1) if left > 0 else None,
            "rate_429": round(sum(limited.values()) / max(1, sum(requests.values())), 5),
            "interactive_success": round(len(ok) / max(1, len(up)), 5),
            "p99_interactive_wait_s": round(waits[int(0.99 * (len(waits) - 1))], 3) if waits else 0.0,
            "dashboard": None if dashboard is None else {"interactive": dashboard[0], "writes": dashboard[1]},
            "undelivered": len(missing),
        }

    def diagnose(
        self,
        *,
        back: float,
        backlog_keys: set[str],
        received: dict[str, float],
        requests: Counter[str],
        limited: Counter[str],
        up: list[Call],
        deadlines: list[float],
        missing: list[str],
    ) -> None:
        done = sorted(received[k] - back for k in backlog_keys if k in received)
        if done:
            marks = ", ".join(f"{q:.0%} by +{done[int(q * (len(done) - 1))]:.0f}s" for q in (0.5, 0.9, 0.99, 1.0))
            log(f"backlog delivered: {marks}")
        if missing:
            log(f"{len(missing)} backlog rows never reached the engine (timeout)")
        made = Counter(c.use_case for c in self.calls)
        log(
            "engine requests in the drain by use case: "
            + ", ".join(f"{k} {v} ({limited[k]} × 429)" for k, v in sorted(requests.items()))
        )
        log("till API calls made over the run: " + ", ".join(f"{k} {v}" for k, v in sorted(made.items())))
        failures = Counter(f"{c.use_case} {c.status} {c.code}" for c in up if not 200 <= c.status < 300)
        if failures:
            log(
                "cashiers' calls that failed with the engine up: " + ", ".join(f"{k} ×{v}" for k, v in failures.items())
            )
        if deadlines:
            log(f"drain deadlines the tills reported: +{min(deadlines) - back:.0f}..+{max(deadlines) - back:.0f} s")
        last: dict[int, float] = {}
        for k in backlog_keys:
            if k in received:
                till = self.completed[k][0]
                last[till] = max(last.get(till, 0.0), received[k] - back)
        for index, at in sorted(last.items(), key=lambda kv: -kv[1])[:5]:
            rows = sum(1 for k in backlog_keys if self.completed[k][0] == index)
            busy = self.tills[index].busyness
            log(f"  till {index}: last backlog row at +{at:.0f}s, busyness {busy:.2f}, backlog {rows}")


def _seconds(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="fleet-real-") as work:
        fleet = Fleet(args, Path(work))
        try:
            return await fleet.run()
        finally:
            await asyncio.shield(fleet.stop())


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.fleet_real", description=__doc__.split("\n\n")[0])
    p.add_argument("--tills", type=int, default=20)
    p.add_argument("--rate", type=float, default=20, help="the tenant's limit, requests/s (the simulator's)")
    p.add_argument("--burst", type=int, default=40, help="the tenant's burst (the simulator's)")
    p.add_argument("--warmup", type=float, default=60, help="seconds of trading before the outage")
    p.add_argument("--outage", type=float, default=90, help="seconds the engine is down")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--spread", type=float, default=4.0, help="gamma shape of the tills' busyness (mean 1)")
    p.add_argument(
        "--normalise",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="scale the tills' busyness to a mean of 1 (--no-normalise: the raw draws)",
    )
    p.add_argument("--timeout", type=float, default=400, help="seconds the drain may take at most")
    p.add_argument(
        "--dashboard",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="set the chain's averages from the warm-up and SIGHUP the daemons (--no-dashboard: leave them unset)",
    )
    args = p.parse_args(argv)
    if not (args.tills > 0 and args.rate > 0 and args.warmup > 0 and args.outage > 0 and math.isfinite(args.timeout)):
        p.error("--tills, --rate, --warmup and --outage must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    started = time.perf_counter()
    result = asyncio.run(main_async(args))
    log(f"{time.perf_counter() - started:.0f} s of real time")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
