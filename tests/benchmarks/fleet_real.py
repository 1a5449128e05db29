"""A small real fleet: N ``tillplug run`` daemons against one ``tillplug sim --rate R --burst B``.

    python -m tests.benchmarks.fleet_real [--tills 20] [--rate 20] [--burst 40] [--sales 30] [--outage 20]

Real processes end to end: the simulator is taken down (its ``down`` fault: every call 503),
each till completes ``--sales`` sales (queued in its outbox), the engine comes back after
``--outage`` seconds, and while the outboxes drain every till looks a member up every two
seconds, as a cashier would.  Each daemon's share is ``rate / tills`` ([outbox]
rate_per_second).  The 429s and requests are read from the daemons' own /metrics
(``tillplug_engine_rate_limited_total``, ``tillplug_engine_requests_total``).  Last line: JSON.
Not a test: it needs a few minutes and about 1.5 GB of memory.
"""

from __future__ import annotations

import argparse
import json
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from tillplug.testing.till import poll_until

TILLPLUG = [sys.executable, "-m", "tillplug"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def metric_sum(text: str, name: str, where: str = "") -> float:
    pattern = re.compile(rf"^{name}\{{([^}}]*)\}} ([0-9.e+]+)$", re.M)
    return sum(float(v) for labels, v in pattern.findall(text) if where in labels)


def run(args: argparse.Namespace) -> dict[str, Any]:  # noqa: C901, PLR0915 - one scenario, told in order
    work = Path(tempfile.mkdtemp(prefix="fleet-real-"))
    sim_port = free_port()
    sim = subprocess.Popen(
        [*TILLPLUG, "sim", "--port", str(sim_port), "--rate", str(args.rate), "--burst", str(args.burst)],
        stdout=subprocess.DEVNULL,
    )
    sim_url = f"http://127.0.0.1:{sim_port}"
    daemons: list[subprocess.Popen[bytes]] = []
    urls: list[str] = []
    try:
        assert poll_until(lambda: _answers(sim_url + "/_sim/health"), 30), "the simulator did not start"
        httpx.post(sim_url + "/_sim/faults", json={"down": True}, timeout=10)
        for i in range(args.tills):
            port = free_port()
            cfg = work / f"till{i}.toml"
            cfg.write_text(
                f'till_id = "till-{i:02d}"\nbranch_id = "branch-{i // 5:02d}"\nstate_dir = "{work}/state{i}"\n'
                f'cache_dir = "{work}/cache{i}"\nlog_level = "warning"\n'
                f'[engine]\npreset = "simulator"\nbase_url = "{sim_url}/v1"\n'
                f'[api]\nlisten = "127.0.0.1:{port}"\n'
                f"[outbox]\nrate_per_second = {args.rate / args.tills}\nburst = 2\n"
            )
            daemons.append(subprocess.Popen([*TILLPLUG, "run", "--config", str(cfg)], stderr=subprocess.DEVNULL))
            urls.append(f"http://127.0.0.1:{port}")
        for url in urls:
            assert poll_until(lambda url=url: _answers(url + "/v1/health"), 60), f"{url} did not start"
        outage_start = time.monotonic()
        with httpx.Client(timeout=30) as http:
            for i, url in enumerate(urls):
                for n in range(args.sales):
                    tx = f"T{i}-{n}"
                    http.post(url + "/v1/checkouts", json={"transactionId": tx, "lane": 1, "cashierId": "c"})
                    r = http.post(url + f"/v1/checkouts/{tx}/complete", json={"total": 1000, "paymentConfirmed": True})
                    assert r.status_code == 200, r.text
        backlog = sum(httpx.get(u + "/v1/health", timeout=30).json()["outbox"]["depth"] for u in urls)
        time.sleep(max(0.0, args.outage - (time.monotonic() - outage_start)))
        httpx.post(sim_url + "/_sim/faults", json={"down": False}, timeout=10)
        back = time.monotonic()
        lookups = {"ok": 0, "failed": 0}
        stop = threading.Event()

        def cashier(url: str) -> None:
            with httpx.Client(timeout=30) as http:
                while not stop.is_set():
                    ok = http.get(url + "/v1/members/1000001").status_code == 200
                    lookups["ok" if ok else "failed"] += 1
                    stop.wait(2.0)

        cashiers = [threading.Thread(target=cashier, args=(u,), daemon=True) for u in urls]
        for t in cashiers:
            t.start()

        def drained() -> bool:
            return all(httpx.get(u + "/v1/health", timeout=30).json()["outbox"]["depth"] == 0 for u in urls)

        assert poll_until(drained, args.timeout, every=0.5), "the outboxes did not drain"
        drain_s = time.monotonic() - back
        stop.set()
        for t in cashiers:
            t.join(10)
        texts = [httpx.get(u + "/metrics", timeout=30).text for u in urls]
        requests = sum(metric_sum(t, "tillplug_engine_requests_total") for t in texts)
        limited = sum(metric_sum(t, "tillplug_engine_rate_limited_total") for t in texts)
        # The cashiers' calls and the health checks' pings: everything but the outbox, over the drain.
        interactive = sum(metric_sum(t, "tillplug_engine_requests_total") for t in texts) - sum(
            metric_sum(t, "tillplug_engine_requests_total", 'use_case="outbox"') for t in texts
        )
        interactive_rate = interactive / drain_s
        return {
            "tills": args.tills,
            "tenant_rate": args.rate,
            "outage_s": args.outage,
            "backlog": backlog,
            "drain_s": round(drain_s, 1),
            "min_drain_s": round(backlog / max(0.1, args.rate - interactive_rate), 1),
            "requests": int(requests),
            "interactive_per_s": round(interactive_rate, 1),
            "rate_429": round(limited / max(1.0, requests), 4),
            "interactive_success": round(lookups["ok"] / max(1, lookups["ok"] + lookups["failed"]), 4),
        }
    finally:
        for d in daemons:
            d.terminate()
        for d in daemons:
            try:
                d.wait(20)
            except subprocess.TimeoutExpired:
                d.kill()
        sim.terminate()
        sim.wait(10)


def _answers(url: str) -> bool:
    try:
        httpx.get(url, timeout=2)
        return True
    except httpx.TransportError:
        return False


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tills", type=int, default=20)
    p.add_argument("--rate", type=float, default=20)
    p.add_argument("--burst", type=int, default=40)
    p.add_argument("--sales", type=int, default=30)
    p.add_argument("--outage", type=float, default=20)
    p.add_argument("--timeout", type=float, default=600)
    print(json.dumps(run(p.parse_args(argv))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
