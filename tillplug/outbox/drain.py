"""The chain's drain plan after an outage: every till sends its own backlog over the same time.

While the engine is away, every till of a chain queues its sales' writes; when it comes back,
the tenant's limit (100 requests/s for the whole chain) is what drains them.  No till can see
the others, but each knows three things: how long the outage lasted (it saw the failures),
how many rows it queued itself, and, off the fleet dashboard, the chain's average requests/s
per till for cashiers' calls (``fleet_interactive``) and for writes (``fleet_writes``).  An
outage of D seconds left the average till D × fleet_writes rows, and the chain has
(0.95 × share - fleet_interactive) per till free once its cashiers are served (the margin on
the whole share), so every till can reckon the same deadline for the outage's rows::

    old rows in by    back + D × fleet_writes / (0.95 × share - fleet_interactive)

and sends its own backlog over the time left.  A till that queued three times the average
sends three times as fast, and they all finish together (a rate per till could not: a busy
till's cashiers use most of its share, and it queued the most).

Rows from the sales made meanwhile queue behind (the outbox is first in, first out); once the
outage's rows are in, they are the backlog, paced the same way towards a second deadline
(what they add up to over what is free once new sales are served too), with the sales that
still go on paced on top at the rate this till queued during the outage.  Then the plan ends
and the usual pacing takes over.

Pure: no clock, no I/O; the pacer asks it with the time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


class ChainFigures(Protocol):
    """What the plan reads of the pacing policy."""

    @property
    def share(self) -> float: ...
    @property
    def plan_headroom(self) -> float: ...
    @property
    def fleet_interactive(self) -> float | None: ...
    @property
    def fleet_writes(self) -> float | None: ...


@dataclass
class DrainPlan:
    back: float  # when the engine came back (between this till's last failure and first answer)
    answered: float  # this till's first answer after the outage: rows queued before it are the outage's
    outage: float  # seconds it was away, as this till reckons it
    old_until: float  # the chain's deadline for the rows the outage left
    catch_up_until: float | None  # ...and for the rows queued meanwhile (None: no room for them)
    old_rows: int | None = None  # rows queued before ``answered`` still to send, as the deliverer last said
    backlog: int | None = None  # every row waiting, as the deliverer last said
    inflow: float = 0.0  # rows/s this till queues: its outage's rows over the outage

    @classmethod
    def after_outage(cls, figures: ChainFigures, *, began: float, back: float, answered: float) -> DrainPlan | None:
        """The plan for an outage from ``began`` to ``back``, first answered at ``answered``;
        None without the chain's averages."""
        interactive, writes = figures.fleet_interactive, figures.fleet_writes
        # The margin is kept on the whole share, not on what is free: the limiter's bursts grow with
        # all it serves, and a chain whose cashiers use most of its share has little free to trim.
        usable = figures.plan_headroom * figures.share
        if interactive is None or writes is None or interactive >= usable:
            return None
        outage = max(0.0, back - began)
        old = outage * writes / (usable - interactive)
        free_for_catch_up = usable - interactive - writes
        catch_up = old * writes / free_for_catch_up if free_for_catch_up > 0 else None
        return cls(
            back=back,
            answered=answered,
            outage=outage,
            old_until=back + old,
            catch_up_until=None if catch_up is None else back + old + catch_up,
        )

    def __post_init__(self) -> None:
        self.planned = (self.old_until, self.catch_up_until)  # the chain's deadlines, before any 429

    def told(self, backlog: int, old_rows: int) -> bool:
        """The deliverer says how many rows wait (this one included) and how many of them were
        queued before ``answered``; False when the plan is over."""
        if self.old_rows is None:
            self.inflow = old_rows / self.outage if self.outage > 0 else 0.0
        self.backlog, self.old_rows = backlog, old_rows
        return backlog > 1 or old_rows > 0  # the last of the outage's rows keeps to the plan too

    def rate(self, now: float) -> float | None:
        """Requests/s to keep to the plan now; None when it has nothing to say (the usual pacing applies)."""
        if self.backlog is None or self.old_rows is None:
            return None
        if self.old_rows > 0:
            return self.old_rows / max(1.0, self.old_until - now)
        if self.catch_up_until is None:
            return None
        return self.backlog / max(1.0, self.catch_up_until - now) + self.inflow

    def slow_down(self, now: float, factor: float) -> None:
        """A 429: from now on ``factor`` times the rate the plan asks for, the deadlines moved to match
        (so that falling behind never turns into a rush at the end)."""
        if (rate := self.rate(now)) is not None and rate > 0:
            self._repace(now, rate * factor)

    def speed_up(self, now: float, factor: float) -> None:
        """A delivery: ``factor`` times faster, back towards (never past) the chain's plan.

        Multiplicative and small: a fleet of tills each halving on a 429 and growing by a fraction
        of a percent per delivery settles where about that fraction of its requests meet a 429
        (roughly growth / ln 2), which an additive step (a tenth of a drain rate) would not."""
        if (rate := self.rate(now)) is not None and rate > 0:
            self._repace(now, rate * factor)

    def _repace(self, now: float, rate: float) -> None:
        if self.old_rows:
            old_until = max(self.planned[0], now + self.old_rows / rate)
            if self.catch_up_until is not None:
                self.catch_up_until += old_until - self.old_until
            self.old_until = old_until
        elif self.catch_up_until is not None and self.backlog and self.planned[1] is not None:
            new_rows = max(rate - self.inflow, rate / 2)  # the sales going on keep their part
            self.catch_up_until = max(self.planned[1], now + self.backlog / new_rows)

    def deadline(self) -> float:
        """The deadline being paced to now."""
        if self.old_rows != 0 or self.catch_up_until is None:
            return self.old_until
        return self.catch_up_until


__all__ = ["DrainPlan"]
