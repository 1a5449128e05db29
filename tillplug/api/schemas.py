"""Every body the till API reads or writes, as pydantic models: the OpenAPI document is built from them.

Requests are strict (unknown keys refused, no type coercion, numbers finite and bounded): a bad
request changes nothing.  Answers are validated on the way out, so what a POS developer reads in
``/v1/openapi.json`` is what the server sends.  Answer models keep fields they do not list
(``extra="allow"``): the flows may add a field before its model names it, and it must reach the
till rather than vanish; the contract test still checks every field the models document.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, RootModel

# Bounds a till never reaches: a sale of ten million pounds, a basket line of a million items.
MAX_MINOR_UNITS = 10**12
MAX_QUANTITY = 1_000_000
MAX_POINTS = 10**12


# -- requests ------------------------------------------------------------------------


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class CheckoutCreate(Body):
    transactionId: str = Field(min_length=1, max_length=64)
    lane: int = Field(default=1, ge=1, le=999)
    cashierId: str | None = Field(default=None, min_length=1, max_length=64)


class MemberAttach(Body):
    code: str = Field(min_length=1, max_length=512)
    entry: Literal["scanned", "keyed"] = Field(
        default="keyed",
        description="How the code reached the POS: read by a scanner, or keyed by hand. Offline, a keyed "
        "code not looked up in the last 14 days is attached without a points figure.",
    )


class SpendPoints(Body):
    points: int = Field(gt=0, le=MAX_POINTS)


class VoucherApply(Body):
    code: str = Field(min_length=1, max_length=128)
    checkOnly: bool | None = None


class RedeemBenefit(Body):
    checkOnly: bool | None = None


class BasketLine(Body):
    sku: str = Field(min_length=1, max_length=64)
    # Finite and bounded: an Infinity here once completed a sale whose earn row could never be sent.
    quantity: float = Field(gt=0, le=MAX_QUANTITY, allow_inf_nan=False)
    amount: int = Field(ge=-MAX_MINOR_UNITS, le=MAX_MINOR_UNITS)


class Complete(Body):
    total: int = Field(ge=0, le=MAX_MINOR_UNITS)
    basket: list[BasketLine] = Field(default_factory=list, max_length=500)
    paymentConfirmed: bool


class PrintBalance(Body):
    code: str = Field(min_length=1, max_length=512)
    lane: int = Field(default=1, ge=1, le=999)


class PrintTest(Body):
    printer: str | None = Field(default=None, min_length=1, max_length=64)


MAX_RAW_BYTES = 1 << 20  # a receipt with a logo is tens of kilobytes; a megabyte is a mistake


class PrintRaw(Body):
    data: str = Field(min_length=1, max_length=MAX_RAW_BYTES * 4 // 3 + 4, description="ESC/POS bytes, base64")
    printer: str | None = None
    lane: int | None = Field(default=None, ge=1, le=999)


class DrawerOpen(Body):
    printer: str | None = None
    lane: int | None = Field(default=None, ge=1, le=999)
    pin: Literal[2, 5] = 2


class NoBody(Body):
    """Calls that take no fields: an empty body, or ``{}``."""


# -- errors ----------------------------------------------------------------------------


class ErrorDetail(BaseModel):
    field: str
    problem: str


class ErrorBody(BaseModel):
    code: str = Field(examples=["insufficient_points", "voucher_already_used"])
    message: str = Field(min_length=1, description="A sentence a cashier can read.")
    details: list[ErrorDetail] | None = None


class Error(BaseModel):
    """Every refusal and failure: a stable ``code`` to branch on, a ``message`` to show."""

    error: ErrorBody


# -- answers ---------------------------------------------------------------------------


class Answer(BaseModel):
    model_config = ConfigDict(extra="allow")


class QueuedJob(Answer):
    """What every print call answers at once; the job's later states come as ``print_job`` events."""

    job: int
    state: Literal["queued"]


