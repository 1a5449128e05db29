"""Whether an engine write took effect: the one vocabulary of every money write.

``Outcome`` is what tillplug knows of one write — a deduction, a voucher burn, an outbox
row's event or order: it **landed**, it **did not land**, or nobody knows yet (**unknown**).
A failed request says which (``write_outcome``); a look-up by eventKey says which
(``tillplug.engine.lookup.Lookup.outcome``); the intent machine (``tillplug.flows.intents``)
settles every unknown into one of the other two, or holds it where the engine cannot tell.
"""

from __future__ import annotations

from enum import StrEnum

from tillplug.errors import EngineProtocolError, OutcomeUnknown, TillplugError


class Outcome(StrEnum):
    LANDED = "landed"  # the engine has the write
    NOT_LANDED = "not_landed"  # it surely has not, and this attempt never will
    UNKNOWN = "unknown"  # nobody can tell yet: settled by look-up, never guessed


def write_outcome(exc: BaseException) -> Outcome:
    """What a failed engine write tells us about whether it took effect.

    A refusal (4xx), or an error raised before the request left (refused connection, 429,
    503), means it did not land.  A timeout or reset after it left, a 5xx behind a gateway,
    an answer that cannot be read, or anything unexpected, means nobody knows.
    """
    if isinstance(exc, (OutcomeUnknown, EngineProtocolError)):
        return Outcome.UNKNOWN
    if isinstance(exc, TillplugError):
        return Outcome.NOT_LANDED
    return Outcome.UNKNOWN


__all__ = ["Outcome", "write_outcome"]
