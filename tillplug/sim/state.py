"""The simulator's engine: members, benefits, events and reactors, as engine-api.md describes them.

Plain Python with no HTTP in it, so the rules are easy to read and to test.
Like the real engine it allows negative balances, never de-duplicates events,
and applies reactions asynchronously (after ``delay_seconds``).
"""

from __future__ import annotations

import copy
import json
import re
import secrets
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from importlib.resources import files
from pathlib import Path
from typing import Any

OCCURRED_AT = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d+Z?$")
EVENT_TYPE = re.compile(r"^[A-Z]+(_[A-Z]+)*$")
INTRINSIC = {
    "REGISTERED_ACCOUNT",
    "PURCHASED_REWARD",
    "REDEEMED_VOUCHER",
    "BURNED_VOUCHER",
    "VOUCHER_GIVEN",
    "POINTS_ADJUSTED",
    "POINTS_EXPIRED",
    "PROFILE_UPDATED",
    "CONSENT_GIVEN",
    "CONSENT_REVOKED",
    "CLOSED_ACCOUNT",
    "REFERRAL_TRANCHE_ACTIVATION",
    "ORDER_PLACED",
}


class SimError(Exception):
    """An engine refusal: HTTP status, machine code and message, as the engine would send."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def iso(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _expired(benefit: dict[str, Any], now: datetime) -> bool:
    expires = benefit["expiresAt"]
    return bool(expires) and datetime.fromisoformat(expires.replace("Z", "+00:00")) < now


def default_seed() -> dict[str, Any]:
    seed: dict[str, Any] = json.loads(files("tillplug.sim").joinpath("seed.json").read_text(encoding="utf-8"))
    return seed


def load_seed(path: str | Path | None) -> dict[str, Any]:
    return default_seed() if path is None else json.loads(Path(path).read_text(encoding="utf-8"))


@dataclass
class Ledger:
    """What reached the engine: the tests and the demo read this."""

    events: list[dict[str, Any]] = field(default_factory=list)
    burns: list[dict[str, Any]] = field(default_factory=list)
    orders: list[dict[str, Any]] = field(default_factory=list)

    def duplicates(self) -> dict[str, int]:
        keys = Counter(e["payload"].get("eventKey") for e in self.events if e["payload"].get("eventKey"))
        return {k: n for k, n in keys.items() if n > 1}


class EngineState:
    def __init__(self, seed: dict[str, Any], *, clock: Callable[[], float] = time.time) -> None:
        self.seed = seed
        self.clock = clock
        tenant = seed["tenant"]
        self.api_key: str = tenant["api_key"]
        self.client_id: str = tenant["client_id"]
        self.client_secret: str = tenant["client_secret"]
        self.event_types: set[str] = set(tenant["event_types"])
        self.event_type_secrets: dict[str, str] = dict(tenant.get("event_type_secrets", {}))
        self.reactors: dict[str, Any] = dict(seed["reactors"])
        self.token_lifetime = 86400.0
        self.tokens: dict[str, float] = {}  # token -> expiry (clock seconds)
        self.members: dict[str, dict[str, Any]] = {}
        self.rewards: dict[str, dict[str, Any]] = {r["id"]: copy.deepcopy(r) for r in seed["rewards"]}
        self.benefits: dict[str, dict[str, Any]] = {}
        self.events: dict[str, dict[str, Any]] = {}
        self.reactions: dict[str, list[dict[str, Any]]] = {}
        self.reactions_due = 0  # scheduled, not yet applied: lets tests wait for the engine to settle
        self.ledger = Ledger()
        for m in seed["members"]:
            member = copy.deepcopy(m)
            self.members[member["id"]] = member
        now = datetime.fromtimestamp(self.clock(), UTC)
        for b in seed["benefits"]:
            self.benefits[b["id"]] = self._seed_benefit(b, now)

    # -- look-ups ------------------------------------------------------------------

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.clock(), UTC)

    def find_member(self, ident: str) -> dict[str, Any] | None:
        """By WLL UUID, 7-digit account number or authIdentifier."""
        for m in self.members.values():
            if ident in (m["id"], m.get("accountNumber"), m.get("authIdentifier")):
                return m
        return None

    def member(self, ident: str, *, by_auth_identifier: bool = True) -> dict[str, Any]:
        m = self.find_member(ident)
        if m is not None and not by_auth_identifier and ident not in (m["id"], m.get("accountNumber")):
            m = None  # WLL documents GET /users/{id} for the WLL id and the account number only
        if m is None:
            raise SimError(404, "USER_NOT_FOUND", "User not found")
        return m

    def _seed_benefit(self, b: dict[str, Any], now: datetime) -> dict[str, Any]:
        owner = self.member(b["owner"])
        created = now - timedelta(days=10)
        state = b.get("state", "created")
        benefit = {
            "id": b["id"],
            "type": "VOUCHER",
            "createdAt": iso(created),
            "redeemedAt": None,
            "burnedAt": None,
            "expiresAt": iso(now - timedelta(days=1) if state == "expired" else now + timedelta(days=30)),
            "ownerId": owner["id"],
            "rewardId": b["reward"],
            "code": {
                "id": str(uuid.uuid5(uuid.NAMESPACE_URL, b["code"])),
                "value": b["code"],
                "createdAt": iso(created),
                "updatedAt": iso(created),
                "redeemedAt": None,
                "validatedAt": None,
            },
        }
        if state in ("redeemed", "validated", "burned"):
            benefit["redeemedAt"] = benefit["code"]["redeemedAt"] = iso(created + timedelta(days=1))
        if state in ("validated", "burned"):
            benefit["code"]["validatedAt"] = iso(created + timedelta(days=2))
        if state == "burned":
            benefit["burnedAt"] = iso(created + timedelta(days=2))
        return benefit

    def benefit_view(self, b: dict[str, Any]) -> dict[str, Any]:
        owner = self.members[b["ownerId"]]
        view = {k: v for k, v in b.items() if k not in ("ownerId", "rewardId")}
        view["reward"] = self.rewards[b["rewardId"]]
        view["owner"] = {"id": owner["id"], "authIdentifier": owner.get("authIdentifier")}
        return copy.deepcopy(view)

    def benefits_of(self, ident: str) -> list[dict[str, Any]]:
        owner = self.member(ident)
        return [self.benefit_view(b) for b in self.benefits.values() if b["ownerId"] == owner["id"]]

    def wallet(self, ident: str) -> dict[str, Any]:
        m = self.member(ident)
        return {
            "pointsBalance": m["pointsBalance"],
            "lifetimeEarn": m.get("lifetimeEarn", 0),
            "loyaltyCost": 0,
            "tier": m.get("tier"),
            "vouchers": self.benefits_of(m["id"]),
        }

    def user(self, ident: str, *, by_auth_identifier: bool = True) -> dict[str, Any]:
        m = self.member(ident, by_auth_identifier=by_auth_identifier)
        # Personal data is in the profile, as on WLL; tillplug must never copy it into events.
        return {
            "id": m["id"],
            "accountNumber": m.get("accountNumber"),
            "authIdentifier": m.get("authIdentifier"),
            "externalIdentifier": None,
            "isRestricted": False,
            "flags": {},
            "profile": {"givenName": "Sam", "familyName": "Member", "emailAddress": "member@example.invalid"},
        }

    # -- auth --------------------------------------------------------------------

    def issue_token(self, body: dict[str, Any], *, check_audience: bool = False) -> dict[str, Any]:
        if check_audience and body.get("audience") != "wlloyalty.net":
            raise SimError(403, "INVALID_AUDIENCE", "Service not enabled within domain")
        if (
            body.get("grant_type") != "client_credentials"
            or body.get("client_id") != self.client_id
            or not secrets.compare_digest(str(body.get("client_secret", "")), self.client_secret)
        ):
            raise SimError(401, "INVALID_CLIENT", "Unauthorized")
        token = secrets.token_urlsafe(24)
        self.tokens[token] = self.clock() + self.token_lifetime
        return {"access_token": token, "token_type": "Bearer", "expires_in": self.token_lifetime, "scope": "admin"}

    def bearer_ok(self, token: str | None, event_type: str | None = None) -> bool:
        if token is None:
            return False
        if event_type is not None and self.event_type_secrets.get(event_type) == token:
            return True
        expiry = self.tokens.get(token)
        return expiry is not None and self.clock() < expiry

    # -- vouchers ----------------------------------------------------------------

    def _benefit(self, benefit_id: str) -> dict[str, Any]:
        b = self.benefits.get(benefit_id)
        if b is None:
            raise SimError(404, "BENEFIT_NOT_FOUND", "Benefit not found")
        return b

    def redeem_benefit(self, benefit_id: str) -> dict[str, Any]:
        b = self._benefit(benefit_id)
        now = self.now()
        if b["burnedAt"]:
            raise SimError(409, "BENEFIT_ALREADY_BURNED", "Benefit has already been used")
        if b["redeemedAt"]:
            raise SimError(409, "BENEFIT_ALREADY_REDEEMED", "Benefit has already been redeemed")
        if _expired(b, now):
            raise SimError(409, "BENEFIT_EXPIRED", "Benefit has expired")
        b["redeemedAt"] = b["code"]["redeemedAt"] = b["code"]["updatedAt"] = iso(now)
        return self.benefit_view(b)

    def validate_voucher(self, body: dict[str, Any]) -> dict[str, Any]:
        code = body.get("code")
        if not isinstance(code, str) or not code:
            raise SimError(400, "VALIDATION_ERROR", "code is required")
        b = next((b for b in self.benefits.values() if b["code"]["value"] == code), None)
        if b is None:
            raise SimError(404, "VOUCHER_NOT_FOUND", "Voucher code not found")
        now = self.now()
        if b["burnedAt"]:
            raise SimError(409, "VOUCHER_ALREADY_BURNED", "Voucher has already been used")
        if _expired(b, now):
            raise SimError(409, "VOUCHER_EXPIRED", "Voucher has expired")
        if not b["redeemedAt"]:
            raise SimError(409, "VOUCHER_NOT_REDEEMED", "Voucher has not been redeemed")
        user = body.get("userIdentifier")
        if user:
            owner = self.members[b["ownerId"]]
            if user not in (owner["id"], owner.get("accountNumber"), owner.get("authIdentifier")):
                raise SimError(403, "VOUCHER_WRONG_USER", "Voucher belongs to another user")
        venue = body.get("venueIdentifier")
        venues = [v["id"] for v in self.rewards[b["rewardId"]].get("venues", [])]
        if venues and venue not in venues:
            raise SimError(403, "VOUCHER_WRONG_VENUE", "Voucher is not valid at this venue")
        b["code"]["validatedAt"] = b["code"]["updatedAt"] = iso(now)
        if not body.get("allowFutureValidation"):
            b["burnedAt"] = iso(now)
            self.ledger.burns.append({"code": code, "benefitId": b["id"], "at": iso(now)})
        return self.benefit_view(b)

    # -- events and reactors -----------------------------------------------------

    def check_event(self, body: dict[str, Any]) -> dict[str, Any]:
        etype = body.get("type")
        if not isinstance(etype, str) or not EVENT_TYPE.match(etype) or not 2 <= len(etype) <= 64:
            raise SimError(400, "VALIDATION_ERROR", "type must match ^[A-Z]+(_[A-Z]+)*$")
        if etype in INTRINSIC:
            raise SimError(400, "INTRINSIC_EVENT", f"{etype} is an intrinsic event and cannot be reported")
        if etype not in self.event_types:
            raise SimError(400, "UNKNOWN_EVENT_TYPE", f"Event type {etype} does not exist")
        occurred = body.get("occurredAt")
        if occurred is not None and (not isinstance(occurred, str) or not OCCURRED_AT.match(occurred)):
            raise SimError(400, "VALIDATION_ERROR", "occurredAt must be ISO-8601 with fractional seconds")
        payload = body.get("payload", {})
        if not isinstance(payload, dict):
            raise SimError(400, "VALIDATION_ERROR", "payload must be an object")
        moves_points = etype in (
            self.reactors["spend_event_type"],
            self.reactors["refund_event_type"],
            self.reactors.get("take_back_event_type"),
        )
        if moves_points and (not isinstance(payload.get("points"), (int, float)) or payload["points"] < 0):
            raise SimError(400, "SCHEMA_MISMATCH", "payload.points must be a non-negative number")
        subject = body.get("subject")
        member = self.find_member(subject) if isinstance(subject, str) else None
        if subject is not None and member is None:
            raise SimError(404, "SUBJECT_NOT_FOUND", "Subject does not match a user")
        return {"type": etype, "member": member, "payload": payload}

    def points_for(self, etype: str, payload: dict[str, Any]) -> float:
        r = self.reactors
        if etype in r["earn_event_types"]:
            total = payload.get("total", payload.get("totalSpend", 0))
            return (int(total) * float(r["earn_per_major_unit"])) // 100 if isinstance(total, (int, float)) else 0
        if etype == r["spend_event_type"]:
            # A tenant whose redemption reactor is missing, or has a condition tillplug's events do not
            # meet, accepts the event and deducts nothing (issue 22).
            redemption = r.get("redemption", "present")
            if redemption == "missing" or (redemption == "conditional" and payload.get("channel") != "app"):
                return 0
            return -float(payload["points"])
        if etype == r["refund_event_type"]:  # a void's refund, and a return's give-back
            return float(payload["points"])
        if etype == r.get("take_back_event_type"):  # a return takes earned points back
            return 0 if r.get("take_back") == "missing" else -float(payload["points"])
        return 0

    def test_reaction(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        checked = self.check_event(body)
        points = self.points_for(checked["type"], checked["payload"])
        if not points:
            return []
        return [
            {
                "reactor": {"id": f"reactor-{checked['type'].lower()}", "name": f"{checked['type']} points"},
                "reactions": [{"type": "POINTS", "points": points}],
            }
        ]

    def record_event(self, body: dict[str, Any], *, intrinsic: str | None = None) -> dict[str, Any]:
        """Store an event and return it; the reaction is applied later by ``apply_reaction``."""
        if intrinsic:
            checked = {
                "type": intrinsic,
                "member": self.find_member(body.get("subject") or ""),
                "payload": body.get("payload", {}),
            }
        else:
            checked = self.check_event(body)
        now = self.now()
        event = {
            "id": str(uuid.uuid4()),
            "type": checked["type"],
            "subject": checked["member"]["id"] if checked["member"] else None,
            "executor": body.get("executor"),
            "payload": checked["payload"],
            "occurredAt": body.get("occurredAt") or iso(now),
            "createdAt": iso(now),
        }
        self.events[event["id"]] = event
        self.reactions[event["id"]] = []
        self.ledger.events.append(copy.deepcopy(event))
        return event

    def apply_reaction(self, event_id: str) -> None:
        self.reactions_due -= 1
        event = self.events[event_id]
        points = self.points_for(event["type"], event["payload"])
        if event["subject"] and points:
            member = self.members[event["subject"]]
            member["pointsBalance"] += points  # may go negative, as on WLL
            if points > 0:
                member["lifetimeEarn"] = member.get("lifetimeEarn", 0) + points
            self.reactions[event_id].append({"type": "POINTS", "points": points})

    def find_events(self, event_key: str | None, limit: int, skip: int = 0) -> list[dict[str, Any]]:
        found = [
            e
            for e in reversed(list(self.events.values()))
            if event_key is None or e["payload"].get("eventKey") == event_key
        ]
        return copy.deepcopy(found[skip : skip + limit])

    def submit_order(self, body: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        if not isinstance(body.get("orderId"), str) or not isinstance(body.get("totalSpend"), int):
            raise SimError(400, "VALIDATION_ERROR", "orderId (string) and totalSpend (integer) are required")
        submitter = body.get("submitter") or {}
        auth_id = submitter.get("authIdentifier") if isinstance(submitter, dict) else None
        if auth_id is not None and self.find_member(auth_id) is None:
            raise SimError(400, "SUBJECT_NOT_FOUND", "submitter.authIdentifier does not match a user")
        order = {"id": str(uuid.uuid4()), **copy.deepcopy(body), "createdAt": iso(self.now())}
        self.ledger.orders.append(order)
        event = self.record_event(
            {
                "subject": auth_id,
                "payload": {
                    "totalSpend": body["totalSpend"],
                    "orderId": body["orderId"],
                    "eventKey": (body.get("metadata") or {}).get("eventKey"),
                },
            },
            intrinsic="ORDER_PLACED",
        )
        return order, event

    def find_orders(self, event_key: str | None) -> list[dict[str, Any]]:
        return [
            copy.deepcopy(o)
            for o in self.ledger.orders
            if event_key is None or (o.get("metadata") or {}).get("eventKey") == event_key
        ]

    def ledger_view(self) -> dict[str, Any]:
        return {
            "events": [
                {
                    "id": e["id"],
                    "type": e["type"],
                    "subject": e["subject"],
                    "eventKey": e["payload"].get("eventKey"),
                    "points": e["payload"].get("points"),
                    "total": e["payload"].get("total"),
                    "receivedAt": e["createdAt"],
                }
                for e in self.ledger.events
            ],
            "duplicates": self.ledger.duplicates(),
            "balances": {m["id"]: m["pointsBalance"] for m in self.members.values()},
            "burns": list(self.ledger.burns),
            "orders": [{"orderId": o["orderId"], "totalSpend": o["totalSpend"]} for o in self.ledger.orders],
        }