class PrintJobView(Answer):
    """A print job (also the data of the ``print_job`` event): no bytes, no personal data."""

    job: int
    state: Literal["queued", "printing", "printed", "sent", "held", "failed", "expired", "cancelled"]
    reason: str = Field(description="why it is held, failed or expired; empty otherwise")
    printer: str
    lane: int
    kind: str = Field(description="balance, voucher, points, refund, sale, test, raw or drawer")
    source: Literal["tillplug", "till"]
    reprintOf: int | None
    createdAt: float
    updatedAt: float
    expiresAt: float = Field(description="a queued or held job is not printed by itself after this")
    bytes: int


class PrintJobList(Answer):
    jobs: list[PrintJobView]


PrintField = Field(default=None, description="The slip's print job, when a slip was queued; null without a printer.")


class Money(Answer):
    amount: int = Field(description="Minor units (pence, cents).")
    currency: str = Field(min_length=3, max_length=3)


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


class Wallet(Answer):
    member: str = Field(description="The member's id, masked.")
    pointsBalance: int
    lifetimePoints: int
    tier: str | None
    pointsValue: Money
    vouchers: list[Benefit]
    print: QueuedJob | None = PrintField


class BalancePrinted(QueuedJob):
    """``POST /v1/print/balance``: the slip's print job (``{job, state}``, as every print call answers), with
    the member's view the slip was printed from."""

    member: str = Field(description="The member's id, masked.")
    pointsBalance: int
    lifetimePoints: int
    tier: str | None
    pointsValue: Money
    vouchers: list[Benefit]


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
    offline: bool = Field(default=False, description="The member was attached while the engine was down.")
    memberUnverified: bool = Field(
        default=False,
        description="Attached offline from a keyed code not seen lately: no points figure is promised; "
        "points will be added if the card is valid.",
    )
    pointsPending: int = Field(default=0, description="Points whose deduction is still being looked up.")
    vouchersPending: list[str] = Field(default_factory=list, description="Codes whose burn is being looked up.")


class CheckoutWithWallet(CheckoutView):
    wallet: Wallet | None = Field(description="null when the member was attached offline")


class PointsSpent(Answer):
    """200: the deduction landed.  Show ``discount``; it becomes final at tender, before payment."""

    transactionId: str
    points: int
    pending: Literal[False] = False
    discount: Money
    balanceAfter: int
    balanceEstimated: bool = Field(
        default=False, description="The engine accepted the spend but its new balance could not be read back."
    )
    final: bool = Field(
        default=False,
        description="Always false: the points become final at POST /v1/checkouts/{tx}/tender, before payment.",
    )
    eventKey: str
    print: QueuedJob | None = PrintField


class PointsPending(Answer):
    """202: the engine's answer was lost; whether the points were taken is being looked up.  ``discount`` is
    zero on purpose: the verdict comes as a ``points_settled`` event, with the discount to give if landed."""

    transactionId: str
    points: int
    pending: Literal[True]
    discount: Money
    pendingDiscount: Money
    eventKey: str
    message: str


class PointsAnswer(RootModel[PointsSpent | PointsPending]):
    pass


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
        default=0,
        description="complete only: points kept after payment though another till spent them first.",
    )
    message: str | None = None


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
    points: PointsFinal | None = None


class LocalPoolVoucher(Answer):
    """A code the shop manages itself: never sent to the engine."""

    transactionId: str
    kind: Literal["local_pool"]
    code: str


class EngineVoucher(AppliedVoucher):
    transactionId: str
    kind: Literal["engine"]
    ok: bool
    name: str = ""
    benefitId: str | None = None
    pending: bool = Field(default=False, description="202: the burn's outcome is being looked up (voucher_settled)")
    message: str | None = None
    print: QueuedJob | None = PrintField


class VoucherResult(RootModel[Annotated[LocalPoolVoucher | EngineVoucher, Field(discriminator="kind")]]):
    pass


class BenefitList(Answer):
    benefits: list[Benefit]


class BurnFailure(Answer):
    code: str
    error: str
    message: str


