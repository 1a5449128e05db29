"""What a till may do through the relay, and what it sees: the one place for those rules.

A till looks members up by a card's code only; it then may read that member's wallet and
benefits, spend their points and use their vouchers for ``MEMBER_HOURS``.  Answers are trimmed
to what a till shows: no email, phone, name or address ever leaves the relay.
"""

from __future__ import annotations

from typing import Any

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

    Today: a refund of a deduction reported through this relay (so by this chain: one relay serves
    one chain), never more than is left of it; -1 if the event is not such a deduction.  The hook
    for returns (a take-back of points earned on a sale reported through this relay) is here.
    """
    del till, chain_id  # any till of the chain may reverse the chain's deduction (a return at another till)
    if original is None or original["kind"] != "spend" or original["state"] not in ("landed", "applied"):
        return -1
    return int(original["points"] or 0) - int(original["refunded"] or 0)
