"""Adaptive pacing of the outbox: this till's share of the tenant's rate limit, adjusted by
what the engine answers.

The tenant's limit (100 requests/s, burst 400) is shared by every till of a chain, so the
outbox drains a backlog at a rate that starts at the configured share and then follows the
engine (additive increase, multiplicative decrease):

* a 429, a 503, a timeout or a refused connection cuts the rate (``decrease``); a 429's
  ``Retry-After`` is honoured, up to an hour;
* each delivery raises it by a small step (``increase`` times the share), up to ``ceiling`` times it.
  The ceiling is 1 unless the config asks for more (``[outbox] above_share``): the configured
  rate is never exceeded by default; a chain that sets it lets a till with a large backlog take
  what quieter tills leave unused (every rate below, drain plans included, stays under it);
* the interactive calls of this till come first: their recent request rate is left free
  out of the share, and while they are being rate limited the outbox does not send at all;
  once the rate has grown above the share, what it grew by goes to the outbox whole, so a till
  whose cashiers use its whole share still delivers its sales' writes;
* after an outage (failures for ``outage_after`` seconds) the first answer (to the outbox or
  to a cashier's call) does not release the backlog at once: the till waits a random part of
  a few request intervals (``restart_intervals`` / share, at most ``restart_jitter`` seconds)
  and starts with an empty bucket at the share, so a fleet coming back does not arrive
  together; then the rows that waited only for the engine are due again at once, and the
  pacer alone spreads them;
* while the engine is away, rows are tried at ``probe`` times the share (at most every 30 s),
  not after each row's own backoff, and a 429 counts as an answer: a till hears of the return
  within one probe interval;
* with the chain's averages known (``fleet_interactive`` and ``fleet_writes``, off the fleet
  dashboard), the restart instead follows the chain's drain plan (``drain.py``): every till
  sends its own backlog towards one deadline the whole chain shares, its first send a full
  interval after it heard of the return (the fleet hears of it spread over a probe interval).
  The outage's start and end are each taken as the midpoint between the last answer and the
  first failure this till saw, and between its last failure and its first answer; a till that
  saw the outage begin late (a quiet one) takes it to have begun at most ``start_uncertainty``
  before its first failure.  A 429 halves this till's part of the plan and moves its deadline;
  deliveries win it back slowly (``plan_growth``), never past the plan.

Pure: the clock and the random source are injected, nothing here sleeps or does I/O.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import KW_ONLY, dataclass

from tillplug.engine.traffic import Traffic, bounded_hold
from tillplug.errors import EngineUnavailable, OutcomeUnknown, RateLimited
from tillplug.outbox.drain import DrainPlan

MIN_WAIT = 0.001  # seconds: shorter waits are rounded to none (a clock need not move that little)
MIN_PROBE_INTERVAL = 30.0  # seconds: a down engine is tried at most this often by one till

# The pacing's fixed figures.  Config reaches only the share, the burst and the chain's two
# averages; these are the design's, measured in the fleet benchmark (docs/performance.md).  Each
# is the default of the ``PacingPolicy`` field of the same name, the seam tests and the benchmark set.
FLOOR = 1 / 8  # the lowest rate, as a fraction of the share (a down engine is probed at it)
# The highest rate, as a multiple of the share: 1, the configured rate is a ceiling, unless the config sets
# ``above_share`` (taking what other tills' cashiers leave is then allowed, up to it).
CEILING = 1.0
DECREASE = 0.5  # the rate is multiplied by this on a 429 or 503
INCREASE = 0.05  # each success adds this fraction of the share
# Seconds in which the rate doubles while rows wait on it and nothing cuts it; None: off.
# Faster drains for busy tills at the price of more 429s (see the fleet benchmark in docs/performance.md).
DOUBLING: float | None = None
RESTART = 1.0  # after an outage the rate starts again at this fraction of the share
HEADROOM = 0.9  # with fleet_interactive: of the proportional share, the part the outbox uses
PLAN_HEADROOM = 0.95  # the part of the share a drain plan fills, cashiers' calls included
PLAN_GROWTH = 0.005  # after a 429 slowed the drain plan, each delivery speeds it up by this fraction
OUTAGE_AFTER = 10.0  # seconds of failures that make an outage
# While the engine is away, rows are tried at this fraction of the share (one request every
# 100 s at a share of 0.02/s), at most every ``MIN_PROBE_INTERVAL``: the till hears of the
# engine's return within one interval, and its drain plan is only as exact as that.
PROBE = 0.5
# A quiet till sees an outage begin only at its next request, maybe an hour on: the drain plan
# then takes the outage to have begun at most this long before its first failure.  Such a till
# queued little, so sending it a little early costs the chain nothing, while a deadline late
# by half an hour would make it the last of the chain to finish.
START_UNCERTAINTY = 120.0
RESTART_INTERVALS = 2.0  # the restart is spread over this many request intervals at the share...
RESTART_JITTER = 120.0  # ...and over this many seconds at most


@dataclass(frozen=True)
class PacingPolicy:
    """The figures a ``Pacer`` follows: the config's four (``wiring.pacing_policy``), then the fixed
    ones, keyword-only, which only tests and the fleet benchmark change."""

    share: float  # requests/s: this till's share of the tenant's limit
    burst: int = 20  # requests that may go at once after a quiet spell
    # The chain's average interactive requests/s per till (from the fleet dashboard), if known: the
    # share left after interactive calls is then split in proportion to how busy this till is.
    fleet_interactive: float | None = None
    # The chain's average outbox writes/s per till; with fleet_interactive, a backlog is paced
    # towards a drain deadline the whole chain shares (drain.py).
    fleet_writes: float | None = None
    _: KW_ONLY
    floor: float = FLOOR
    ceiling: float = CEILING
    decrease: float = DECREASE
    increase: float = INCREASE
    doubling: float | None = DOUBLING
    restart: float = RESTART
    headroom: float = HEADROOM
    plan_headroom: float = PLAN_HEADROOM
    plan_growth: float = PLAN_GROWTH
    outage_after: float = OUTAGE_AFTER
    probe: float = PROBE
    start_uncertainty: float = START_UNCERTAINTY
    restart_intervals: float = RESTART_INTERVALS
    restart_jitter: float = RESTART_JITTER

    @property
    def min_rate(self) -> float:
        return self.share * self.floor

    @property
    def max_rate(self) -> float:
        return self.share * self.ceiling


class Pacer:
    """When the outbox may send its next request, and how that changes with each answer."""

    def __init__(
        self,
        policy: PacingPolicy,
        *,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
        traffic: Traffic | None = None,
    ) -> None:
        self.policy = policy
        self.clock = clock
        self.rng = rng or random.Random()
        self.traffic = traffic
        self.rate = policy.share
        self.tokens = float(policy.burst)
        self.stamp = clock()
        self.hold_until = 0.0
        self.failing_since: float | None = None
        self.cuts = 0
        self._recovered = False
        self._grown_at = self.stamp
        self._constrained = False  # the last request had to wait for a token: the rate is what limits
        self._wake_at: float | None = None  # when the wait last asked for ends (None: it said go)
        self.answered_at: float | None = None  # the engine last answered this till's outbox
        self.outage_began: float | None = None  # this till's estimate of when the engine went away
        self.failed_at: float | None = None  # the outbox's last failure
        self.plan: DrainPlan | None = None  # after an outage, when the chain's averages are known

    # -- asking ------------------------------------------------------------------

    def allowed_rate(self) -> float:
        """The rate the outbox may use now: the adapted rate less what interactive calls use,
        or after an outage what the chain's drain plan asks."""
        p = self.policy
        if self.in_outage():
            return 1 / self.probe_interval()
        if self.plan is not None and (planned := self.plan.rate(self.clock())) is not None:
            return min(p.max_rate, max(p.min_rate, planned))
        # The adapted rate scales what is left after the cashiers' calls (cutting before taking
        # them off would leave nothing: half a share less a till's look-ups is about zero).
        scale = self.rate / p.share
        if p.fleet_interactive and self.traffic:
            # This till's part of what the chain's tills leave free, in proportion to its own
            # cashiers' traffic: a till twice as busy queued twice the backlog.
            weight = min(p.ceiling, self.traffic.busy_rate() / p.fleet_interactive)
            free = p.headroom * weight * max(0.0, p.share - p.fleet_interactive)
        else:
            interactive = self.traffic.interactive_rate() if self.traffic else 0.0
            free = max(0.0, p.share - interactive)
            # Grown above its share (deliveries while nothing cut it), a till gives its outbox all it
            # grew by (rate - interactive exceeds scale * free exactly when rate > share): scaling only
            # what its cashiers leave would hold a till whose cashiers use its whole share at the floor
            # for good, its sales' writes queueing all day while the tenant has room.
            return min(p.max_rate, max(p.min_rate, scale * free, self.rate - interactive))
        return min(p.max_rate, max(p.min_rate, scale * free))

    def delay(self, backlog: tuple[int, int] | None = None) -> float:
        """Seconds to wait before the next request; 0 means go now (and its token is taken).

        ``backlog``: while a drain ``plan`` runs, the rows waiting (this one included) and how many of
        them were queued before the engine answered again (``plan.answered``).
        """
        now = self.clock()
        self._heard_from_cashiers()
        if self.plan is not None and backlog is not None and not self.plan.told(*backlog):
            self.plan = None  # this till's backlog is in: new rows go at the usual pace
        held = max(self.hold_until - now, self.traffic.interactive_hold() if self.traffic else 0.0)
        self._grow(now, held)
        rate = self.allowed_rate()
        # No tokens are earned while held: a long Retry-After must not end in a burst.
        earning_since = max(self.stamp, min(now, self.hold_until))
        self.tokens = min(self._cap(now, rate), self.tokens + max(0.0, now - earning_since) * rate)
        self.stamp = now
        self._wake_at = None
        if held > MIN_WAIT:
            return held
        if self.tokens >= 1 - MIN_WAIT * rate:  # a wait shorter than a millisecond is no wait
            self._constrained = False
            self.tokens -= 1
            return 0.0
        self._constrained = True
        wait = max(MIN_WAIT, (1 - self.tokens) / rate)
        self._wake_at = now + wait
        return wait

    def _cap(self, now: float, rate: float) -> float:
        """The bucket's bound: the burst, and the time a caller overslept the wait it was told.

        Sends are scheduled on a steady deadline, each one interval after the one before, not
        after the moment the last one went: a sleep ends late (a millisecond of timer, a busy
        loop), and a full bucket would forget that time, losing it from every interval (a
        paced drain at 93/s for 100/s).  Up to one interval of it is kept, so the rate is
        never exceeded (the tokens still come at ``rate``), nor the burst by more than one.
        """
        cap = float(self.policy.burst)
        if self._wake_at is not None and now > self._wake_at:
            cap += min(1.0, (now - self._wake_at) * rate)
        return cap

    def held(self) -> bool:
        """Nothing may go for a while: a Retry-After, the cashiers' calls being limited, an outage."""
        now = self.clock()
        hold = max(self.hold_until - now, self.traffic.interactive_hold() if self.traffic else 0.0)
        return hold > MIN_WAIT or self.in_outage()

    def sends_within(self, seconds: float) -> int:
        """How many requests the bucket lets go within ``seconds`` from now, as things stand
        (nothing taken): a batch size for the deliverer, not a promise."""
        now = self.clock()
        if self.held():
            return 1
        rate = self.allowed_rate()
        earned = max(0.0, now - self.stamp) * rate
        return max(1, int(min(float(self.policy.burst), self.tokens + earned) + seconds * rate))

    # -- answers -------------------------------------------------------------------

    def record(self, error: BaseException | None) -> None:
        """What the engine answered the request just made (None: it was delivered)."""
        if isinstance(error, RateLimited):
            self.rate_limited(error.retry_after)
        elif isinstance(error, EngineUnavailable | OutcomeUnknown):
            self.failed()
        else:  # delivered, or refused on its merits: either way the engine answered
            self.answered(increase=error is None)
            if error is None and self.plan is not None:
                self.plan.speed_up(self.clock(), 1 + self.policy.plan_growth)

    def _grow(self, now: float, held: float) -> None:
        """Rows are waiting and nothing cut the rate lately: let it rise, doubling every ``doubling`` s.

        Time-based, not per delivery: a till far below its share sends too rarely for its
        successes alone to raise it, and it is such a till (a busy one, whose cashiers use most
        of its share) that must take what the tills that finished their backlog leave free.
        """
        p = self.policy
        if p.doubling is None or held > 0 or self.failing_since is not None or not self._constrained:
            self._grown_at = now
            return
        elapsed = max(0.0, now - self._grown_at)
        self.rate = min(p.max_rate, self.rate * 2 ** (elapsed / p.doubling))
        self._grown_at = now

    def in_outage(self) -> bool:
        """The engine has been failing for ``outage_after`` seconds or more."""
        return self.failing_since is not None and self.clock() - self.failing_since >= self.policy.outage_after

    def probe_interval(self) -> float:
        """Seconds between two tries of an engine that is away."""
        return max(MIN_PROBE_INTERVAL, 1 / (self.policy.share * self.policy.probe))

    def take_recovered(self) -> bool:
        """True once after an outage ended: rows that waited only for the engine may be due now."""
        recovered, self._recovered = self._recovered, False
        return recovered

    def _heard_from_cashiers(self) -> None:
        """The engine answered a cashier's call after the outbox's failures began: it is back."""
        ok_at = self.traffic.interactive_ok_at if self.traffic else None
        if self.failing_since is not None and ok_at is not None and ok_at > self.failing_since:
            self.answered(increase=False, at=ok_at)

    def recovered_by_cashiers(self) -> bool:
        """True once when the cashiers' calls show an outage is over (the deliverer then releases its rows)."""
        self._heard_from_cashiers()
        return self.take_recovered()

    def answered(self, *, increase: bool = True, at: float | None = None) -> None:
        """The engine answered (``at``: when, if not now: a cashier's call the outbox hears of late)."""
        now = self.clock()
        at = now if at is None else min(at, now)
        p = self.policy
        if self.failing_since is not None and now - self.failing_since >= p.outage_after:
            self._restart(now, at)
        self.failing_since = None
        self.answered_at = at
        if increase:
            self.rate = min(p.max_rate, self.rate + p.increase * p.share)

    def rate_limited(self, retry_after: float | None) -> None:
        """A 429: cut the rate, and send nothing until ``Retry-After`` (at most an hour) has passed.

        It is an answer: after an outage it says the engine is back (and busy)."""
        if self.failing_since is not None:
            self.answered(increase=False)
        now = self.clock()
        self._cut()
        if self.plan is not None:
            # The chain's figures promised room that is not there (stale, or a busier hour than the
            # one they were read in): this till's part of the plan goes slower from now on, and the
            # deadline moves with it, so falling behind never turns into a rush at the end.
            self.plan.slow_down(now, self.policy.decrease)
        self.hold_until = max(self.hold_until, now + bounded_hold(retry_after, 1.0 / self.rate))
        self.tokens = min(self.tokens, 0.0)

    def failed(self) -> None:
        """A 503, a timeout or no connection: cut the rate and note when the failures began."""
        now = self.clock()
        self.failed_at = now
        if self.failing_since is None:
            self.failing_since = now
            # The engine went away somewhere between its last answer and this failure.
            cashiers_ok = self.traffic.interactive_ok_at if self.traffic else None
            last_answer = _latest(now, self.answered_at, cashiers_ok)
            self.outage_began = max((last_answer + now) / 2, now - self.policy.start_uncertainty)
        self._cut()

    def _cut(self) -> None:
        self.rate = max(self.policy.min_rate, self.rate * self.policy.decrease)
        self.cuts += 1
        self._grown_at = self.clock()

    def _restart(self, now: float, answered_at: float) -> None:
        """The engine answers again after an outage: the chain's drain plan from an empty bucket,
        or without it a jittered, empty-bucket start at the share."""
        p = self.policy
        self.stamp = max(self.stamp, now)
        self.rate = max(p.min_rate, p.share * p.restart)
        self._recovered = True
        last_failure = _latest(
            answered_at,
            *(
                t
                for t in (self.failed_at, self.traffic.interactive_failed_at if self.traffic else None)
                if t is not None and t <= answered_at
            ),
        )
        back = (last_failure + answered_at) / 2
        began = self.outage_began if self.outage_began is not None else back
        self.plan = DrainPlan.after_outage(p, began=began, back=back, answered=answered_at)
        # An empty bucket: the first send waits a full interval.  With a plan that is all the
        # spreading needed (the fleet hears of the return spread over a probe interval, and a till
        # most often from the probe just answered); without one, a random hold spreads it too.
        self.tokens = 0.0
        if self.plan is None:
            spread = min(p.restart_jitter, p.restart_intervals / p.share)
            self.hold_until = max(self.hold_until, now + self.rng.uniform(0, spread))

    def adopt(self, policy: PacingPolicy) -> None:
        """A reloaded config's figures, from now on: the adapted rate keeps its ratio to the share
        (a till cut to half its old share is at half its new one), the bucket its new bound; a
        drain deadline already set stays (it was the chain's plan when the engine came back)."""
        old = self.policy
        self.rate = min(policy.max_rate, max(policy.min_rate, self.rate * policy.share / old.share))
        self.tokens = min(self.tokens, float(policy.burst))
        self.policy = policy

    def view(self) -> dict[str, float | bool | None]:
        """For health and status: how the outbox is paced right now, and the figures it is paced by."""
        now = self.clock()
        return {
            "ratePerSecond": round(self.allowed_rate(), 4),
            "sharePerSecond": self.policy.share,
            "fleetInteractivePerSecond": self.policy.fleet_interactive,
            "fleetWritesPerSecond": self.policy.fleet_writes,
            "heldSeconds": round(max(0.0, self.hold_until - now), 1),
            "yieldingToInteractive": bool(self.traffic and self.traffic.interactive_hold() > 0),
            "engineFailing": self.failing_since is not None,
            "drainDeadlineSeconds": round(max(0.0, self.plan.deadline() - now), 1) if self.plan else 0.0,
        }


def _latest(default: float, *times: float | None) -> float:
    """The latest of ``times`` that are known, else ``default``."""
    return max((t for t in times if t is not None), default=default)


__all__ = ["Pacer", "PacingPolicy"]
