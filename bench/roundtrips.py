"""Engine round trips per use case, with the engine a WAN away.

    python -m bench.roundtrips [--rtt-ms 80]

A real daemon (VirtualTill: pty scanner, capture printer, the API) against the engine
simulator with its ``slow_ms`` fault, so every engine request costs one WAN round trip.  For
each use case: the engine requests made (``engine_requests_total{use_case}``, counted by the
engine client), the till-visible time of the API call, that time in round trips (what the
cashier waits for), and the target.  Prints a Markdown table, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from tillplug.commands.virtual.till import VirtualTill
from tillplug.sim import SimServer

# (use case as counted, what the till calls, target sequential round trips on the till's path)
CASES: list[tuple[str, str, str, dict[str, Any] | None, int]] = [
    ("lookup", "GET", "/v1/members/1000002", None, 2),
    ("lookup", "GET", "/v1/members/1000002", None, 1),  # the same card again: recently seen
    ("balance_slip", "POST", "/v1/print/balance", {"code": "1000003", "lane": 1}, 2),
    ("attach", "PUT", "/v1/checkouts/RT1/member", {"code": "1000001"}, 2),
    ("spend", "POST", "/v1/checkouts/RT1/points", {"points": 100}, 3),
    ("spend", "POST", "/v1/checkouts/RT1/points", {"points": 100}, 3),  # reactions known prompt: read too
    ("voucher", "POST", "/v1/checkouts/RT1/vouchers", {"code": "ALICE-5OFF-0001"}, 1),
    # Before payment: both spends made final.  Our events found (1), their reactions shown (1), then
    # one set of reads for the sale: events, reactions, balance, events, reactions (5); plus the
    # engine's reaction delay (50 ms in the simulator).
    ("tender", "POST", "/v1/checkouts/RT1/tender", None, 7),
    ("complete", "POST", "/v1/checkouts/RT1/complete", {"total": 1000, "paymentConfirmed": True}, 0),
]
LABELS = {1: " (card seen recently)", 5: " (reactions listed promptly)"}
# From this case on, the till knows what engine-check finds against the simulator (reactions listed
# at once), so a spend's confirming read also reads the event's reactions (one more request).
WITH_DIALECT_FROM = 5


def measure(rtt_ms: int) -> list[dict[str, Any]]:
    rows = []
    with SimServer() as sim, tempfile.TemporaryDirectory() as work, VirtualTill(Path(work), sim=sim) as till:
        till.api.get("/v1/members/9999999")  # the admin token, fetched once per day in real life
        httpx.post(sim.url + "/_sim/faults", json={"slow_ms": rtt_ms}, timeout=10)
        till.api.post("/v1/checkouts", json={"transactionId": "RT1", "lane": 1, "cashierId": "c1"})
        for index, (name, method, path, body, target) in enumerate(CASES):
            if index == WITH_DIALECT_FROM:
                till.daemon.client.dialect = sim.sim.dialect.answers()
            before = dict(till.daemon.traffic.requests)
            start = time.perf_counter()
            answer = till.api.request(method, path, json=body)
            seconds = time.perf_counter() - start
            till.wait_for(lambda: till.daemon.store.stats().depth == 0, 30)  # the outbox's own requests too
            after = dict(till.daemon.traffic.requests)
            requests = {k: after.get(k, 0) - before.get(k, 0) for k in after if after.get(k, 0) != before.get(k, 0)}
            rows.append(
                {
                    "use_case": name + LABELS.get(index, ""),
                    "status": answer.status_code,
                    "requests_on_path": requests.get(name, 0),
                    "requests_in_background": requests.get("outbox", 0),
                    "till_visible_ms": round(seconds * 1000),
                    "round_trips": round(seconds * 1000 / rtt_ms, 1),
                    "target_round_trips": target,
                    "target_ms": target * rtt_ms,
                }
            )
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rtt-ms", type=int, default=80)
    args = p.parse_args(argv)
    rows = measure(args.rtt_ms)
    print(f"| use case | engine requests (path + outbox) | till-visible | = round trips of {args.rtt_ms} ms | target |")
    print("|---|---|---|---|---|")
    for r in rows:
        miss = " **miss**" if r["round_trips"] > r["target_round_trips"] + 0.5 else ""
        print(
            f"| {r['use_case']} | {r['requests_on_path']} + {r['requests_in_background']} | {r['till_visible_ms']} ms "
            f"| {r['round_trips']} | ≤ {r['target_round_trips']} ({r['target_ms']} ms){miss} |"
        )
    print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
