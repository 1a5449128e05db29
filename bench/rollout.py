"""A phased rollout across a chain's fleet, on a virtual clock: does a bad version stop in the first
phase, halted by the figures the tills' agents send, and how long does a good one take?

    python -m bench rollout [--tills 5000] [--seed 1] [--bad-start-failures 0.3] [--bad-degraded 0.2]

What is tillplug's own and what is modelled:

* phasing: the repository's ``Phased-Update-Percentage`` (packaging/apt_repo.py ``phase``) at
  1, 10, 50 and 100 %; each till's percentile is a uniform draw in 0..100 from the package, the
  version and its machine-id, as apt draws it; a till is in the phase when its percentile is at
  most the percentage (apt's rule);
* each till runs ``apt-get upgrade`` once an hour at its own minute (apt-daily-upgrade, or the
  chain's Ansible run); the postinst schedules ``restart-when-ready``, which restarts at the first
  moment without a sale (sales arrive as a Poisson process, each lasting a few minutes; busy and
  quiet stores), at the latest after 15 minutes, and rolls the version back when it does not
  answer within 60 s of the restart;
* the agents push each till's figures every minute: whether it is up and healthy, and the
  version its ``/v1/health`` reports.  The centre halts a version (sets its phase to 0) when,
  among the tills that installed it and reported since, more than ``--halt-share`` are down,
  degraded or rolled back, once ``--halt-min`` tills have reported; it moves to the next phase
  after ``--soak`` minutes with at least ``--soak-share`` of the phase's tills running the
  version and nothing to halt for;
* a bad version fails to start on ``--bad-start-failures`` of the tills (they roll back) and
  runs degraded on ``--bad-degraded`` of the others.

The last line printed is one JSON object per version (``good`` and ``bad``): the phase reached,
tills updated, minutes to each phase, the restarts that found a safe moment and those that ran
out of the bound, and for the bad version the tills that took it before the halt.
"""

from __future__ import annotations

import argparse
import hashlib
import heapq
import json
import random
import sys
from dataclasses import dataclass, field
from typing import Any

PHASES = (1, 10, 50, 100)
RESTART_BOUND_MIN = 15.0  # restart-when-ready --within 900
START_BOUND_MIN = 1.0  # restart-when-ready --start-within 60
REPORT_EVERY_MIN = 1.0  # the agent's remote_write interval
HORIZON_MIN = 7 * 24 * 60.0


