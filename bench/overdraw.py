"""Two and five tills spending one member's points at the same moment, tendering after the spend.

    python -m bench.overdraw [--rounds 50] [--tills 2 5] [--delays 0.1 0.5 2]

Real daemons (``VirtualTill``, the HTTP API) against one engine simulator whose reactions land
``delay`` seconds after each event.  Each round gives a fresh member 1,000 points; every till opens
a sale, attaches the member (scanned) and, released together, spends 700 points (70 %); then all
tender at once.  A till keeps its points when its tender answers 200 with them final; a 409
``insufficient_points`` gave them back.  Once the outboxes have sent every refund and the engine
has applied every reaction, the member's balance says whether the round ended overdrawn.

A till told ``unconfirmed`` (not ready) tenders again after 2 s, up to 3 times, as the docs tell a
POS.  Reported per (tills, delay): rounds overdrawn (goal 0), rounds in which exactly one till kept,
none kept ("all gave back", goal under 10 %), more than one kept (must be 0), tenders still
unconfirmed after those retries (the POS then takes payment with the discount), and what tender
costs the cashier (median and 95th percentile of the first tender), with the machine's load.
Not a CI test: the figures depend on the machine.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from tillplug.commands.virtual.till import VirtualTill, poll_until
from tillplug.sim import SimServer

START = 1000
SPEND = 700
RETENDERS = 3  # a POS told "unconfirmed" (not ready) tenders again, as the docs say
RETENDER_AFTER = 2.0


def at_once(calls: list[Callable[[], tuple[httpx.Response, float]]]) -> list[tuple[httpx.Response, float]]:
    answers: list[tuple[httpx.Response, float] | None] = [None] * len(calls)
    barrier = threading.Barrier(len(calls))

    def worker(i: int) -> None:
        barrier.wait(30)
        answers[i] = calls[i]()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    if any(a is None for a in answers):
        raise RuntimeError("a till did not answer within 120 s")
    return [a for a in answers if a is not None]


def timed(
    till: VirtualTill, path: str, body: dict[str, Any] | None = None
) -> Callable[[], tuple[httpx.Response, float]]:
    def call() -> tuple[httpx.Response, float]:
        start = time.perf_counter()
        answer = till.api.post(path, json=body)
        return answer, time.perf_counter() - start

    return call


def tender_as_documented(till: VirtualTill, tx: str) -> Callable[[], tuple[httpx.Response, float]]:
    """Tender as docs/pos-api.md tells a POS: an answer with the points ``unconfirmed`` is not ready,
    so tender again a few seconds later, up to ``RETENDERS`` times; the time is the first tender's."""
    first = timed(till, f"/v1/checkouts/{tx}/tender")

    def call() -> tuple[httpx.Response, float]:
        answer, seconds = first()
        for _ in range(RETENDERS):
            if answer.status_code != 200 or answer.json()["points"]["state"] != "unconfirmed":
                break
            time.sleep(RETENDER_AFTER)
            answer = till.api.post(f"/v1/checkouts/{tx}/tender")
        return answer, seconds

    return call


def drained(till: VirtualTill) -> bool:
    """The till's outbox has sent every row."""
    return till.daemon.store.stats().depth == 0


def new_member(sim: SimServer, n: int) -> tuple[str, str]:
    member_id = str(uuid.uuid4())
    account = f"{7000000 + n}"
    sim.state.members[member_id] = {
        "id": member_id,
        "accountNumber": account,
        "authIdentifier": f"auth-bench-{n}",
        "pointsBalance": START,
        "lifetimeEarn": START,
    }
    return member_id, account


def told(spend: httpx.Response, tender: httpx.Response | None) -> str:
    if spend.status_code != 200:
        return f"spend {spend.status_code} {spend.json().get('error', {}).get('code', '')}".strip()
    if tender is None:
        return "spend 200"
    if tender.status_code != 200:
        return f"tender {tender.status_code} {tender.json()['error']['code']}"
    return f"tender 200 {tender.json()['points']['state']}"


