"""When a sale's points become final: the rule two tills apply to one member without talking.

WLL applies deductions asynchronously, allows a negative balance and has no
conditional write, so two tills can each spend most of one member's points
before either deduction shows.  At tender (before payment) each till waits
until the engine shows its own deduction applied, then reads what the engine
holds for the member: the balance, the recent spends and refunds, and which of
them the engine has applied.  The rule is:

    Order the member's spends by when the engine created them (``createdAt``,
    then event id).  A spend is kept if the member's balance covers it once
    every spend before it is kept and every spend after it is given back.

Every till reads the same order from the engine, so of two tills that overdraw
one member together the earlier keeps (if the balance covered it) and the
later gives back: never both keep.  Reads are taken so that what cannot be
told counts against keeping: a spend not shown applied before the balance was
read is subtracted again; a refund shown applied after it is taken as already
in it.  Both give back only when the reads are that uncertain.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from tillplug.engine.client import EngineClient, created_at
from tillplug.engine.models import Event, points_of
from tillplug.errors import EngineAuthError, EngineProtocolError, TillplugError

log = logging.getLogger(__name__)
# Spends created this long before ours are taken as applied (and already in the balance): reactions
# take "almost instant to a few seconds"; the same bound as the unseen deductions of points.py.
WINDOW = 60.0
FIRST_POLL = 0.1  # seconds before re-reading our own deduction's reactions; doubled up to POLL_MAX
POLL_MAX = 0.5
READ_ATTEMPTS = 3  # reads of balance and reactions, until no reaction was applied while they were out

KEEP, GIVE_BACK, UNKNOWN = "keep", "give_back", "unknown"


@dataclass(frozen=True)
class Verdict:
    """``keep``, ``give_back`` or ``unknown`` (the engine did not show enough in time), and why."""

    outcome: str
    reason: str
    balance: float | None = None  # the member's balance once later spends are given back

    @property
    def keep(self) -> bool:
        return self.outcome == KEEP


@dataclass(frozen=True)
class _Spend:
    event: Event
    key: str
    points: float
    when: datetime

    @property
    def order(self) -> tuple[datetime, str]:
        return self.when, self.event.id


async def _applied(client: EngineClient, event_id: str) -> bool | None:
    """True if the engine lists the event's points reaction, False if not (yet), None if unreadable."""
    try:
        return points_of(await client.event_reactions(event_id)) != 0
    except EngineAuthError:
        raise
    except Exception as exc:  # a read that only confirms: never a failure of its own
        log.info("reactions of %s unreadable (%s)", event_id, type(exc).__name__)
        return None


async def wait_applied(client: EngineClient, event_id: str, seconds: float) -> float | None:
    """Wait up to ``seconds`` for the engine to list ``event_id``'s points reaction: its points, or None."""
    deadline = time.monotonic() + seconds
    pause = FIRST_POLL
    while True:
        try:
            points = points_of(await client.event_reactions(event_id))
        except EngineAuthError:
            raise
        except Exception as exc:  # a read that only confirms: never a failure of its own
            log.info("reactions of %s unreadable (%s)", event_id, type(exc).__name__)
            points = 0
        if points:
            return points
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        await asyncio.sleep(min(pause, left))
        pause = min(POLL_MAX, pause * 2)


