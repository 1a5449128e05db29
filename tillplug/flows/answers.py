"""What the flows answer the till: one model per answer, which the API serialises as it is.

These models are the till API's contract: ``/v1/openapi.json`` is built from them and
``docs/pos-api.md`` describes them, so a field is renamed or removed only with a new API version.
Two rules for whoever builds one:

* A field with a default is *sometimes there*: the till sees it only if the flow set it (the API
  serialises with ``exclude_unset``).  ``print`` is one: absent, no slip was due; null, a slip was
  due and could not be queued (the till was sent an ``error`` saying why).  A field the till
  always sees has no default, so the type checker refuses an answer that leaves it out.
* An answer whose outcome the engine left unknown is a ``Pending``: the API answers it 202, and
  the verdict follows on the event stream.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from tillplug import money


class Answer(BaseModel):
    """One of the flows' answers: every field it may carry is named (anything else is a bug here)."""

    # The document still tells POS developers to expect fields it does not name: new ones may come.
    model_config = ConfigDict(extra="forbid", json_schema_extra={"additionalProperties": True}, defer_build=True)

    def event_data(self, *, exclude: set[str] | None = None) -> dict[str, object]:
        """The answer as an event's data, as it stands now: a field set later (``print``) is not in it."""
        return self.model_dump(mode="json", exclude_unset=True, exclude=exclude)


class Pending(Answer):
    """The engine's answer was lost: whether the write landed is being looked up (the API answers 202)."""


class QueuedJob(Answer):
    """What every print call answers at once; the job's later states come as ``print_job`` events."""

    job: int
    state: Literal["queued"]


PrintField = Field(default=None, description="The slip's print job, when a slip was queued; null without a printer.")


class Money(Answer):
    amount: int = Field(description="Minor units (pence, cents).")
    currency: str = Field(min_length=3, max_length=3)

    @classmethod
    def of(cls, value: money.Money) -> Money:
        return cls(amount=value.minor, currency=value.currency)


class Discount(Answer):
    type: str = Field(description="ABSOLUTE, PERCENTAGE or FIXED, as the engine's reward says.")
    value: float
    sku: str | None = None
    productSku: str | None = None


class Benefit(Answer):
    """A voucher in the member's wallet."""

    id: str
    state: Literal["created", "redeemed", "validated", "burned", "expired"]
    name: str
    expiresAt: str | None
    code: str | None = Field(description="null until the voucher is redeemed")
    discounts: list[Discount]


class MemberView(Answer):
    """What a member's wallet shows the till (also beside a balance slip's print job)."""

    member: str = Field(description="The member's id, masked.")
    pointsBalance: int
    lifetimePoints: int
    tier: str | None
    pointsValue: Money
    vouchers: list[Benefit]


class Wallet(MemberView):
    print: QueuedJob | None = PrintField


class AppliedVoucher(Answer):
    code: str
    benefitId: str | None
    name: str
    discounts: list[Discount]
    burned: bool


class CheckoutView(Answer):
    transactionId: str
    lane: int
    cashierId: str | None
    state: Literal["open", "completed", "voided"]
    member: str | None = Field(description="The member's id, masked; null until a card is scanned.")
    pointsSpent: int
    pointsDiscount: Money
    refunded: int = Field(description="Points given back.")
    vouchers: list[AppliedVoucher]
    offline: bool = Field(description="The member was attached while the engine was down.")
    memberUnverified: bool = Field(
        description="Attached offline from a keyed code not seen lately: no points figure is promised; "
        "points will be added if the card is valid.",
    )
    pointsPending: int = Field(description="Points whose deduction is still being looked up.")
    vouchersPending: list[str] = Field(description="Codes whose burn is being looked up.")


class CheckoutWithWallet(CheckoutView):
    wallet: Wallet | None = Field(description="null when the member was attached offline")
    message: str | None = Field(
        default=None, description="Attached unverified: a sentence for the cashier (points will be added if valid)."
    )

    @classmethod
    def of(cls, view: CheckoutView, wallet: Wallet | None) -> CheckoutWithWallet:
        return cls.model_validate({**dict(view), "wallet": wallet})  # nested answers kept as they are