def measure(tills: int, delay: float, rounds: int, work: Path) -> dict[str, Any]:
    outcomes: list[dict[str, Any]] = []
    tender_s: list[float] = []
    spend_s: list[float] = []
    with SimServer() as sim:
        sim.state.reactors["delay_seconds"] = delay
        daemons = [VirtualTill(work / f"t{tills}-{delay}-{i}", sim=sim, till_id=f"till-{i:02d}") for i in range(tills)]
        try:
            for r in range(rounds):
                member_id, account = new_member(sim, r + int(delay * 1000) * 1000 + tills * 100000)
                txs = [f"R{r}T{i}" for i in range(tills)]
                for till, tx in zip(daemons, txs, strict=True):
                    till.api.post("/v1/checkouts", json={"transactionId": tx, "lane": 1}).raise_for_status()
                    till.api.put(
                        f"/v1/checkouts/{tx}/member", json={"code": account, "entry": "scanned"}
                    ).raise_for_status()
                spends = at_once(
                    [
                        timed(t, f"/v1/checkouts/{tx}/points", {"points": SPEND})
                        for t, tx in zip(daemons, txs, strict=True)
                    ]
                )
                spend_s += [s for a, s in spends if a.status_code == 200]
                tendering = [
                    (t, tx)
                    for (t, tx), (a, _) in zip(zip(daemons, txs, strict=True), spends, strict=True)
                    if a.status_code == 200
                ]
                tenders = at_once([tender_as_documented(t, tx) for t, tx in tendering])
                tender_s += [s for _, s in tenders]
                by_tx = {tx: a for (_, tx), (a, _) in zip(tendering, tenders, strict=True)}
                answers = [told(a, by_tx.get(tx)) for tx, (a, _) in zip(txs, spends, strict=True)]
                kept = sum(1 for a in answers if a.startswith("tender 200"))
                unconfirmed = sum(1 for a in answers if a == "tender 200 unconfirmed")
                outcomes.append({"member": member_id, "answers": answers, "kept": kept, "unconfirmed": unconfirmed})
                for till, tx in zip(daemons, txs, strict=True):  # close the sales; points kept stay spent
                    till.api.post(
                        f"/v1/checkouts/{tx}/void" if kept == 0 else f"/v1/checkouts/{tx}/complete",
                        json=None if kept == 0 else {"total": 0, "paymentConfirmed": True},
                    )
            settled = all(poll_until(functools.partial(drained, t), 120) for t in daemons)
            settled = settled and poll_until(lambda: sim.state.reactions_due == 0, 120)
            for o in outcomes:
                o["balance"] = sim.state.members[o["member"]]["pointsBalance"]
        finally:
            for d in daemons:
                d.close()
    n = len(outcomes)
    counts: dict[str, int] = {}
    for o in outcomes:
        for a in o["answers"]:
            counts[a] = counts.get(a, 0) + 1
    return {
        "tills": tills,
        "delay_s": delay,
        "rounds": n,
        "settled": settled,
        "overdrawn": sum(1 for o in outcomes if o["balance"] < 0),
        "one_kept": sum(1 for o in outcomes if o["kept"] == 1),
        "none_kept": sum(1 for o in outcomes if o["kept"] == 0),
        "more_kept": sum(1 for o in outcomes if o["kept"] > 1),
        "unconfirmed": sum(o["unconfirmed"] for o in outcomes),
        "told": counts,
        "spend_ms_median": round(statistics.median(spend_s) * 1000) if spend_s else None,
        "tender_ms_median": round(statistics.median(tender_s) * 1000) if tender_s else None,
        "tender_ms_p95": round(statistics.quantiles(tender_s, n=20)[-1] * 1000) if len(tender_s) >= 20 else None,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=50)
    p.add_argument("--tills", type=int, nargs="+", default=[2, 5])
    p.add_argument("--delays", type=float, nargs="+", default=[0.1, 0.5, 2.0])
    args = p.parse_args(argv)
    rows = []
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as work:
        for tills in args.tills:
            for delay in args.delays:
                row = measure(tills, delay, args.rounds, Path(work))
                row["load_1m"] = round(os.getloadavg()[0], 2)
                rows.append(row)
                print(json.dumps(row), file=sys.stderr, flush=True)
    print(f"machine: {os.cpu_count()} cores, load before {load_before[0]:.2f}")
    print(
        "| tills | reaction delay | rounds | overdrawn | one kept | none kept | >1 kept | unconfirmed "
        "| spend median | tender median / p95 | load |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['tills']} | {r['delay_s']} s | {r['rounds']} | {r['overdrawn']} | {r['one_kept']} "
            f"| {r['none_kept']} "
            f"| {r['more_kept']} | {r['unconfirmed']} | {r['spend_ms_median']} ms "
            f"| {r['tender_ms_median']} / {r['tender_ms_p95']} ms | {r['load_1m']} |"
        )
    print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
