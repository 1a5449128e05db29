"""What a till may do through the relay, and what it sees: the one place for those rules.

A till looks members up by a card's code only; it then may read that member's wallet and
benefits, spend their points and use their vouchers for ``MEMBER_HOURS``.  Answers are trimmed
to what a till shows: no email, phone, name or address ever leaves the relay.
"""

from __future__ import annotations

from typing import Any

from tillplug.config.model import EventTypes
from tillplug.relay.tokens import Till

MEMBER_HOURS = 12.0  # a member looked up at a till stays usable there this long (a shift, with margin)

USER_FIELDS = ("id", "accountNumber", "authIdentifier", "isRestricted")
WALLET_FIELDS = ("pointsBalance", "lifetimeEarn", "tier", "vouchers")
BENEFIT_FIELDS = (
    "id",
    "type",
    "createdAt",
    "redeemedAt",
    "expiresAt",
    "burnedAt",
    "reward",
    "code",
    "owner",
    "ownerId",
    "state",
    "status",
)
EVENT_FIELDS = ("id", "type", "subject", "payload", "occurredAt", "createdAt")


def trimmed(data: Any, fields: tuple[str, ...]) -> Any:
    if not isinstance(data, dict):
        return data
    return {k: v for k, v in data.items() if k in fields}


def trimmed_owner(benefit: dict[str, Any]) -> dict[str, Any]:
    """A benefit with its owner reduced to the identifiers the till matches on."""
    out: dict[str, Any] = trimmed(benefit, BENEFIT_FIELDS)
    if isinstance(out.get("owner"), dict):
        out["owner"] = trimmed(out["owner"], ("id", "authIdentifier", "accountNumber"))
    return out


def trimmed_wallet(wallet: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = trimmed(wallet, WALLET_FIELDS)
    if isinstance(out.get("vouchers"), list):
        out["vouchers"] = [trimmed_owner(b) for b in out["vouchers"] if isinstance(b, dict)]
    return out


def stamped(body: dict[str, Any], till: Till) -> dict[str, Any]:
    """The event as the relay sends it: the till's own ids, whatever the till wrote there."""
    payload = dict(body.get("payload") or {})
    payload["tillId"], payload["branchId"] = till.till_id, till.branch_id
    return {**body, "executor": till.till_id, "payload": payload}


def may_give_back(till: Till, original: dict[str, Any] | None, chain_id: str) -> int:
    """How many points ``till`` may still give back against ``original`` (a row of ``events``).

    A refund of a deduction reported through this relay (so by this chain: one relay serves one
    chain), never more than is left of it; -1 if the event is not such a deduction.  A return's
    points moves are capped per sale instead (``return_move``).
    """
    del till, chain_id  # any till of the chain may reverse the chain's deduction (a return at another till)
    if original is None or original["kind"] != "spend" or original["state"] not in ("landed", "applied"):
        return -1
    return int(original["points"] or 0) - int(original["refunded"] or 0)


def return_move(event_type: str, payload: dict[str, Any], types: EventTypes) -> str | None:
    """``give_back`` or ``take_back`` if the event is a return's points move, else None.

    A return's take-back has its own type; its give-back shares the refund's type by default and
    is told apart by naming a return (``returnId``) and no deduction (``reverses``).  Either is
    allowed for any sale of the chain, from any of its tills, within what was reported for the sale
    (``tillplug.relay.sales``).
    """
    if event_type == types.points_taken_back:
        return "take_back"
    if event_type == types.points_given_back and "returnId" in payload and "reverses" not in payload:
        return "give_back"
    return None