class Completed(Answer):
    transactionId: str
    state: Literal["completed"]
    expectedPoints: int | None = Field(description="null for a member attached unverified: no figure promised")
    eventKey: str
    voucherBurnFailures: list[BurnFailure]
    offline: bool = False
    points: PointsFinal | None = None
    print: QueuedJob | None = PrintField


class Voided(Answer):
    transactionId: str
    state: Literal["voided"]
    pointsRefunded: int
    vouchersNotReinstated: list[str]
    pointsPending: int = Field(default=0, description="Refunded if their deduction proves to have landed.")
    vouchersPending: list[str] = Field(default_factory=list)
    print: QueuedJob | None = PrintField


class TestPrinted(Answer):
    printer: str
    job: int
    state: str


class PaperStatus(Answer):
    state: str = Field(description="ok, warning, error or unknown")
    reason: str


class DeviceHealth(Answer):
    name: str
    kind: str
    state: str = Field(description="connecting, ready, error or stopped")
    reason: str
    since: float
    reconnects: int
    paper: PaperStatus | None = Field(default=None, description="Printers only: the last status read.")


class EngineError(Answer):
    at: float
    endpoint: str
    error: str


class EngineHealth(Answer):
    reachable: bool
    credentialsRefused: bool = Field(description="The engine's last answer to our credentials was 401/403.")
    lastOk: float | None
    lastError: EngineError | None
    latencyMs: dict[str, float]


class OutboxPacing(Answer):
    """How the outbox is paced now (tillplug/outbox/pacing.py)."""

    ratePerSecond: float = Field(description="Requests/s the outbox may send now.")
    sharePerSecond: float = Field(description="This till's configured share of the tenant's limit.")
    fleetInteractivePerSecond: float | None = Field(
        description="The chain's average cashier requests/s per till, as configured (null: unset)."
    )
    fleetWritesPerSecond: float | None = Field(
        description="The chain's average outbox writes/s per till, as configured (null: unset)."
    )
    heldSeconds: float = Field(description="Seconds the outbox still waits (Retry-After, restart).")
    yieldingToInteractive: bool = Field(description="Cashiers' calls are being rate limited: the outbox waits.")
    engineFailing: bool
    drainDeadlineSeconds: float = Field(
        description="Seconds until the chain's drain deadline after an outage (0: not draining towards one)."
    )


class OutboxHealth(Answer):
    pending: int
    sending: int
    delivered: int
    dead: int
    discarded: int
    oldest_pending_age: float
    depth: int
    overLimit: bool
    maxRows: int
    maxAgeHours: float
    stuck: int = Field(description="Writes that have been sending for over 5 minutes.")
    freeBytes: int | None = Field(description="Free space where the outbox lives.")
    snapshotAgeMs: float = Field(description="How old these figures are (refreshed every second).")
    pacing: OutboxPacing | None = None


class Problem(Answer):
    code: str = Field(
        examples=["engine_credentials_refused", "disk_full", "outbox_row_stuck", "printer_fault", "device_not_ready"]
    )
    message: str


class Health(Answer):
    """Built from state the daemon holds: answers in milliseconds, never waits on the engine or a printer."""

    status: Literal["ok", "degraded"] = Field(description="degraded when there is at least one problem")
    version: str
    tillId: str
    branchId: str
    problems: list[Problem]
    devices: list[DeviceHealth]
    engine: EngineHealth
    outbox: OutboxHealth


class RestartBlocker(Answer):
    what: Literal["checkout_open", "engine_write_sending", "print_job_writing", "scan_in_progress"]
    count: int
    lanes: list[int] = Field(description="The lanes concerned, where the work has a lane.")


class RestartReadiness(Answer):
    """Whether restarting the daemon now would interrupt a sale, an engine write or a print job."""

    safe: bool
    reason: str | None = Field(description="Why not, on one line (None when safe).")
    blockers: list[RestartBlocker]


class OpenApiDocument(Answer):
    openapi: str
    info: dict[str, Any]
    paths: dict[str, Any]


class TillEvent(Answer):
    """One event on ``/v1/events`` (the ``data:`` line of a server-sent event)."""

    id: int
    type: str
    lane: int | None
    at: float
    data: dict[str, Any]
