"""The one table of the till API's operations: the server's routes and the OpenAPI document both come from it."""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property

from pydantic import BaseModel

from tillplug.api import schemas as s
from tillplug.flows import answers as a

PENDING_STATUS = 202  # an unknown outcome: the verdict follows on /v1/events


@dataclass(frozen=True)
class Operation:
    method: str
    path: str
    summary: str
    handler: str  # the name of the TillApi method that answers it
    request: type[BaseModel] | None = None
    response: type[BaseModel] | None = None  # None: not JSON (a stream, the metrics text)
    status: int = 200
    # The answer when the engine's answer was lost and the outcome is being looked up (202).
    pending: type[a.Pending] | None = None
    media_type: str = "application/json"
    auth: bool = True
    documented: bool = True
    # Takes an Idempotency-Key header: a retry with the same key answers the first call's answer.
    idempotent: bool = False
    # A long-lived answer (server-sent events): counted against the API's stream cap, ended at shutdown.
    stream: bool = False
    # A body limit of its own, above api.max_body_bytes (None: the configured limit).
    max_body_bytes: int | None = None

    @property
    def path_params(self) -> list[str]:
        return [p.strip("{}") for p in self.path.split("/") if p.startswith("{")]

    @property
    def typed_body(self) -> bool:
        """Acts on a body of its own: it must come as JSON, even when empty (a web page's simple request
        cannot say ``Content-Type: application/json``)."""
        return self.request is not None and self.request is not s.NoBody

    def status_for(self, answer: type[object]) -> int:
        """The HTTP status of an answer of this type: a ``Pending`` is 202, any other the operation's own."""
        return PENDING_STATUS if issubclass(answer, a.Pending) else self.status

    @cached_property
    def pattern(self) -> re.Pattern[str]:
        return re.compile("^" + re.sub(r"\\{[^}/]+\\}", "[^/]+", re.escape(self.path)) + "$")

    def matches(self, method: str, path: str) -> bool:
        return method == self.method and self.pattern.match(path) is not None


