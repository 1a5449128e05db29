"""A chain's lunch peak through two relay processes (docs/relay.md), against the simulator direct.

    python -m bench relay [--tills 5000] [--rates 20,50,100,200,400] [--seconds 10] [--quick]

What runs, all on this machine: PostgreSQL from Debian's packages in a temporary folder, the
engine simulator as WLL (its own process, the tenant's limit of 100 requests/s, burst 400), two
``tillplug relay run`` processes (pacing at 95/s so WLL never has to say 429), 5,000 enrolled
tills driven by one asyncio load generator (each request from a random till, with its own
token), and two real tillplug daemons (``VirtualTill``) selling through the relays meanwhile.

Measured, in the same run:

* the added latency: a member look-up (``GET /v1/users/{card}``) direct to the simulator and
  through a relay, interleaved, at a rate well below the limit: p50 and p99 of each, and the
  difference;
* the lunch peak at each offered rate (a sale = a member look-up and an earn; 8 % of sales also
  spend points): requests/s answered 2xx, the relay's own 429s, other failures, p50/p99; the
  saturation point is the first offered rate the relays do not hold (answered < 95 % of offered,
  or p99 over a second);
* WLL 429s (the relays' logs; goal 0) and duplicate events at WLL (the simulator's ledger; goal 0)
  once the relays' outboxes have delivered everything;
* five tills spending 70 % of one member's points at once, ten rounds: never overdrawn.

The last line printed is one JSON object with every figure.  Not a test: nothing fails.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.relay.pg import Cluster, free_port  # noqa: E402 -- the tests' PostgreSQL, started the same way

SIM_KEY = "sim-api-key-0000"
MEMBERS = ["1000001", "1000002", "1000003"]
SPEND_MEMBER = "5a1b2c3d-0000-4000-8000-000000000002"  # Bob: his points for the five-till race
SPEND_SHARE = 0.08


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def wait_for(url: str, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer")


class Stack:
    """PostgreSQL, the simulator, two relays; enrolled tills."""

    def __init__(self, work: Path, tills: int) -> None:
        self.work = work
        self.cluster = Cluster()
        self.database = self.cluster.create_database()
        self.sim_port = free_port()
        self.sim_url = f"http://127.0.0.1:{self.sim_port}"
        self.procs: list[subprocess.Popen[bytes]] = []
        self.logs: list[Path] = []
        self._spawn([sys.executable, "-m", "tillplug", "sim", "--port", str(self.sim_port)], "sim")
        wait_for(self.sim_url + "/_sim/health", 30)
        self.relay_urls: list[str] = []
        self.configs: list[Path] = []
        for name in ("a", "b"):
            port = free_port()
            config = self._config(port)
            self.configs.append(config)
            if name == "a":
                migrate = [sys.executable, "-m", "tillplug", "relay", "migrate", "--config", str(config)]
                subprocess.run(migrate, check=True, capture_output=True)
            self._spawn([sys.executable, "-m", "tillplug", "relay", "run", "--config", str(config)], f"relay-{name}")
            self.relay_urls.append(f"http://127.0.0.1:{port}")
        for url in self.relay_urls:
            wait_for(url + "/relay/health", 30)
        self.tokens = asyncio.run(self._enrol(tills))

    def _config(self, port: int) -> Path:
        dialect = self.work / "dialect.json"
        answers = {"event_key_filter": "honoured", "order_key_filter": "honoured", "owner_filter": "honoured"}
        dialect.write_text(json.dumps({"version": 1, "answers": answers}))
        path = self.work / f"relay-{port}.toml"
        path.write_text(
            f'log_level = "warning"\n[engine]\npreset = "simulator"\nbase_url = "{self.sim_url}/v1"\n'
            f'dialect_file = "{dialect}"\n[database]\nurl = "{self.database}"\npool_size = 20\n'
            f'[api]\nlisten = "127.0.0.1:{port}"\n[pacing]\nrate = 95\nburst = 300\nmax_wait = 0.5\n'
        )
        return path

    def _spawn(self, argv: list[str], name: str) -> None:
        log = self.work / f"{name}.log"
        self.logs.append(log)
        with log.open("w") as out:
            self.procs.append(subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT))

    async def _enrol(self, tills: int) -> list[str]:
        from tillplug.relay.config import load_config
        from tillplug.relay.service import relay

        async with relay(load_config(self.configs[0])) as parts:
            return [await parts.tokens.enrol(f"T{i:05d}", f"B{i % 400:03d}") for i in range(tills)]

    def wll_429s(self) -> int:
        return sum(log.read_text().count("WLL answered 429") for log in self.logs if log.name.startswith("relay"))

    def ledger(self) -> dict[str, Any]:
        answer: dict[str, Any] = httpx.get(self.sim_url + "/_sim/ledger", timeout=30).json()
        return answer

    def close(self) -> None:
        for proc in self.procs:
            proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
        self.cluster.destroy()


async def timed(client: httpx.AsyncClient, method: str, url: str, **kw: Any) -> tuple[float, int]:
    start = time.perf_counter()
    try:
        response = await client.request(method, url, **kw)
        status = response.status_code
    except httpx.HTTPError:
        status = 0
    return time.perf_counter() - start, status


async def added_latency(stack: Stack, n: int) -> dict[str, float]:
    """The same look-up direct and through a relay, interleaved, at ~20/s."""
    limits = httpx.Limits(max_connections=20)
    async with httpx.AsyncClient(limits=limits, timeout=10) as client:
        token = (await client.post(stack.sim_url + "/oauth/token", json=_sim_credentials())).json()["access_token"]
        direct_headers = {"X-Api-Key": SIM_KEY, "Authorization": f"Bearer {token}"}
        relay_headers = {"Authorization": f"Bearer {stack.tokens[0]}"}
        direct, relayed = [], []
        for i in range(n):
            member = MEMBERS[i % len(MEMBERS)]
            d, _ = await timed(client, "GET", f"{stack.sim_url}/v1/users/{member}", headers=direct_headers)
            r, _ = await timed(client, "GET", f"{stack.relay_urls[i % 2]}/v1/users/{member}", headers=relay_headers)
            direct.append(d)
            relayed.append(r)
            await asyncio.sleep(0.05)
    return {
        "direct_p50_ms": pct(direct, 50) * 1000,
        "direct_p99_ms": pct(direct, 99) * 1000,
        "relay_p50_ms": pct(relayed, 50) * 1000,
        "relay_p99_ms": pct(relayed, 99) * 1000,
        "added_p50_ms": (pct(relayed, 50) - pct(direct, 50)) * 1000,
        "added_p99_ms": (pct(relayed, 99) - pct(direct, 99)) * 1000,
        "ratio_p50": pct(relayed, 50) / pct(direct, 50),
    }


def _sim_credentials() -> dict[str, str]:
    return {
        "client_id": "sim-client",
        "client_secret": "sim-client-secret",
        "audience": "wlloyalty.net",
        "grant_type": "client_credentials",
    }


async def peak(stack: Stack, rate: float, seconds: float) -> dict[str, Any]:
    """Sales at ``rate`` requests/s (open loop: sent on time whether or not answers came)."""
    limits = httpx.Limits(max_connections=400, max_keepalive_connections=400)
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    rng = random.Random(int(rate))
    async with httpx.AsyncClient(limits=limits, timeout=30) as client:

        async def sale(i: int) -> None:
            token = stack.tokens[rng.randrange(len(stack.tokens))]
            base = stack.relay_urls[i % 2]
            headers = {"Authorization": f"Bearer {token}"}
            member = MEMBERS[rng.randrange(2)]  # Alice or Bob: they have points
            took, status = await timed(client, "GET", f"{base}/v1/users/{member}", headers=headers)
            latencies.append(took)
            statuses[status] = statuses.get(status, 0) + 1
            if status != 200:
                return
            body = {
                "type": "TRANSACTION",
                "payload": {"eventKey": str(uuid.uuid4()), "total": rng.randrange(100, 5000), "transactionId": f"s{i}"},
            }
            took, status = await timed(client, "POST", f"{base}/v1/events/", json=body, headers=headers)
            latencies.append(took)
            statuses[status] = statuses.get(status, 0) + 1

        tasks = []
        start = time.monotonic()
        sales = int(rate * seconds / 2)  # a sale is two requests
        for i in range(sales):
            due = start + i * 2 / rate
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(sale(i)))
        await asyncio.gather(*tasks)
        elapsed = time.monotonic() - start
    ok = sum(n for s, n in statuses.items() if 200 <= s < 300)
    return {
        "offered_per_s": rate,
        "held_per_s": ok / elapsed,
        "relay_429": statuses.get(429, 0),
        "failed": sum(n for s, n in statuses.items() if s >= 500 or s == 0),
        "p50_ms": pct(latencies, 50) * 1000,
        "p99_ms": pct(latencies, 99) * 1000,
        "requests": sum(statuses.values()),
    }


async def five_tills_at_once(stack: Stack, rounds: int) -> dict[str, Any]:
    """Five tills spend 70 % of one member's balance at the same moment; how many keep it."""
    overdrawn, kept = 0, []
    async with httpx.AsyncClient(timeout=30) as client:
        tokens = stack.tokens[-5:]
        for t in tokens:
            await client.get(f"{stack.relay_urls[0]}/v1/users/{SPEND_MEMBER}", headers={"Authorization": f"Bearer {t}"})
        for r in range(rounds):
            ledger = stack.ledger()
            balance = ledger["balances"][SPEND_MEMBER]
            points = max(1, int(balance * 0.7))
            answers = await asyncio.gather(
                *(
                    client.post(
                        f"{stack.relay_urls[i % 2]}/v1/events/",
                        json={
                            "type": "REDEEMED_POINTS",
                            "subject": SPEND_MEMBER,
                            "payload": {"eventKey": str(uuid.uuid4()), "points": points, "transactionId": f"r{r}-{i}"},
                        },
                        headers={"Authorization": f"Bearer {t}"},
                    )
                    for i, t in enumerate(tokens)
                )
            )
            kept.append(sum(a.status_code == 200 for a in answers))
            await asyncio.sleep(0.5)
            if stack.ledger()["balances"][SPEND_MEMBER] < 0:
                overdrawn += 1
    return {"rounds": rounds, "kept_per_round": kept, "overdrawn_rounds": overdrawn}


