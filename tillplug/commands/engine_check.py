"""``tillplug engine-check``: find out how this engine answers where WLL publishes nothing.

With the till's credentials and one test member's card it makes documented reads (and a
few filtered reads whose filters are the very question), one voucher check of a code that
cannot exist (nothing can be burned), and — only with ``--yes`` — writes that net to
zero: a ``REDEEMED_POINTS`` event of 1 point, the same event again (does the engine refuse
an eventKey it already has?  If it takes it, that point is refunded too), then a
``POINTS_REFUND`` of each point taken.  The test events carry the till's ``tillId`` and
``branchId``, so the Loyalty Console shows where they came from.
Each undocumented point gets an answer (or ``unknown``) and the evidence for it; the
answers are written to the file ``engine.dialect_file`` names, which the daemon reads
(docs/technician.md: Engine dialects).
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tillplug.config.model import EventTypes
from tillplug.engine.client import EngineClient, Probe, event_key_filter, is_documented_member_id, order_key_filter
from tillplug.engine.dialect import EngineDialect
from tillplug.engine.models import Benefit, EventDefinition, User, new_event_key, utc_now_iso
from tillplug.engine.reactors import check_reactors, reactor_events

REACTION_WAIT = 10.0  # seconds to watch for the test spend's reaction
LATE_AFTER = 1.0  # a reaction first seen later than this is "delayed" (beyond tillplug's confirm budget)
POLL = 0.2
WRONG_AUDIENCE = "tillplug-engine-check.invalid"


@dataclass
class Report:
    answers: dict[str, str] = field(default_factory=dict)
    evidence: dict[str, str] = field(default_factory=dict)
    sent: list[str] = field(default_factory=list)  # every request made, for the technician
    net_zero: bool | None = None  # the test spend and its refund left the balance unchanged
    # event type -> what test_reaction says its reactors do with 1 point ("ok", or the trouble)
    reactors: dict[str, str] = field(default_factory=dict)
    # The WLL id of the technician's test card, kept in the dialect file for the daemon's reactor check.
    test_member: str | None = None

    def set(self, point: str, answer: str, evidence: str) -> None:
        self.answers[point] = answer
        self.evidence[point] = evidence

    def dialect(self) -> EngineDialect:
        return EngineDialect(**self.answers)


def _filter_answer(probe: Probe, wanted: str, key_of: Callable[[Any], object]) -> tuple[str, str]:
    """honoured / ignored / rejected / unknown, from a look-up for a value known to exist."""
    if 400 <= probe.status < 500:
        return "rejected", f"HTTP {probe.status}: {probe.message or 'no message'}"
    if not probe.readable or not isinstance(probe.data, list):
        return "unknown", f"HTTP {probe.status}, an answer that is not a list"
    items = [i for i in probe.data if isinstance(i, dict)]
    if not items:
        return "unknown", "no results, so nothing shows whether the filter was applied"
    matching = sum(key_of(i) == wanted for i in items)
    if matching == len(items):
        return "honoured", f"all {len(items)} result(s) carry the requested value"
    return "ignored", f"{len(items) - matching} of {len(items)} results carry another value"


def _refine_with_absent(answer: str, evidence: str, absent: Probe) -> tuple[str, str]:
    """A look-up for a value that cannot exist must come back empty from an engine that filters."""
    if answer == "rejected" or not absent.readable or not isinstance(absent.data, list):
        return answer, evidence
    if absent.data:
        return "ignored", f"a look-up for a value that cannot exist returned {len(absent.data)} result(s)"
    return answer, evidence + "; a value that cannot exist returned none"


def _event_key(item: Any) -> object:
    payload = item.get("payload") if isinstance(item, dict) else None
    return payload.get("eventKey") if isinstance(payload, dict) else None


def _order_key(item: Any) -> object:
    metadata = item.get("metadata") if isinstance(item, dict) else None
    return metadata.get("eventKey") if isinstance(metadata, dict) else None


def _owner_of(item: Any) -> set[str]:
    try:
        return Benefit.model_validate(item).owner_ids()
    except ValueError:
        return set()


class EngineCheck:
    def __init__(
        self,
        client: EngineClient,
        *,
        event_types: EventTypes,
        till_id: str,
        branch_id: str,
        sleep: Callable[[float], Any] = asyncio.sleep,
    ):
        self.client = client
        self.event_types = event_types
        # Carried by the test spend and refund as by every event a till reports: a tenant schema that
        # requires them would refuse the check otherwise.
        self.ids = {"tillId": till_id, "branchId": branch_id}
        self.sleep = sleep
        self.report = Report()
        self.reaction_wait = REACTION_WAIT

    async def _probe(self, method: str, path: str, **kw: Any) -> Probe:
        params = kw.get("params")
        shown = path + ("?" + "&".join(f"{k}={v}" for k, v in params.items()) if params else "")
        self.report.sent.append(f"{method} {shown}")
        return await self.client.probe(method, path, **kw)

    async def run(self, card: str, *, write: bool) -> Report:
        user = await self._member(card)
        await self._audience()
        await self._auth_identifier_lookup(user)
        await self._user_filter(user)
        self.report.sent.append("GET /users/{id}/wallet")
        await self.client.get_wallet(user.id)
        await self._owner_filter(user)
        await self._voucher_refusals()
        await self._reactors(user)
        spend_key = await self._test_spend(user) if write else None
        if not write:
            for point in ("reactions", "write_bodies", "duplicate_event_key"):
                self.report.set(point, "unknown", "needs the test spend (--yes)")
        await self._key_filter("event", spend_key)
        await self._key_filter("order", None)
        # The file keeps what was sent, never who it was about.
        for real, shown in ((user.id, "{id}"), (user.auth_identifier, "{authIdentifier}")):
            if real:
                self.report.sent = [line.replace(real, shown) for line in self.report.sent]
        return self.report

    async def _member(self, card: str) -> User:
        self.report.sent.append("GET /users/{id}" if is_documented_member_id(card) else "GET /users/?filter[...]")
        return await self.client.get_user(card)

    async def _audience(self) -> None:
        self.report.sent.append(f"POST {{auth_url}} audience={WRONG_AUDIENCE}")
        accepted = await self.client.audience_accepted(WRONG_AUDIENCE)
        if accepted is None:
            self.report.set("audience_checked", "unknown", "the auth service's answer says neither")
        elif accepted:
            self.report.set("audience_checked", "no", f"a token was minted for audience {WRONG_AUDIENCE!r}")
        else:
            self.report.set("audience_checked", "yes", f"audience {WRONG_AUDIENCE!r} was refused")

    async def _auth_identifier_lookup(self, user: User) -> None:
        if not user.auth_identifier:
            self.report.set("auth_identifier_lookup", "unknown", "the member has no authIdentifier")
            return
        probe = await self._probe("GET", "/users/" + user.auth_identifier)
        if probe.status == 200 and isinstance(probe.data, dict) and probe.data.get("id") == user.id:
            self.report.set("auth_identifier_lookup", "answered", "GET /users/{authIdentifier} found the member")
        elif probe.status in (400, 404):
            self.report.set("auth_identifier_lookup", "refused", f"GET /users/{{authIdentifier}}: HTTP {probe.status}")
        else:
            self.report.set("auth_identifier_lookup", "unknown", f"HTTP {probe.status}")

    async def _user_filter(self, user: User) -> None:
        if not user.auth_identifier:
            self.report.set("user_filter", "unknown", "the member has no authIdentifier")
            return
        params = {"filter[authIdentifier]": user.auth_identifier, "limit": "100", "skip": "0", "order": "DESC"}
        probe = await self._probe("GET", "/users/", params=params)
        answer, why = _filter_answer(probe, user.auth_identifier, lambda u: u.get("authIdentifier"))
        absent = {**params, "filter[authIdentifier]": "tillplug-check-" + secrets.token_hex(8)}
        answer, why = _refine_with_absent(answer, why, await self._probe("GET", "/users/", params=absent))
        self.report.set("user_filter", answer, why)

    async def _owner_filter(self, user: User) -> None:
        params = {"filter[owner]": user.id, "limit": "100", "skip": "0", "order": "DESC"}
        probe = await self._probe("GET", "/benefits/", params=params)
        answer, why = _filter_answer(probe, "owned", lambda b: "owned" if user.id in _owner_of(b) else "other")
        self.report.set("owner_filter", answer, why)

    async def _voucher_refusals(self) -> None:
        code = "TILLPLUG-CHECK-" + secrets.token_hex(6).upper()
        body = {"code": code, "allowFutureValidation": True}  # a check only, of a code that cannot exist
        self.report.sent.append(f"POST /commands/validate_voucher code={code} allowFutureValidation=true")
        probe = await self.client.probe("POST", "/commands/validate_voucher", json=body)
        if probe.status < 400 or probe.status >= 500:
            self.report.set("voucher_refusals", "unknown", f"a code that cannot exist got HTTP {probe.status}")
            return
        data = probe.body.get("data")
        has_code = any(
            isinstance(holder, dict) and isinstance(holder.get(k), str) and holder.get(k)
            for holder in (data, probe.body)
            for k in ("code", "reason", "errorCode")
        )
        why = f"HTTP {probe.status}, message {probe.message!r}"
        self.report.set("voucher_refusals", "codes" if has_code else "status_only", why)

    async def _reactors(self, user: User) -> None:
        """test_reaction (no side effects) for a 1-point spend and its refund, and a return's take-back
        and give-back: the engine's reactors must move exactly that point.  A missing or conditional
        redemption reactor accepts the spend and deducts nothing; the refund reactor then invents
        points.  A missing take-back reactor lets a returned sale keep its points."""
        for event_type in reactor_events(self.event_types):
            self.report.sent.append(f"POST /events/test_reaction {event_type} points=1")
        for verdict in await check_reactors(self.client, user.id, self.event_types, self.ids):
            self.report.reactors[verdict.event_type] = verdict.describe()
        # The daemon repeats this side-effect-free check at every start, on the same test member.
        self.report.test_member = user.id

    async def _test_spend(self, user: User) -> str:
        """Spend 1 point and refund it; watch the answer's body and the reaction."""
        start = (await self.client.get_wallet(user.id)).points_balance
        key = new_event_key()
        run_id = "engine-check-" + secrets.token_hex(4)
        spend = EventDefinition(
            type=self.event_types.redeemed_points,
            subject=user.id,
            executor="tillplug-engine-check",
            # "XXX" is ISO 4217's code for "no currency": the test spend carries no money.
            payload={
                "eventKey": key,
                **self.ids,
                "transactionId": run_id,
                "points": 1,
                "value": 0,
                "currency": "XXX",
            },
        )
        self.report.sent.append(f"POST /events/ {spend.type} points=1 eventKey={key}")
        posted = await self.client.probe("POST", "/events/", json=spend.body())
        if posted.readable and isinstance(posted.data, dict) and posted.data.get("id"):
            self.report.set("write_bodies", "normal", f"HTTP {posted.status} with the event")
            event_id: str | None = str(posted.data["id"])
        else:
            kind = "empty" if posted.size == 0 else "unreadable"
            self.report.set("write_bodies", kind, f"HTTP {posted.status}, {posted.size} bytes")
            event_id = await self._find_event_id(key)
        await self._reactions(event_id, user, start)
        await self._refund_test_point(user, run_id, key)
        if await self._duplicate_key(spend):
            await self._refund_test_point(user, run_id, key)
        self.report.net_zero = await self._balance_becomes(user, start)
        return key

    async def _refund_test_point(self, user: User, run_id: str, key: str) -> None:
        refund = EventDefinition(
            type=self.event_types.points_refund,
            subject=user.id,
            executor="tillplug-engine-check",
            payload={"eventKey": new_event_key(), **self.ids, "transactionId": run_id, "points": 1, "reverses": key},
        )
        self.report.sent.append(f"POST /events/ {refund.type} points=1 reverses={key}")
        await self.client.probe("POST", "/events/", json=refund.body())

    async def _duplicate_key(self, spend: EventDefinition) -> bool:
        """Send the test spend again, eventKey and all: does the engine refuse an eventKey it has?
        True if it took the second one (its point is then refunded too)."""
        key = spend.payload["eventKey"]
        self.report.sent.append(f"POST /events/ {spend.type} points=1 eventKey={key} (the same event again)")
        again = await self.client.probe("POST", "/events/", json=spend.body())
        if 200 <= again.status < 300:
            taken = f"HTTP {again.status}: the same eventKey was taken twice"
            self.report.set("duplicate_event_key", "accepted", taken)
            return True
        if again.status in (400, 409, 422):
            self.report.set("duplicate_event_key", "rejected", f"HTTP {again.status}: {again.message or 'no message'}")
        else:  # credentials, rate limit, an outage: says nothing about duplicates
            self.report.set("duplicate_event_key", "unknown", f"HTTP {again.status}")
        return False

    async def _find_event_id(self, key: str) -> str | None:
        probe = await self._probe("GET", "/events/", params={"limit": "100", "skip": "0", "order": "DESC"})
        for item in probe.data if isinstance(probe.data, list) else []:
            if _event_key(item) == key and isinstance(item, dict):
                return str(item.get("id"))
        return None

    async def _reactions(self, event_id: str | None, user: User, start: float) -> None:
        if event_id is None:
            self.report.set("reactions", "unknown", "the test spend's event id could not be found")
            return
        began = time.monotonic()
        wait = self.reaction_wait
        self.report.sent.append(f"GET /events/{{id}}/reactions (every {POLL}s, up to {wait:.0f}s)")
        while time.monotonic() - began < wait:
            probe = await self.client.probe("GET", f"/events/{event_id}/reactions")
            items = probe.data if isinstance(probe.data, list) else []
            if items:
                waited = time.monotonic() - began
                nested = all(isinstance(i, dict) and isinstance(i.get("reactions"), list) for i in items)
                shape = "nested" if nested else "flat"
                if waited > LATE_AFTER:
                    self.report.set("reactions", "delayed", f"first listed after {waited:.1f}s ({shape})")
                else:
                    self.report.set("reactions", shape, f"listed after {waited:.1f}s")
                return
            await self.sleep(POLL)
        balance = (await self.client.get_wallet(user.id)).points_balance
        if balance == start - 1:
            self.report.set("reactions", "never", f"the point was deducted but no reaction was listed in {wait:.0f}s")
        else:
            self.report.set("reactions", "unknown", f"neither a reaction nor a deduction in {wait:.0f}s")

    async def _balance_becomes(self, user: User, points: float) -> bool:
        deadline = time.monotonic() + self.reaction_wait
        while time.monotonic() < deadline:
            if (await self.client.get_wallet(user.id)).points_balance == points:
                return True
            await self.sleep(POLL)
        return False

    async def _key_filter(self, kind: str, known: str | None) -> None:
        point = f"{kind}_key_filter"
        path, base, key_of = (
            ("/events/", "base_url", _event_key) if kind == "event" else ("/orders", "receipts_url", _order_key)
        )
        recent = await self._probe("GET", path, params={"limit": "100", "skip": "0", "order": "DESC"}, base=base)
        if known is None and isinstance(recent.data, list):
            known = next((str(k) for i in recent.data if isinstance(k := key_of(i), str) and k), None)
        query = event_key_filter if kind == "event" else order_key_filter
        absent = await self._probe("GET", path, params=query("tillplug-check-" + secrets.token_hex(8)), base=base)
        if known is None:
            if 400 <= absent.status < 500:
                self.report.set(point, "rejected", f"HTTP {absent.status}: {absent.message or 'no message'}")
            elif isinstance(absent.data, list) and absent.data:
                self.report.set(point, "ignored", f"a key that cannot exist returned {len(absent.data)} result(s)")
            else:
                self.report.set(point, "unknown", f"no {kind} with an eventKey to look up (run with --yes)")
            return
        answer, why = _filter_answer(await self._probe("GET", path, params=query(known), base=base), known, key_of)
        self.report.set(point, *_refine_with_absent(answer, why, absent))


