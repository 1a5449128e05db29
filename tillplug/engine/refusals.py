"""Which of the six voucher outcomes a refusal is: by machine code, then status, then the engine's words.

WLL publishes no refusal codes for ``validate_voucher`` (engine-api.md part 1 §10), so the
answer is read three ways, most reliable first: a code in the body (``data.code``,
``data.reason``, ``code``, ``error``, ``errors[].code``); the engine's own message; and the
status where it says one thing only (404: no such code; 410: expired).  Anything else is a
``VoucherRefused`` carrying the engine's message, never a guess.  A 403 on a voucher call
is a voucher refusal (another member's, another venue's), never a credentials problem:
only a 401 means credentials.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from tillplug.errors import (
    VoucherAlreadyUsed,
    VoucherError,
    VoucherExpired,
    VoucherNotRedeemed,
    VoucherRefused,
    VoucherUnknown,
    VoucherWrongMember,
    VoucherWrongVenue,
)

# Machine codes seen or assumed; the one place to correct them.
VOUCHER_REASONS: dict[str, type[VoucherError]] = {
    "VOUCHER_NOT_FOUND": VoucherUnknown,
    "CODE_NOT_FOUND": VoucherUnknown,
    "VOUCHER_ALREADY_BURNED": VoucherAlreadyUsed,
    "VOUCHER_ALREADY_USED": VoucherAlreadyUsed,
    "VOUCHER_EXPIRED": VoucherExpired,
    "VOUCHER_NOT_REDEEMED": VoucherNotRedeemed,
    "VOUCHER_WRONG_USER": VoucherWrongMember,
    "VOUCHER_WRONG_VENUE": VoucherWrongVenue,
}

# The engine's words, tried in this order (the first match wins): "not been redeemed"
# must be read before "redeemed", "expired" before "used".
MESSAGE_PATTERNS: list[tuple[re.Pattern[str], type[VoucherError]]] = [
    (re.compile(r"\bexpir", re.I), VoucherExpired),
    (
        re.compile(
            r"\b(not (yet )?(been )?(redeemed|activated|claimed)|must be (redeemed|activated|claimed)"
            r"|redeem(ed)? (it )?first|before (its code )?(can|could) be validated)",
            re.I,
        ),
        VoucherNotRedeemed,
    ),
    (
        re.compile(r"\b(already|previously)\b.*\b(used|burn|burned|validated|redeemed)\b|\bburned\b", re.I),
        VoucherAlreadyUsed,
    ),
    (
        re.compile(
            r"\b(another|different|other) (user|member|customer|account)|belongs? to|not (the )?owner"
            r"|wrong (user|member)|does not belong",
            re.I,
        ),
        VoucherWrongMember,
    ),
    (re.compile(r"\b(venue|location|store|shop|branch|site)s?\b", re.I), VoucherWrongVenue),
    (
        re.compile(r"\b(not found|unknown|no (voucher|code|benefit)|does not exist|invalid code)\b", re.I),
        VoucherUnknown,
    ),
]


def _codes(body: Mapping[str, Any]) -> list[str]:
    found: list[str] = []
    data = body.get("data")
    for holder in (data if isinstance(data, dict) else {}, body):
        for key in ("code", "reason", "error", "errorCode"):
            value = holder.get(key)
            if isinstance(value, str) and value:
                found.append(value.upper())
    errors = body.get("errors")
    if isinstance(errors, list):
        found += [str(e["code"]).upper() for e in errors if isinstance(e, dict) and e.get("code")]
    return found


def classify_voucher_refusal(status: int, body: Mapping[str, Any], message: str | None) -> VoucherError:
    """The outcome a 4xx (not 401, not 429) to ``validate_voucher`` stands for."""
    for code in _codes(body):
        if code in VOUCHER_REASONS:
            return VOUCHER_REASONS[code](status=status, engine_message=message)
    if message:
        for pattern, cls in MESSAGE_PATTERNS:
            if pattern.search(message):
                return cls(status=status, engine_message=message)
    if status == 404:
        return VoucherUnknown(status=status, engine_message=message)
    if status == 410:
        return VoucherExpired(status=status, engine_message=message)
    return VoucherRefused(status=status, engine_message=message)