def percentile(package: str, version: str, machine_id: str) -> int:
    """A till's place in a phase: a uniform draw in 0..100 from package, version and machine-id."""
    digest = hashlib.sha256(f"{package}-{version}-{machine_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % 101


@dataclass
class Till:
    machine_id: str
    upgrade_minute: float  # its apt run, once an hour at this minute
    sales_per_hour: float
    version: str = "A"
    state: str = "ok"  # ok | degraded | down
    rolled_back_from: str | None = None


@dataclass
class Rollout:
    version: str
    bad_start: float
    bad_degraded: float
    phase_index: int = 0
    phase_started: float = 0.0
    halted_at: float | None = None
    phase_times: list[float] = field(default_factory=list)
    took: int = 0  # tills that installed it
    safe_restarts: int = 0
    bounded_restarts: int = 0
    rollbacks: int = 0
    running: int = 0  # tills running it
    waits: list[float] = field(default_factory=list)  # minutes from install to restart

    @property
    def percent(self) -> int:
        return 0 if self.halted_at is not None else PHASES[self.phase_index]


def minutes_to_safe_moment(rng: random.Random, sales_per_hour: float) -> tuple[float, bool]:
    """Minutes until the first moment without a sale, bounded; and whether one came in time."""
    rate = sales_per_hour / 60.0
    now = 0.0
    busy_until = rng.expovariate(1 / 3.0) if rng.random() < min(0.95, rate * 3.0) else 0.0  # a sale may be on
    while now < RESTART_BOUND_MIN:
        if now >= busy_until:
            return now, True  # the poll finds no sale open (polled every 5 s: the gap is enough)
        now = busy_until
        gap = rng.expovariate(rate) if rate > 0 else RESTART_BOUND_MIN
        if gap > 5 / 60:  # a gap longer than one poll: the next poll sees it
            return now, True
        busy_until = now + gap + rng.expovariate(1 / 3.0)
    return RESTART_BOUND_MIN, False


def simulate(tills: int, seed: int, args: argparse.Namespace, bad: bool) -> dict[str, Any]:
    rng = random.Random(seed)
    fleet = [
        Till(
            machine_id=f"{rng.getrandbits(128):032x}",
            upgrade_minute=rng.uniform(0, 60),
            sales_per_hour=rng.gammavariate(2.0, 6.0),  # quiet and busy stores: mean 12 sales an hour
        )
        for _ in range(tills)
    ]
    rollout = Rollout("B-bad" if bad else "B", args.bad_start_failures if bad else 0, args.bad_degraded if bad else 0)
    place = [percentile("tillplug", rollout.version, t.machine_id) for t in fleet]
    events: list[tuple[float, int, str, int]] = [(t.upgrade_minute, i, "apt", i) for i, t in enumerate(fleet)]
    heapq.heapify(events)
    order = len(events)
    reports: dict[int, tuple[float, str]] = {}  # till -> (minute the centre has it, state)
    next_check = REPORT_EVERY_MIN
    while events:
        minute, _, kind, i = heapq.heappop(events)
        if minute > HORIZON_MIN:
            break
        while next_check <= minute:  # the centre looks at what the agents have sent
            decide(rollout, place, reports, next_check, args)
            next_check += REPORT_EVERY_MIN
        if rollout.halted_at is not None and minute > rollout.halted_at + 120:
            break  # halted, and every restart it had scheduled is long done
        if rollout.percent == 100 and rollout.running + rollout.rollbacks == len(fleet):
            break
        till = fleet[i]
        if kind == "apt":
            if till.version == "A" and till.rolled_back_from is None and place[i] <= rollout.percent:
                wait, found = minutes_to_safe_moment(rng, till.sales_per_hour)
                rollout.took += 1
                rollout.safe_restarts += found
                rollout.bounded_restarts += not found
                rollout.waits.append(wait)
                heapq.heappush(events, (minute + wait, order, "restart", i))
                order += 1
            else:
                heapq.heappush(events, (minute + 60, order, "apt", i))
                order += 1
        elif rng.random() < rollout.bad_start:  # not up within 60 s of the restart: rolled back
            till.rolled_back_from = rollout.version
            rollout.rollbacks += 1
            reports[i] = (minute + START_BOUND_MIN + REPORT_EVERY_MIN, "rolled_back")
        else:
            till.version = rollout.version
            rollout.running += 1
            till.state = "degraded" if rng.random() < rollout.bad_degraded else "ok"
            reports[i] = (minute + REPORT_EVERY_MIN, till.state)
    return summary(rollout, fleet)


def decide(rollout: Rollout, place: list[int], reports: dict[int, tuple[float, str]], now: float, args: Any) -> None:
    if rollout.halted_at is not None:
        return
    seen = [state for at, state in reports.values() if at <= now]
    if len(seen) >= args.halt_min and sum(state != "ok" for state in seen) / len(seen) > args.halt_share:
        rollout.halted_at = now  # apt_repo.py phase --phased 0: no more tills take it
        return
    if rollout.phase_index == len(PHASES) - 1 or now - rollout.phase_started < args.soak:
        return
    in_phase = sum(p <= PHASES[rollout.phase_index] for p in place)
    if in_phase and rollout.running / in_phase >= args.soak_share:
        rollout.phase_times.append(now)
        rollout.phase_index += 1
        rollout.phase_started = now


def summary(rollout: Rollout, fleet: list[Till]) -> dict[str, Any]:
    return {
        "version": rollout.version,
        "tills": len(fleet),
        "phase_reached_pct": PHASES[rollout.phase_index],
        "halted_at_min": rollout.halted_at,
        "hours_to_next_phase": [round(t / 60, 1) for t in rollout.phase_times],
        "tills_that_took_it": rollout.took,
        "running_it_at_end": sum(t.version == rollout.version for t in fleet),
        "rolled_back": rollout.rollbacks,
        "restarts_at_a_safe_moment": rollout.safe_restarts,
        "restarts_after_the_bound": rollout.bounded_restarts,
        "restart_wait_p50_min": round(_pct(rollout.waits, 50), 2),
        "restart_wait_p99_min": round(_pct(rollout.waits, 99), 2),
    }


def _pct(values: list[float], p: float) -> float:
    ordered = sorted(values) or [0.0]
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench rollout", description=__doc__.split("\n\n")[0])
    p.add_argument("--tills", type=int, default=5000)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--bad-start-failures", type=float, default=0.3, help="share of tills where B-bad does not start")
    p.add_argument("--bad-degraded", type=float, default=0.2, help="share of the others where it runs degraded")
    p.add_argument("--halt-share", type=float, default=0.05, help="halt above this share of bad reports")
    p.add_argument("--halt-min", type=int, default=10, help="reports needed before the halt rule speaks")
    p.add_argument("--soak", type=float, default=240, help="minutes a phase runs before the next")
    p.add_argument("--soak-share", type=float, default=0.9, help="share of a phase's tills on the version first")
    args = p.parse_args(argv)
    results = {
        "good": simulate(args.tills, args.seed, args, bad=False),
        "bad": simulate(args.tills, args.seed, args, bad=True),
    }
    for name, r in results.items():
        phases = ", ".join(f"{pct} % after {h} h" for pct, h in zip(PHASES[1:], r["hours_to_next_phase"], strict=False))
        halted = (
            f"halted at {r['halted_at_min']:.0f} min in the {r['phase_reached_pct']} % phase"
            if r["halted_at_min"] is not None
            else "not halted"
        )
        print(
            f"{name:>4}: {r['tills_that_took_it']} of {r['tills']} tills took {r['version']}; {halted}; "
            f"phases: {phases or 'none'}; {r['rolled_back']} rolled back; restarts: "
            f"{r['restarts_at_a_safe_moment']} at a safe moment (wait p50 {r['restart_wait_p50_min']} min, "
            f"p99 {r['restart_wait_p99_min']} min), {r['restarts_after_the_bound']} after the 15 min bound"
        )
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
