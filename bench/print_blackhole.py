"""What a black-holed network printer adds to a sale (issue 13: at most 50 ms).

    python -m bench.print_blackhole [--sales 20]

Two in-process tills (the virtual till: engine simulator, daemon, real HTTP) run the same sales:
open, attach member, spend points (prints a points slip), complete (prints the sale summary),
and a balance slip.  One prints to a capture printer that always works; the other to a network
printer whose cable has been pulled (connects hang until the timeout, open connections swallow
bytes).  The figure is the difference of the medians per call.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from tillplug.commands.virtual.printer import FakeNetworkPrinter
from tillplug.commands.virtual.till import VirtualTill

CALLS = ("spend", "complete", "balance")


def sales(till: VirtualTill, n: int, prefix: str) -> dict[str, list[float]]:
    took: dict[str, list[float]] = {c: [] for c in CALLS}

    def timed(call: str, method: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
        started = time.perf_counter()
        r = till.api.request(method, path, json=body)
        took[call].append((time.perf_counter() - started) * 1000)
        assert r.status_code in (200, 201), r.text
        return dict(r.json())

    for i in range(n):
        tx = f"{prefix}-{i}"
        till.api.post("/v1/checkouts", json={"transactionId": tx, "lane": 1}).raise_for_status()
        till.api.put(f"/v1/checkouts/{tx}/member", json={"code": "1000001"}).raise_for_status()
        timed("spend", "POST", f"/v1/checkouts/{tx}/points", {"points": 10})
        timed("complete", "POST", f"/v1/checkouts/{tx}/complete", {"total": 1000, "paymentConfirmed": True})
        timed("balance", "POST", "/v1/print/balance", {"code": "1000001", "lane": 1})
    return took


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sales", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        with VirtualTill(Path(tmp) / "working") as till:
            working = sales(till, args.sales, "W")
        with FakeNetworkPrinter("ok") as fake:
            fake.black_hole()
            printers = [{"name": "p1", "connection": fake.url, "lane": 1, "profile": "TM-T20II"}]
            started = time.perf_counter()
            with VirtualTill(Path(tmp) / "blackhole", printers=printers) as till:
                start_up = (time.perf_counter() - started) * 1000
                holed = sales(till, args.sales, "B")
                states = {j["state"] for j in till.api.get("/v1/print/jobs").json()["jobs"]}
                health = []
                for _ in range(10):
                    t = time.perf_counter()
                    till.api.get("/v1/health").raise_for_status()
                    health.append((time.perf_counter() - t) * 1000)
    print(f"{args.sales} sales; median (p95) ms per call; print jobs with the black hole ended {sorted(states)}")
    print(
        f"  start-up with the black-holed printer {start_up:.0f} ms; health median {statistics.median(health):.1f} ms"
    )
    for call in CALLS:
        w, b = statistics.median(working[call]), statistics.median(holed[call])
        p95 = sorted(holed[call])[int(0.95 * (len(holed[call]) - 1))]
        print(f"  {call:9s} working printer {w:6.1f}   black-holed {b:6.1f} (p95 {p95:6.1f})   added {b - w:+6.1f}")


if __name__ == "__main__":
    main()
