"""Do the tenant's reactors take and give back the points a till reports?

A missing or conditional redemption reactor accepts REDEEMED_POINTS and deducts nothing, and the
refund reactor then invents points when the sale is voided; a reactor whose rule differs deducts
another number than the till reported.  ``test_reaction`` answers what the reactors would do with
an event without applying it, so the same 1-point spend and refund can be asked at any time:
``engine-check`` asks it, and the daemon asks it at every start when engine-check stored the test
member it used (``engine.dialect_file``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tillplug.engine.models import EventDefinition, new_event_key, points_of, reactor_points
from tillplug.errors import EngineAuthError, TillplugError

if TYPE_CHECKING:
    from tillplug.config.model import EventTypes
    from tillplug.engine.client import EngineClient

log = logging.getLogger(__name__)
OK, MISSING, RATE_DIFFERS, UNKNOWN = "ok", "missing", "rate_differs", "unknown"
# Reactions shapes engine-check saw listed promptly after a spend (the dialect file's ``reactions``).
PROMPT_REACTIONS = ("flat", "nested")
# ... and listed at all, if late: only such an engine can show a deduction never applied.
LISTED_REACTIONS = (*PROMPT_REACTIONS, "delayed")


async def applied_within(client: EngineClient, event_id: str, seconds: float, first_pause: float = 0.1) -> bool | None:
    """Whether the engine shows ``event_id``'s points reaction within ``seconds``: True once it does;
    False if it answered, to the end, that it has not; None if no read answered.

    What every give-back of a deduction asks first (a void, a deduction landed on a closed sale,
    a crash's refund-if-it-landed): a deduction the engine never applied (a missing or conditional
    redemption reactor) is never refunded, or the refund would invent points."""
    deadline = time.monotonic() + seconds
    answered, pause = False, first_pause
    while True:
        try:
            if points_of(await client.event_reactions(event_id)) != 0:
                return True
            answered = True
        except EngineAuthError:
            raise
        except TillplugError as exc:
            log.info("reactions of %s unreadable (%s)", event_id, exc.code)
        left = deadline - time.monotonic()
        if left <= 0:
            return False if answered else None
        await asyncio.sleep(min(pause, left))
        pause = min(0.5, pause * 2)


@dataclass(frozen=True)
class ReactorVerdict:
    event_type: str
    outcome: str  # OK, MISSING, RATE_DIFFERS or UNKNOWN
    expected: int
    moved: float | None = None
    trouble: str | None = None  # the error code when test_reaction could not be asked

    def describe(self) -> str:
        """One line for engine-check's table."""
        if self.outcome == OK:
            return "ok"
        if self.outcome == MISSING:
            return "MISSING: the engine accepts the event and moves no points (a missing or conditional reactor)"
        if self.outcome == RATE_DIFFERS:
            return f"RATE DIFFERS: {self.moved:+g} points for {self.expected:+d}"
        return f"unknown: test_reaction answered {self.trouble}"


def reactor_events(event_types: EventTypes) -> dict[str, int]:
    """Each event type a till sends that moves points, and what its reactors must do with 1 point:
    a spend and its refund, a return's take-back and give-back (often the refund's own type)."""
    return {
        event_types.redeemed_points: -1,
        event_types.points_refund: 1,
        event_types.points_taken_back: -1,
        event_types.points_given_back: 1,
    }


async def check_reactors(
    client: EngineClient, subject: str, event_types: EventTypes, ids: dict[str, str]
) -> list[ReactorVerdict]:
    """A 1-point event of each kind through ``test_reaction`` (no side effects): each reactor must
    move exactly that point."""
    verdicts = []
    for event_type, expected in reactor_events(event_types).items():
        payload: dict[str, object] = {"eventKey": new_event_key(), **ids, "transactionId": "reactor-check", "points": 1}
        if event_type == event_types.points_taken_back:
            payload["returnId"] = "reactor-check"
        event = EventDefinition(type=event_type, subject=subject, executor="tillplug-reactor-check", payload=payload)
        try:
            moved = reactor_points(await client.test_reaction(event))
        except TillplugError as exc:
            verdicts.append(ReactorVerdict(event_type, UNKNOWN, expected, trouble=exc.code))
            continue
        outcome = OK if moved == expected else MISSING if moved == 0 else RATE_DIFFERS
        verdicts.append(ReactorVerdict(event_type, outcome, expected, moved))
    return verdicts


def _what_goes_wrong(v: ReactorVerdict) -> str:
    if v.expected > 0:
        return "a void or a return would not give a member's points back. "
    if "TAKEN" in v.event_type.upper() or "RETURN" in v.event_type.upper():
        return "a returned sale would keep the points it earned. "
    return "a points spend would give a discount the member never pays for. "


def reactor_problems(verdicts: list[ReactorVerdict]) -> dict[str, str]:
    """Health problems (code → a sentence for the technician) from the verdicts; unknown is none."""
    problems: dict[str, str] = {}
    for v in verdicts:
        if v.outcome == MISSING:
            problems["reactor_missing"] = (
                f"The loyalty service's reactor for {v.event_type} moves no points (missing or conditional): "
                + _what_goes_wrong(v)
                + "Check the tenant's reactors (tillplug engine-check)."
            )
        elif v.outcome == RATE_DIFFERS:
            problems["rate_mismatch"] = (
                f"The loyalty service's reactor for {v.event_type} moves {v.moved:+g} points for "
                f"{v.expected:+d} reported: its rule differs from what this till reports. Tell a technician."
            )
    return problems


__all__ = [
    "LISTED_REACTIONS",
    "MISSING",
    "OK",
    "PROMPT_REACTIONS",
    "RATE_DIFFERS",
    "UNKNOWN",
    "ReactorVerdict",
    "applied_within",
    "check_reactors",
    "reactor_events",
    "reactor_problems",
]
