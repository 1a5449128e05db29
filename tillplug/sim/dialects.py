"""How the simulator answers where WLL publishes nothing: one switch per undocumented point.

WLL documents request schemas, not answers: the shape of ``GET /events/{id}/reactions``,
whether ``filter[...]`` query parameters are honoured, how a voucher refusal is worded,
what a write's 2xx body holds.  Each such point is a field of ``Dialect``; a named
dialect is one plausible engine.  ``tillplug sim --dialect NAME`` picks one, and
``POST /_sim/dialect`` changes it at run time (a name, single switches, or both).

* ``default``: what tillplug first assumed (everything convenient).
* ``strict``: closest to what WLL documents — undocumented filters ignored, look-ups by
  authIdentifier answered 404, refusals by status without codes, reactions nested.
* ``hostile``: odd 2xx bodies to writes, filters rejected with 400, reactions late,
  refusals with other statuses and other wording.
* ``blank``: like ``default``, but the eventKey filters are not supported and answered with
  an empty list (``blank``), as an engine may do with a filter on a field it does not index:
  "nothing found" from it proves nothing.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Literal

from tillplug.engine.dialect import EngineDialect

ReactionShape = Literal["flat", "nested", "delayed", "never"]
FilterBehaviour = Literal["honoured", "ignored", "rejected", "blank"]
RefusalStyle = Literal["codes", "status_only", "statuses"]
WriteBody = Literal["normal", "empty", "unreadable"]

CHOICES: dict[str, tuple[str, ...]] = {
    "reactions": ("flat", "nested", "delayed", "never"),
    "event_key_filter": ("honoured", "ignored", "rejected", "blank"),
    "order_key_filter": ("honoured", "ignored", "rejected", "blank"),
    "owner_filter": ("honoured", "ignored", "rejected"),
    "user_filter": ("honoured", "ignored", "rejected"),
    "voucher_refusals": ("codes", "status_only", "statuses"),
    "write_bodies": ("normal", "empty", "unreadable"),
}


@dataclass(frozen=True)
class Dialect:
    name: str = "default"
    # GET /events/{id}/reactions: flat [{type, points}]; nested like test_reaction
    # [{reactor, reactions: [{type, points}]}]; delayed (flat, applied only after
    # ``late_reaction_seconds``); never (points applied, reactions never listed).
    reactions: ReactionShape = "flat"
    late_reaction_seconds: float = 1.5
    # filter[payload.eventKey] on GET /events, filter[metadata.eventKey] on GET /orders,
    # filter[owner] on GET /benefits, filter[authIdentifier] on GET /users.  ``blank`` (eventKey
    # filters only): an empty list whatever the value, as for a filter the engine does not support.
    event_key_filter: FilterBehaviour = "honoured"
    order_key_filter: FilterBehaviour = "honoured"
    owner_filter: FilterBehaviour = "honoured"
    user_filter: FilterBehaviour = "honoured"
    # validate_voucher refusals: codes (data.code and today's statuses); status_only (same
    # statuses, a message, no code); statuses (other statuses and other wording, no code).
    voucher_refusals: RefusalStyle = "codes"
    # The 2xx body of a write (events, orders, redeem_benefit, a burning validate_voucher).
    write_bodies: WriteBody = "normal"
    # The token endpoint refuses an audience other than ``wlloyalty.net``.
    check_audience: bool = False
    # GET /users/{authIdentifier} answers (True) or is 404 like any unknown id (False).
    auth_identifier_lookup: bool = True
    # A second event carrying an eventKey already stored: taken like any other (False, as
    # WLL's documents allow) or refused with 409 (True).
    reject_duplicate_keys: bool = False

    def with_switches(self, values: dict[str, Any]) -> Dialect:
        """A copy with some switches changed; unknown names and values are refused."""
        known = {f.name: f for f in fields(self)}
        for key, value in values.items():
            if key not in known or key == "name":
                raise ValueError(f"unknown dialect switch {key!r}")
            allowed = CHOICES.get(key)
            if allowed is not None and value not in allowed:
                raise ValueError(f"{key} must be one of {', '.join(allowed)}")
            if key in ("check_audience", "auth_identifier_lookup", "reject_duplicate_keys") and not isinstance(
                value, bool
            ):
                raise ValueError(f"{key} must be true or false")
            if key == "late_reaction_seconds" and (not isinstance(value, (int, float)) or not 0 <= value <= 60):
                raise ValueError("late_reaction_seconds must be 0..60")
        return replace(self, **values)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def answers(self) -> EngineDialect:
        """What ``tillplug engine-check`` should find against this dialect (and tests may assume)."""
        return EngineDialect(
            reactions=self.reactions,
            # An empty answer to every value shows nothing: engine-check cannot tell (unknown).
            event_key_filter="unknown" if self.event_key_filter == "blank" else self.event_key_filter,
            order_key_filter="unknown" if self.order_key_filter == "blank" else self.order_key_filter,
            owner_filter=self.owner_filter,
            user_filter=self.user_filter,
            # Without a code, "other statuses" and "status only" look alike from outside.
            voucher_refusals="codes" if self.voucher_refusals == "codes" else "status_only",
            write_bodies=self.write_bodies,
            audience_checked="yes" if self.check_audience else "no",
            auth_identifier_lookup="answered" if self.auth_identifier_lookup else "refused",
            duplicate_event_key="rejected" if self.reject_duplicate_keys else "accepted",
        )


DIALECTS: dict[str, Dialect] = {
    "default": Dialect(),
    "strict": Dialect(
        name="strict",
        reactions="nested",
        event_key_filter="ignored",
        order_key_filter="ignored",
        owner_filter="ignored",
        user_filter="ignored",
        voucher_refusals="status_only",
        check_audience=True,
        auth_identifier_lookup=False,
    ),
    "hostile": Dialect(
        name="hostile",
        reactions="delayed",
        event_key_filter="rejected",
        order_key_filter="rejected",
        owner_filter="rejected",
        user_filter="rejected",
        voucher_refusals="statuses",
        write_bodies="unreadable",
        check_audience=True,
        auth_identifier_lookup=False,
    ),
    "blank": Dialect(name="blank", event_key_filter="blank", order_key_filter="blank"),
}


def dialect(name: str) -> Dialect:
    try:
        return DIALECTS[name]
    except KeyError:
        raise ValueError(f"no dialect named {name!r} (known: {', '.join(DIALECTS)})") from None
