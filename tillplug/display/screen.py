"""What the customer sees on one lane, worked out from the events the flows already tell the till.

Only loyalty news reaches a customer's display: the member recognised (masked, or a first name when
the config says so), the balance, the points spent and earned on this sale, a voucher accepted or
refused.  Product scans, other lanes, device states and errors never do; the idle text shows
otherwise.  The same ``Screen`` feeds the pole displays (two short lines) and the web page (every
field), so both always agree.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, fields
from typing import Any

from tillplug.receipts.templates import SlipContext, printed_mask

log = logging.getLogger(__name__)
FirstName = Callable[[int], Awaitable[str | None]]  # lane → the first name of the member on its sale

# The events that change what the customer sees; everything else on the stream is ignored.
SALE_EVENTS = frozenset(
    {
        "checkout_opened",
        "member_found",
        "member_attached",
        "redemption",
        "points_given_back",
        "voucher_result",
        "checkout_completed",
        "checkout_voided",
    }
)
VOUCHER_REFUSALS = {
    "voucher_already_used": "already used",
    "voucher_expired": "expired",
    "voucher_wrong_member": "not this member's",
}


@dataclass
class Screen:
    """One lane's customer screen.  ``news`` is what happened last: it picks the pole display's lines."""

    lane: int
    state: str = "idle"  # idle, member, sale, done
    member: str | None = None  # masked ("****0001") or a first name: never anything else
    balance: int | None = None
    spent: int = 0
    earned: int | None = None
    voucher: str | None = None  # the accepted voucher's name
    voucher_refused: str | None = None  # why, in a few words
    news: str = "idle"  # idle, member, spent, voucher_accepted, voucher_refused, completed
    tx: str | None = field(default=None, repr=False)
    changed_at: float = field(default_factory=time.monotonic, repr=False)

    def view(self) -> dict[str, Any]:
        """The page's data: no transaction id, nothing but what is shown.  (Every field is a number, a
        string or None: no copy needed, where ``dataclasses.asdict`` deep-copies each one.)"""
        return {name: getattr(self, name) for name in SHOWN}


SHOWN = tuple(f.name for f in fields(Screen) if f.name not in ("tx", "changed_at"))


def first_name_only(given: str | None) -> str | None:
    """The first word of a given name, at most 20 characters: never a family name or anything else."""
    words = (given or "").split()
    return words[0][:20] if words else None


def member_shown(masked: str | None, first_name: str | None) -> str | None:
    if first_name:
        return first_name
    return printed_mask(masked) if masked else None


class ScreenBook:
    """Every lane's screen, moved on by the event stream (``see``) and by time (``expire``)."""

    def __init__(self, idle_after: float, first_name: FirstName | None = None) -> None:
        self.idle_after = idle_after
        # Set only when the config asks for first names: the lane's member's first name, or None.
        self.first_name = first_name
        self.screens: dict[int, Screen] = {}

    def screen(self, lane: int) -> Screen:
        return self.screens.setdefault(lane, Screen(lane))

    async def see(self, type_: str, data: dict[str, Any], lane: int | None) -> Screen | None:
        """One event; the lane's new screen when it changed what the customer sees."""
        if lane is None or type_ not in SALE_EVENTS:
            return None
        old = self.screen(lane)
        tx = data.get("transactionId")
        new: Screen | None
        if type_ == "checkout_opened":
            new = Screen(lane, tx=tx)
        elif type_ == "member_found":  # a card looked up with no sale open (ignored while one is)
            if old.state == "sale":
                return None
            new = Screen(lane, "member", await self._member(lane, data), _int(data.get("pointsBalance")), news="member")
        elif tx is None or (old.tx is not None and tx != old.tx):
            return None  # an event of a sale that is not the lane's current one
        else:
            new = self._sale(old, type_, data, tx)
            if new is None:
                return None
            if type_ == "member_attached":
                new.member = await self._member(lane, data)
        new.changed_at = time.monotonic()
        self.screens[lane] = new
        return None if new.view() == old.view() else new  # the same to the customer: nothing to tell

    def _sale(self, old: Screen, type_: str, data: dict[str, Any], tx: str) -> Screen | None:
        lane = old.lane
        base = Screen(lane, "sale", old.member, old.balance, old.spent, old.earned, old.voucher, None, tx=tx)
        if type_ == "member_attached":
            base.balance = _int(data.get("pointsBalance"))
            base.news = "member"
        elif type_ == "redemption":
            base.spent += _int(data.get("points")) or 0
            base.balance = _int(data.get("balanceAfter"), base.balance)
            base.news = "spent"
        elif type_ == "points_given_back":
            base.spent = max(0, base.spent - (_int(data.get("points")) or 0))
            base.news = "spent"
        elif type_ == "voucher_result":
            if data.get("pending"):
                return None
            if data.get("ok"):
                base.voucher = str(data.get("name") or "")[:40] or None  # its name; never its code
                base.news = "voucher_accepted"
            else:
                base.voucher_refused = VOUCHER_REFUSALS.get(str(data.get("error")), "not valid")
                base.news = "voucher_refused"
        elif type_ == "checkout_completed":
            if base.member is None:
                return Screen(lane, tx=tx)  # no member: nothing to show but the idle text
            base.state, base.news = "done", "completed"
            base.earned = _int(data.get("expectedPoints"))
            if base.balance is not None and base.earned is not None:
                base.balance += base.earned
        else:  # checkout_voided
            return Screen(lane)
        return base

    async def _member(self, lane: int, data: dict[str, Any]) -> str | None:
        masked = data.get("member")
        first = None
        if self.first_name is not None and masked:
            try:
                first = await self.first_name(lane)
            except Exception:  # no name is no harm: the masked number shows instead
                log.warning("customer display: the member's first name could not be read; showing the masked number")
        return member_shown(masked, first)

    def expire(self, now: float | None = None) -> list[Screen]:
        """Screens back to idle: a completed sale or a look-up shown ``idle_after`` seconds already."""
        now = time.monotonic() if now is None else now
        back: list[Screen] = []
        for lane, screen in list(self.screens.items()):
            if screen.state in ("done", "member") and now - screen.changed_at >= self.idle_after:
                self.screens[lane] = Screen(lane, tx=screen.tx, changed_at=now)
                back.append(self.screens[lane])
        return back


def _int(value: Any, default: int | None = None) -> int | None:
    try:
        return int(value) if value is not None else default
    except (TypeError, ValueError):
        return default


def pole_lines(screen: Screen, *, ctx: SlipContext, idle_text: list[str]) -> tuple[str, str]:
    """Two lines for a pole display, the news first; ``fit_line`` makes them fit."""
    _ = ctx._
    balance = f"{_('Balance')} {ctx.number(screen.balance)}" if screen.balance is not None else ""
    if screen.news == "idle":
        lines = [*idle_text, "", ""]
        return lines[0], lines[1]
    if screen.news == "member":
        return screen.member or _("Member"), balance
    if screen.news == "spent":
        return f"{_('Points used')} {ctx.number(screen.spent)}", balance
    if screen.news == "voucher_accepted":
        return _("Voucher accepted"), screen.voucher or ""
    if screen.news == "voucher_refused":
        return _("Voucher refused"), screen.voucher_refused or ""
    earned = f"{_('Points earned')} +{ctx.number(screen.earned or 0)}"
    return earned, balance
