"""Request and response models for the Loyalty Engine (engine-api.md §5).

WLL publishes request schemas only.  Response shapes marked [INFERRED] there
live here, one model each, so a real sandbox can correct them in one place.
Responses are parsed tolerantly: unknown fields ignored, optional ones defaulted.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import AliasPath, BaseModel, ConfigDict, Field


class Wire(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True, defer_build=True)


def utc_now_iso() -> str:
    """ISO-8601 UTC with milliseconds: the engine's occurredAt pattern wants a fraction."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


# -- users and wallets -----------------------------------------------------------


class User(Wire):
    id: str
    account_number: str | None = Field(default=None, alias="accountNumber")
    auth_identifier: str | None = Field(default=None, alias="authIdentifier")
    is_restricted: bool = Field(default=False, alias="isRestricted")
    # Read for the customer's display only (customer_display.member = "first_name"); never logged or stored.
    given_name: str | None = Field(default=None, validation_alias=AliasPath("profile", "givenName"), repr=False)


class Tier(Wire):
    id: str | None = None
    name: str = ""
    points_requirement: float | None = Field(default=None, alias="pointsRequirement")


class Discount(Wire):
    type: Literal["ABSOLUTE", "PERCENTAGE", "FIXED"]
    value: float
    sku: str | None = None
    product_sku: str | None = Field(default=None, alias="productSku")


class Reward(Wire):
    id: str
    name: str = ""
    type: str = "VOUCHER"
    summary: str | None = None
    price: int | None = None
    currency: str | None = None
    code_type: str | None = Field(default=None, alias="codeType")
    discounts: list[Discount] = Field(default_factory=list)


class BenefitCode(Wire):
    id: str | None = None
    value: str
    redeemed_at: str | None = Field(default=None, alias="redeemedAt")
    validated_at: str | None = Field(default=None, alias="validatedAt")


class Benefit(Wire):
    """A member's instance of a reward.  Its state is read from timestamps (§5.3)."""

    id: str
    type: str = "VOUCHER"
    created_at: str | None = Field(default=None, alias="createdAt")
    redeemed_at: str | None = Field(default=None, alias="redeemedAt")
    expires_at: str | None = Field(default=None, alias="expiresAt")
    burned_at: str | None = Field(default=None, alias="burnedAt")
    reward: Reward | None = None
    code: BenefitCode | None = None
    owner: dict[str, Any] | None = None
    owner_id: str | None = Field(default=None, alias="ownerId")

    def owner_ids(self) -> set[str]:
        """Every identifier the benefit names its owner by (empty: the engine did not say)."""
        ids = {self.owner_id} if self.owner_id else set()
        if self.owner:
            ids |= {str(self.owner[k]) for k in ("id", "authIdentifier", "accountNumber") if self.owner.get(k)}
        return ids

    def state(self, now: datetime | None = None) -> str:
        """created, redeemed, validated, burned or expired."""
        now = now or datetime.now(UTC)
        if self.burned_at:
            return "burned"
        validated = self.code is not None and self.code.validated_at
        expires = parse_time(self.expires_at)
        if expires and now > expires and not self.redeemed_at and not validated:
            return "expired"
        if validated:
            return "validated"
        if self.redeemed_at:
            return "redeemed"
        return "created"


class Wallet(Wire):
    points_balance: float = Field(alias="pointsBalance")
    lifetime_earn: float = Field(default=0, alias="lifetimeEarn")
    tier: Tier | None = None
    vouchers: list[Benefit] = Field(default_factory=list)


# -- events ----------------------------------------------------------------------


class EventDefinition(Wire):
    """The body of POST /events/ and /events/test_reaction."""

    type: str = Field(pattern=r"^[A-Z]+(_[A-Z]+)*$", min_length=2, max_length=64)
    subject: str | None = Field(default=None, min_length=1, max_length=128)
    executor: str | None = Field(default=None, min_length=1, max_length=128)
    payload: dict[str, Any] = Field(default_factory=dict)
    occurred_at: str = Field(default_factory=utc_now_iso, alias="occurredAt")

    @property
    def event_key(self) -> str | None:
        key = self.payload.get("eventKey")
        return key if isinstance(key, str) else None

    def body(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True, exclude_none=True)


def new_event_key() -> str:
    return str(uuid.uuid4())


class Event(Wire):
    id: str
    type: str
    subject: str | None = None
    payload: dict[str, Any] = Field(default_factory=dict)
    occurred_at: str | None = Field(default=None, alias="occurredAt")
    created_at: str | None = Field(default=None, alias="createdAt")


class Reaction(Wire):
    type: str
    points: float | None = None


class ReactorResult(Wire):
    """One element of test_reaction's answer [INFERRED]."""

    reactor: dict[str, Any] = Field(default_factory=dict)
    reactions: list[Reaction] = Field(default_factory=list)


def points_of(reactions: list[Reaction]) -> float:
    return sum(r.points or 0 for r in reactions if r.type == "POINTS")


def reactor_points(results: list[ReactorResult]) -> float:
    """Points every reactor of a test_reaction answer would award (negative: deduct)."""
    return points_of([r for result in results for r in result.reactions])


# -- receipts ----------------------------------------------------------------


class OrderLine(Wire):
    sku: str = Field(min_length=1, max_length=64)
    quantity: float = Field(gt=0)
    amount: int  # minor units, line total


class Order(Wire):
    """Receipts POST /orders.  Its schema is unconfirmed (§5.8): this is the one assumed shape."""

    order_id: str = Field(alias="orderId")
    submitter: dict[str, str] | None = None  # {"authIdentifier": ...}; omitted for non-members
    total_spend: int = Field(alias="totalSpend")
    currency: str
    lines: list[OrderLine] = Field(default_factory=list)
    metadata: dict[str, Any] = Field(default_factory=dict)

    def body(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True, exclude_none=True)


class Token(Wire):
    access_token: str
    token_type: str = "Bearer"
    expires_in: float = 86400