async def engine_check(
    client: EngineClient,
    card: str,
    *,
    event_types: EventTypes,
    write: bool,
    till_id: str,
    branch_id: str,
    reaction_wait: float = REACTION_WAIT,
) -> Report:
    """Run every check; an engine error on the way (unreachable, credentials) is raised from the error tree."""
    check = EngineCheck(client, event_types=event_types, till_id=till_id, branch_id=branch_id)
    check.reaction_wait = reaction_wait
    return await check.run(card, write=write)


def evidence_with_time(report: Report) -> dict[str, Any]:
    return {"checked_at": utc_now_iso(), "points": report.evidence, "sent": report.sent, "net_zero": report.net_zero}


WHAT_TILLPLUG_DOES: dict[str, dict[str, str]] = {
    "reactions": {
        "flat": "reads the flat list",
        "nested": "reads the nested list",
        "delayed": "reports the spend as done, balance marked estimated",
        "never": "reports the spend as done, balance marked estimated",
    },
    "event_key_filter": {
        "honoured": "trusts 'not found' when reconciling",
        "ignored": "reads the recent unfiltered list to settle a row (engine timestamps prove 'not found')",
        "rejected": "reads the recent unfiltered list to settle a row (engine timestamps prove 'not found')",
    },
    "order_key_filter": {
        "honoured": "trusts 'not found' when reconciling",
        "ignored": "reads the recent unfiltered list to settle a row (engine timestamps prove 'not found')",
        "rejected": "reads the recent unfiltered list to settle a row (engine timestamps prove 'not found')",
    },
    "owner_filter": {
        "honoured": "lists the filtered benefits (owner still checked)",
        "ignored": "reads the member's wallet instead",
        "rejected": "reads the member's wallet instead",
    },
    "user_filter": {
        "honoured": "cards carrying an authIdentifier can be looked up",
        "ignored": "cards carrying an authIdentifier are refused: use id or account number",
        "rejected": "cards carrying an authIdentifier are refused: use id or account number",
    },
    "voucher_refusals": {
        "codes": "classifies refusals by code",
        "status_only": "classifies refusals by status and message",
    },
    "write_bodies": {
        "normal": "reads the answer",
        "empty": "looks each write up by eventKey",
        "unreadable": "looks each write up by eventKey",
    },
    "audience_checked": {"yes": "the configured audience matters", "no": "any audience is accepted"},
    "duplicate_event_key": {
        # Recorded only: a refused resend would not say whether the first counted (no look-up is
        # skipped), and an accepted one would count twice (so nothing is ever resent blindly).
        "rejected": "still looks each unanswered write up before any resend (a refusal is not a verdict)",
        "accepted": "never resends a write without a look-up (the engine would count it twice)",
    },
    "auth_identifier_lookup": {
        "answered": "still never used: undocumented",
        "refused": "never used",
    },
}


def table(report: Report) -> list[str]:
    lines = []
    for point, answer in report.answers.items():
        action = WHAT_TILLPLUG_DOES.get(point, {}).get(answer, "trusts nothing it has not seen")
        lines.append(f"{point:24} {answer:12} {report.evidence.get(point, '')}  → {action}")
    for event_type, verdict in report.reactors.items():
        lines.append(f"reactor {event_type:16} {verdict}")
    return lines