class PointsSpent(Answer):
    """200: the deduction landed.  Show ``discount``; it becomes final at tender, before payment."""

    transactionId: str
    points: int
    pending: Literal[False]
    discount: Money
    balanceAfter: int
    balanceEstimated: bool = Field(
        description="The engine accepted the spend but its new balance could not be read back."
    )
    final: Literal[False] = Field(
        description="Always false: the points become final at POST /v1/checkouts/{tx}/tender, before payment.",
    )
    eventKey: str
    print: QueuedJob | None = PrintField


class PointsPending(Pending):
    """202: the engine's answer was lost; whether the points were taken is being looked up.  ``discount`` is
    zero on purpose: the verdict comes as a ``points_settled`` event, with the discount to give if landed."""

    transactionId: str
    points: int
    pending: Literal[True]
    discount: Money
    pendingDiscount: Money
    eventKey: str
    message: str


class PointsFinal(Answer):
    """The sale's points at tender (or complete): final, given back (tender answers 409), or unconfirmed."""

    state: Literal["final", "unconfirmed", "none"] = Field(
        description="final: every deduction shown applied and covered; unconfirmed: the engine did not show "
        "some in time (tender again); none: the sale spends no points."
    )
    final: int = Field(description="Points final on this sale.")
    unconfirmed: int = Field(description="Points the engine has not shown taken in time; still spent.")
    discount: Money = Field(description="The points discount the sale carries (final and unconfirmed).")
    balanceAfter: int | None
    overdrawn: int = Field(
        description="complete only: points kept after payment though another till spent them first.",
    )
    message: str | None = None


class BurnFailure(Answer):
    code: str
    error: str
    message: str
    retry: bool = Field(
        description="true: the engine could not answer, the voucher stays on the sale (tender again); "
        "false: it was refused and left the sale, with its discount."
    )


class Tendered(Answer):
    """Before payment: the sale's points made final, then the checked vouchers burned.  Take payment only
    when ``ready``.  409 ``insufficient_points``: another till spent the member's points first and this
    sale's were given back; remove the points discount and tender again."""

    transactionId: str
    burned: list[str]
    failed: list[BurnFailure]
    pending: list[str]
    vouchers: list[AppliedVoucher]
    ready: bool
    points: PointsFinal


class LocalPoolVoucher(Answer):
    """A code the shop manages itself: never sent to the engine."""

    transactionId: str
    kind: Literal["local_pool"]
    code: str


class EngineVoucher(AppliedVoucher):
    """200: the engine's voucher, burned (or only checked, ``burned`` false: tender burns it)."""

    transactionId: str
    kind: Literal["engine"]
    ok: Literal[True]
    pending: Literal[False]
    print: QueuedJob | None = PrintField


class VoucherPending(Pending):
    """202: the burn's outcome is being looked up; its discount is not given until ``voucher_settled`` says."""

    code: str
    discounts: list[Discount] = Field(max_length=0)
    burned: Literal[False]
    transactionId: str
    kind: Literal["engine"]
    ok: Literal[False]
    pending: Literal[True]
    message: str


class Completed(Answer):
    transactionId: str
    state: Literal["completed"]
    expectedPoints: int | None = Field(description="null for a member attached unverified: no figure promised")
    eventKey: str
    voucherBurnFailures: list[BurnFailure] = Field(description="Always empty: vouchers are burned at tender.")
    offline: bool
    points: PointsFinal
    print: QueuedJob | None = PrintField
    message: str | None = Field(
        default=None, description="For a member attached unverified: points will be added if the card is valid."
    )


class Voided(Answer):
    transactionId: str
    state: Literal["voided"]
    pointsRefunded: int
    vouchersNotReinstated: list[str]
    pointsPending: int = Field(description="Refunded if their deduction proves to have landed.")
    vouchersPending: list[str]
    pointsHeld: int = Field(default=0, description="Not given back: the engine shows these points never taken.")
    message: str | None = Field(default=None, description="Why points were held, for the cashier")
    print: QueuedJob | None = PrintField