OPERATIONS: tuple[Operation, ...] = (
    Operation("GET", "/v1/health", "Devices, engine reachability, outbox depth and age", "health", response=s.Health),
    Operation(
        "GET",
        "/v1/restart",
        "Whether a restart now would interrupt a checkout, an engine write, a print job or a scan "
        "(what `tillplug ready-to-restart` and an update ask)",
        "restart",
        response=s.RestartReadiness,
    ),
    Operation(
        "GET",
        "/v1/events",
        "Server-sent events: scans, member found, voucher results, redemptions, device states, errors "
        "(text/event-stream; each data line is a TillEvent; Last-Event-ID resumes). Streams share a cap "
        "(a quarter of api.max_connections): beyond it, 503 too_many_streams with Retry-After",
        "stream",
        media_type="text/event-stream",
        stream=True,
    ),
    Operation("GET", "/v1/openapi.json", "This document", "openapi", response=s.OpenApiDocument, auth=False),
    Operation(
        "GET",
        "/metrics",
        "Prometheus metrics for fleet operators",
        "metrics",
        media_type="text/plain",
        documented=False,
    ),
    Operation(
        "GET",
        "/v1/members/{code}",
        "Look a member up without a checkout (balance, vouchers)",
        "lookup",
        response=a.Wallet,
    ),
    Operation(
        "POST",
        "/v1/checkouts",
        "Open a checkout on a lane",
        "open_checkout",
        request=s.CheckoutCreate,
        response=a.CheckoutView,
        status=201,
        idempotent=True,
    ),
    Operation(
        "GET",
        "/v1/checkouts/{tx}",
        "A checkout: member, points spent, vouchers",
        "get_checkout",
        response=a.CheckoutView,
    ),
    Operation(
        "PUT",
        "/v1/checkouts/{tx}/member",
        "Attach a member (same as scanning the card)",
        "attach_member",
        request=s.MemberAttach,
        response=a.CheckoutWithWallet,
        idempotent=True,
    ),
    Operation(
        "POST",
        "/v1/checkouts/{tx}/points",
        "Spend points as money (taken now, before completion)",
        "spend_points",
        request=s.SpendPoints,
        response=a.PointsSpent,
        pending=a.PointsPending,
        idempotent=True,
    ),
    Operation(
        "POST",
        "/v1/checkouts/{tx}/vouchers",
        "Validate a voucher code (burn, or checkOnly)",
        "apply_voucher",
        request=s.VoucherApply,
        response=s.VoucherResult,
        pending=a.VoucherPending,
        idempotent=True,
    ),
    Operation(
        "GET",
        "/v1/checkouts/{tx}/benefits",
        "The member's vouchers a cashier can pick",
        "list_benefits",
        response=s.BenefitList,
    ),
    Operation(
        "POST",
        "/v1/checkouts/{tx}/benefits/{bid}/redeem",
        "Redeem a picked voucher and validate its code",
        "redeem_benefit",
        request=s.RedeemBenefit,
        response=s.VoucherResult,
        pending=a.VoucherPending,
        idempotent=True,
    ),
    Operation(
        "POST",
        "/v1/checkouts/{tx}/tender",
        "Before payment: make the sale's points final (or give them back: 409 insufficient_points), "
        "burn the checked vouchers",
        "tender",
        request=s.NoBody,
        response=a.Tendered,
        idempotent=True,
    ),
    Operation(
        "POST",
        "/v1/checkouts/{tx}/complete",
        "Complete the sale after payment: points are earned through the outbox",
        "complete",
        request=s.Complete,
        response=a.Completed,
        idempotent=True,
    ),
    Operation(
        "POST",
        "/v1/checkouts/{tx}/void",
        "Void the sale: every points deduction is given back",
        "void",
        request=s.NoBody,
        response=a.Voided,
        idempotent=True,
    ),
    Operation(
        "POST",
        "/v1/returns",
        "A return after the sale: earned points taken back, spent points given back, in proportion; "
        "the same returnId answers the first answer again",
        "create_return",
        request=s.ReturnCreate,
        response=s.Returned,
        status=201,
        idempotent=True,
    ),
    Operation(
        "POST",
        "/v1/print/balance",
        "Print a balance slip for a member: answers its print job {job, state} at once",
        "print_balance",
        request=s.PrintBalance,
        response=s.BalancePrinted,
    ),
    Operation(
        "POST", "/v1/print/test", "Print the test page", "print_test", request=s.PrintTest, response=s.TestPrinted
    ),
    Operation(
        "GET",
        "/v1/print/jobs",
        "Print jobs, newest first (?printer=&state=&limit=)",
        "list_print_jobs",
        response=s.PrintJobList,
    ),
    Operation("GET", "/v1/print/jobs/{id}", "One print job", "get_print_job", response=s.PrintJobView),
    Operation(
        "DELETE",
        "/v1/print/jobs/{id}",
        "Cancel a queued or held print job",
        "cancel_print_job",
        response=s.PrintJobView,
    ),
    Operation(
        "POST",
        "/v1/print/jobs/{id}/reprint",
        "Print a job again (a new job, the same bytes)",
        "reprint",
        request=s.NoBody,
        response=a.QueuedJob,
        status=202,
    ),
    Operation(
        "POST",
        "/v1/print/raw",
        "Print the till's own ESC/POS bytes (up to 1 MiB, base64), whole, between slips",
        "print_raw",
        request=s.PrintRaw,
        response=a.QueuedJob,
        status=202,
        idempotent=True,
        # Base64 of MAX_RAW_BYTES, the JSON around it, and room for the other fields.
        max_body_bytes=s.MAX_RAW_BYTES * 4 // 3 + 4096,
    ),
    Operation(
        "POST",
        "/v1/drawer/open",
        "Open the cash drawer (dropped if not done within 5 s); waitForCloseSeconds (at most 30) answers when "
        "it has closed again",
        "open_drawer",
        request=s.DrawerOpen,
        response=s.DrawerOpened,
        status=202,
        idempotent=True,
    ),
    Operation(
        "GET",
        "/display/{lane}",
        "The customer display page for one lane (?key=, the lane's read-only page key): member, balance, "
        "points of the sale, vouchers, as they happen",
        "display_page",
        media_type="text/html",
        auth=False,
    ),
    Operation(
        "GET",
        "/display/{lane}/events",
        "The lane's customer screen as server-sent events (?key=): what the display page shows, nothing else; "
        "counted against the stream cap",
        "display_stream",
        media_type="text/event-stream",
        auth=False,
        stream=True,
    ),
    Operation(
        "GET",
        "/v1/drawer",
        "The cash drawer's state from its sensor (?printer= or ?lane=): open, closed, or unknown with why",
        "drawer",
        response=s.DrawerView,
    ),
)
