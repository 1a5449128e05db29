"""The till API's own bodies, as pydantic models: requests, errors, and the answers only the API builds.

The flows' answers are typed where they are made (``tillplug.flows.answers``) and sent as they
are; the OpenAPI document is built from both.  Requests are strict (unknown keys refused, no type
coercion, numbers finite and bounded): a bad request changes nothing.  The answers built here from
the daemon's or the spool's data (health, print jobs) are validated on the way out, so what a POS
developer reads in ``/v1/openapi.json`` is what the server sends; they keep fields they do not list
(``extra="allow"``): such a field must reach the till rather than vanish.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, RootModel

from tillplug.flows.answers import Benefit, EngineVoucher, LocalPoolVoucher, MemberView, QueuedJob

# Bounds a till never reaches: a sale of ten million pounds, a basket line of a million items.
MAX_MINOR_UNITS = 10**12
MAX_QUANTITY = 1_000_000
MAX_POINTS = 10**12


# -- requests ------------------------------------------------------------------------


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, defer_build=True)


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


class ReturnLine(Body):
    sku: str = Field(min_length=1, max_length=64)
    quantity: float = Field(gt=0, le=MAX_QUANTITY, allow_inf_nan=False)
    amount: int = Field(ge=0, le=MAX_MINOR_UNITS)


class ReturnCreate(Body):
    returnId: str = Field(
        min_length=1, max_length=64, description="The POS's id of this return: sent again, the same answer"
    )
    transactionId: str = Field(min_length=1, max_length=64, description="The completed sale returned to")
    lane: int = Field(default=1, ge=1, le=999)
    amount: int = Field(
        ge=1,
        le=MAX_MINOR_UNITS,
        description="Minor units: the returned goods' value at the sale's prices, before the points discount",
    )
    lines: list[ReturnLine] = Field(
        default_factory=list, max_length=500, description="The returned basket lines: then capped per SKU too"
    )


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
    waitForCloseSeconds: float = Field(
        default=0,
        ge=0,
        le=30,
        allow_inf_nan=False,
        description="Answer once the drawer has opened and closed again, or after this many seconds "
        "(needs the printer's drawer_sensor); 0 answers at once. The drawer_state event tells the same.",
    )


class NoBody(Body):
    """Calls that take no fields: an empty body, or ``{}``."""


# -- errors ----------------------------------------------------------------------------


class ErrorModel(BaseModel):
    model_config = ConfigDict(defer_build=True)


class ErrorDetail(ErrorModel):
    field: str
    problem: str


class ErrorBody(ErrorModel):
    code: str = Field(examples=["insufficient_points", "voucher_already_used"])
    message: str = Field(min_length=1, description="A sentence a cashier can read.")
    details: list[ErrorDetail] | None = None


class Error(ErrorModel):
    """Every refusal and failure: a stable ``code`` to branch on, a ``message`` to show."""

    error: ErrorBody


# -- answers ---------------------------------------------------------------------------


class Answer(BaseModel):
    """An answer the API builds from the daemon's or the spool's own data (health, print jobs)."""

    model_config = ConfigDict(extra="allow", defer_build=True)


class DrawerView(Answer):
    """What a printer's drawer sensor last said (also the data of the ``drawer_state`` event, less lane/sensor)."""

    printer: str
    lane: int
    sensor: bool = Field(description="false: this printer does not report the drawer sensor (state is unknown)")
    state: Literal["open", "closed", "unknown"]
    reason: str = Field(description="why the state is unknown, or that a waited-for drawer did not open")
    since: float


class DrawerOpened(QueuedJob):
    """The kick's print job; with ``waitForCloseSeconds``, the drawer's state when the call answered."""

    drawer: DrawerView | None = None


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


class BalancePrinted(QueuedJob, MemberView):
    """``POST /v1/print/balance``: the slip's print job (``{job, state}``, as every print call answers), with
    the member's view the slip was printed from."""


class VoucherResult(RootModel[Annotated[LocalPoolVoucher | EngineVoucher, Field(discriminator="kind")]]):
    """200 to a voucher: the shop's own code, or the engine's voucher (a ``VoucherPending`` is 202)."""

    model_config = ConfigDict(defer_build=True)


class BenefitList(Answer):
    benefits: list[Benefit]


class ReturnTakeBack(Answer):
    state: Literal["none", "waiting", "queued", "applied", "unverifiable"]
    policy: Literal["proportion", "none", "all"]
    due: int
    points: int
    notTakenBack: int
    reason: str | None = None


class ReturnGiveBack(Answer):
    state: Literal["none", "queued", "applied"]
    policy: Literal["proportion", "none", "all"]
    points: int


class Returned(Answer):
    returnId: str
    transactionId: str
    lane: int
    amount: int
    currency: str
    returnedSoFar: int
    returnable: int
    pointsEarned: int | None = Field(description="Earned on the sale, as the engine's reactions show (null: not yet)")
    pointsSpent: int
    takeBack: ReturnTakeBack
    giveBack: ReturnGiveBack
    balanceAfter: int | None = None
    balanceEstimated: bool = False
    member: str | None = None


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