class Finality:
    """The rule above, for one engine: which event types spend and give back points."""

    def __init__(self, client: EngineClient, *, spend_type: str, refund_type: str) -> None:
        self.client = client
        self.spend_type = spend_type
        self.refund_type = refund_type

    async def find(self, event_keys: list[str]) -> dict[str, Event]:
        """Our spends as the engine lists them (id and ``createdAt``), by eventKey; those not among the
        latest events are missing from the answer."""
        wanted, found = set(event_keys), {}

        def all_found(e: Event) -> bool:
            key = e.payload.get("eventKey")
            if key in wanted:
                found[key] = e
            return len(found) == len(wanted)

        await self.client.recent_events(all_found)
        return found

    async def decide(self, member_id: str, mine: Event) -> Verdict:
        """Keep or give back the spend ``mine`` of ``member_id``, from what the engine shows now."""
        return (await self.decide_many(member_id, [mine]))[0]

    async def decide_many(self, member_id: str, mine: list[Event]) -> list[Verdict]:
        """The same for several spends of one sale, from one set of reads."""
        try:
            return await self._decide(member_id, mine)
        except EngineAuthError:
            raise
        except TillplugError as exc:
            return [Verdict(UNKNOWN, f"the loyalty service's answers could not be read ({exc.code})") for _ in mine]

    async def _decide(self, member_id: str, mine: list[Event]) -> list[Verdict]:
        if not mine:
            return []
        times = [created_at(m) for m in mine]
        if any(t is None for t in times):
            return [Verdict(UNKNOWN, "the loyalty service does not say when it took this deduction") for _ in mine]
        since = min(t for t in times if t is not None) - timedelta(seconds=WINDOW)
        for attempt in range(READ_ATTEMPTS):
            # Shown applied before the balance was read: surely in it.  Not shown applied after it:
            # surely not.  In between (applied while the balance was read) it cannot be told: read again.
            spends, refunds = await self._since(member_id, since)
            before = await self._shown_applied([s.event for s in spends] + refunds)
            balance: float = (await self.client.get_wallet(member_id)).points_balance
            spends, refunds = await self._since(member_id, since)
            after = await self._shown_applied([s.event for s in spends] + refunds)
            if not any(shown and not before.get(e) for e, shown in after.items()) or attempt == READ_ATTEMPTS - 1:
                break
        in_balance = {e for e, shown in before.items() if shown}  # a spend in doubt counts as not in it
        refund_shown = {e for e, shown in after.items() if shown}  # a refund in doubt counts as in it
        verdicts = []
        for m in mine:
            covered = self._covered(spends, refunds, in_balance, refund_shown, balance, m.id)
            if covered is None:
                verdicts.append(Verdict(UNKNOWN, "the loyalty service no longer lists this deduction"))
            elif covered >= 0:
                verdicts.append(Verdict(KEEP, "the balance covers it", covered))
            else:
                verdicts.append(Verdict(GIVE_BACK, "another till spent these points first", covered))
        return verdicts

    async def _shown_applied(self, events: list[Event]) -> dict[str, bool]:
        seen = await asyncio.gather(*(_applied(self.client, e.id) for e in events))
        return {e.id: shown is True for e, shown in zip(events, seen, strict=True)}

    @staticmethod
    def _covered(
        spends: list[_Spend],
        refunds: list[Event],
        in_balance: set[str],
        refund_shown: set[str],
        balance: float,
        mine_id: str,
    ) -> float | None:
        """The member's balance once every spend before ours keeps and every one after gives back."""
        mine = next((s for s in spends if s.event.id == mine_id), None)
        if mine is None:
            return None
        reverses: dict[str, list[str]] = {}
        for r in refunds:
            key = r.payload.get("reverses")
            if isinstance(key, str):
                reverses.setdefault(key, []).append(r.id)
        settled = balance  # as if every spend listed were applied and none given back
        later = 0.0
        for s in spends:
            given_back = reverses.get(s.key, []) if s.event.id != mine_id else []
            if given_back:
                # Given back already: it neither keeps nor will give back, and once both are applied
                # the balance holds neither.  A spend in doubt counts as not in the balance, a refund
                # in doubt as in it.
                if s.event.id in in_balance:
                    settled += s.points
                if any(r in refund_shown for r in given_back):
                    settled -= s.points
                continue
            if s.event.id not in in_balance:
                settled -= s.points
            if s.order > mine.order:
                later += s.points
        return settled + later

    async def _since(self, member_id: str, since: datetime) -> tuple[list[_Spend], list[Event]]:
        """The member's spends and refunds the engine created at or after ``since``."""

        def older(e: Event) -> bool:
            created = created_at(e)
            return created is not None and created < since

        events, reached = await self.client.recent_events(older)
        if not reached:
            raise EngineProtocolError("Too many events at the loyalty service to read back to this deduction.")
        recent = [e for e in events if e.subject == member_id and not older(e)]
        spends = [s for e in recent if (s := self._spend(e)) is not None]
        return spends, [e for e in recent if e.type == self.refund_type]

    def _spend(self, event: Event) -> _Spend | None:
        if event.type != self.spend_type:
            return None
        points: Any = event.payload.get("points")
        when = created_at(event)
        key = event.payload.get("eventKey")
        if not isinstance(points, (int, float)) or isinstance(points, bool) or when is None:
            return None
        return _Spend(event, key if isinstance(key, str) else event.id, float(points), when)