def real_daemons(stack: Stack, work: Path, sales: int) -> dict[str, Any]:
    """Two tillplug daemons selling through the relays (member attached, completion earns)."""
    from tillplug.commands.virtual.till import VirtualTill

    done = 0
    tills = []
    try:
        for n in range(2):
            token = work / f"till-{n}.token"
            token.write_text(stack.tokens[n] + "\n")
            token.chmod(0o600)
            engine = {"relay_url": stack.relay_urls[n], "relay_token": str(token)}
            tills.append(VirtualTill(work / f"till-{n}", till_id=f"T{n:05d}", engine=engine))
        for i in range(sales):
            till = tills[i % 2]
            tx = f"RD{i}"
            if till.api.post("/v1/checkouts", json={"transactionId": tx, "lane": 1}).status_code != 201:
                continue
            if till.api.put(f"/v1/checkouts/{tx}/member", json={"code": "1000001"}).status_code != 200:
                continue
            answer = till.api.post(f"/v1/checkouts/{tx}/complete", json={"total": 1000, "paymentConfirmed": True})
            done += answer.status_code == 200
    finally:
        for till in tills:
            till.close()
    return {"sales": sales, "completed": done}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench relay")
    ap.add_argument("--tills", type=int, default=5000)
    ap.add_argument("--rates", default="20,50,100,200,400")
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--quick", action="store_true", help="500 tills, two rates, 4 s each")
    args = ap.parse_args(argv)
    tills, rates, seconds = args.tills, [float(r) for r in args.rates.split(",")], args.seconds
    if args.quick:
        tills, rates, seconds = 500, [50.0, 200.0], 4.0
    work = Path(tempfile.mkdtemp(prefix="tillplug-bench-relay-"))
    print(f"… starting PostgreSQL, the simulator and two relays; enrolling {tills} tills", file=sys.stderr, flush=True)
    stack = Stack(work, tills)
    report: dict[str, Any] = {"tills": tills, "cores": os.cpu_count(), "seconds_per_rate": seconds}
    try:
        print("… added latency (direct vs relay)", file=sys.stderr, flush=True)
        report["latency"] = asyncio.run(added_latency(stack, 100 if args.quick else 300))
        report["peak"] = []
        for rate in rates:
            print(f"… lunch peak at {rate:.0f} requests/s", file=sys.stderr, flush=True)
            report["peak"].append(asyncio.run(peak(stack, rate, seconds)))
        saturated = [
            p["offered_per_s"]
            for p in report["peak"]
            if p["held_per_s"] < 0.95 * p["offered_per_s"] or p["p99_ms"] > 1000
        ]
        report["saturation_per_s"] = saturated[0] if saturated else None
        print("… two real daemons", file=sys.stderr, flush=True)
        report["daemons"] = real_daemons(stack, work, 10 if args.quick else 40)
        print("… five tills on one member", file=sys.stderr, flush=True)
        report["five_tills"] = asyncio.run(five_tills_at_once(stack, 3 if args.quick else 10))
        print("… waiting for the relays' outboxes", file=sys.stderr, flush=True)
        deadline = time.monotonic() + 120
        sent = 0
        while time.monotonic() < deadline:
            ledger = stack.ledger()
            if len(ledger["events"]) == sent:
                break
            sent = len(ledger["events"])
            time.sleep(3)
        report["wll_events"] = len(ledger["events"])
        report["wll_duplicates"] = len(ledger["duplicates"])
        report["wll_429s"] = stack.wll_429s()
    finally:
        stack.close()
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
