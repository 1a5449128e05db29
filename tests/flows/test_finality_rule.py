"""The rule that makes a sale's points final (tillplug.flows.finality), against an engine that
applies reactions whenever it likes, between any two of the till's reads (issue 22, observation 1).

Whatever the order in which the engine applies spends and refunds, and whenever each till
decides, the spends that keep never add up to more than the member had: never both keep."""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from tillplug.engine.models import Event, Reaction, Wallet
from tillplug.flows.finality import GIVE_BACK, KEEP, Finality

MEMBER = "m-1"
T0 = datetime(2026, 12, 7, 6, 0, tzinfo=UTC)


class Engine:
    """Events, reactions applied late and at random, a balance: what Finality reads through a client."""

    def __init__(self, balance: float, rng: random.Random) -> None:
        self.balance = balance
        self.events: list[Event] = []
        self.points: dict[str, float] = {}  # event id -> points its reaction moves
        self.applied: set[str] = set()
        self.rng = rng

    def add(self, kind: str, points: float, key: str, *, reverses: str | None = None, at: float) -> Event:
        payload: dict[str, Any] = {"eventKey": key, "points": points}
        if reverses:
            payload["reverses"] = reverses
        created = (T0 + timedelta(seconds=at)).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
        event = Event(id=f"e{len(self.events)}", type=kind, subject=MEMBER, payload=payload, createdAt=created)
        self.events.append(event)
        self.points[event.id] = -points if kind == "REDEEMED_POINTS" else points
        return event

    def apply(self, event_id: str) -> None:
        if event_id not in self.applied:
            self.applied.add(event_id)
            self.balance += self.points[event_id]

    def _meanwhile(self) -> None:
        """Between any two reads, the engine may apply any reaction still due."""
        for e in self.events:
            if e.id not in self.applied and self.rng.random() < 0.3:
                self.apply(e.id)

    async def recent_events(self, until: Any, *, max_pages: int = 10) -> tuple[list[Event], bool]:
        self._meanwhile()
        found = []
        for e in sorted(self.events, key=lambda e: (e.created_at, e.id), reverse=True):
            found.append(e)
            if until(e):
                return found, True
        return found, True

    async def event_reactions(self, event_id: str) -> list[Reaction]:
        self._meanwhile()
        return [Reaction(type="POINTS", points=self.points[event_id])] if event_id in self.applied else []

    async def get_wallet(self, member_id: str) -> Wallet:
        self._meanwhile()
        return Wallet(pointsBalance=self.balance)


def decide_in_turn(engine: Engine, spends: list[Event], tills: list[int]) -> list[float]:
    """Each till, in the order given, decides once its own deduction shows; a till that gives back
    reports its refund (applied whenever the engine likes).  The points kept."""
    finality = Finality(engine, spend_type="REDEEMED_POINTS", refund_type="POINTS_REFUND")  # type: ignore[arg-type]
    kept: list[float] = []

    async def decide_all() -> None:
        for i in tills:
            engine.apply(spends[i].id)
            verdict = await finality.decide(MEMBER, spends[i])
            assert verdict.outcome in (KEEP, GIVE_BACK), verdict
            if verdict.keep:
                kept.append(spends[i].payload["points"])
            else:
                engine.add("POINTS_REFUND", spends[i].payload["points"], f"r{i}", reverses=f"k{i}", at=1 + i * 0.01)

    asyncio.run(decide_all())
    return kept


SPENDS = st.lists(st.floats(0.05, 0.9), min_size=2, max_size=5)


@given(balance=st.integers(100, 2000), shares=SPENDS, order=st.randoms(use_true_random=False), seed=st.integers(0))
def test_the_spends_that_keep_never_add_up_to_more_than_the_member_had(
    balance: int, shares: list[float], order: random.Random, seed: int
) -> None:
    """Reactions applied at random between any two reads, tills deciding in any order: never both keep."""
    engine = Engine(balance, random.Random(seed))
    spends = [
        engine.add("REDEEMED_POINTS", max(1, int(balance * s)), f"k{i}", at=i * 0.01) for i, s in enumerate(shares)
    ]
    tills = list(range(len(spends)))
    order.shuffle(tills)
    kept = decide_in_turn(engine, spends, tills)
    assert sum(kept) <= balance, (kept, balance)


@given(balance=st.integers(100, 2000), shares=SPENDS, order=st.randoms(use_true_random=False))
def test_with_reactions_not_applied_while_a_till_reads_the_first_spend_that_fits_keeps(
    balance: int, shares: list[float], order: random.Random
) -> None:
    """Reactions late but not landing mid-read: the spend the engine took first keeps whenever the
    balance covers it, whatever order the tills decide in (so never all give back needlessly)."""
    engine = Engine(balance, random.Random(0))
    engine.rng = random.Random(0)
    engine._meanwhile = lambda: None  # type: ignore[method-assign]
    points = [max(1, int(balance * s)) for s in shares]
    spends = [engine.add("REDEEMED_POINTS", p, f"k{i}", at=i * 0.01) for i, p in enumerate(points)]
    tills = list(range(len(spends)))
    order.shuffle(tills)
    kept = decide_in_turn(engine, spends, tills)
    assert sum(kept) <= balance
    if points[0] <= balance:  # the spend the engine took first keeps whenever the balance covers it
        assert points[0] in kept, (kept, points, balance, tills)
    if tills == sorted(tills):  # deciding in the engine's order: each spend keeps if what is left covers it
        left, expected = balance, []
        for p in points:
            if p <= left:
                left -= p
                expected.append(p)
        assert kept == expected, (kept, expected)
