"""Every error tillplug raises, in one tree.

Each error carries a stable machine ``code`` (what the till software branches on)
and a sentence a cashier or technician can read.  Foreign exceptions (httpx,
pyserial, python-escpos, sqlite3) are translated into this tree at the boundary
where they happen and re-raised ``from`` the original.

The first split answers the one question every caller has: *will trying again
help?*

    TillplugError
    ├── RetryableError                 the world may change; try again later
    │   ├── EngineUnavailable          nothing reached the engine, or it said "later"
    │   │   ├── EngineUnreachable      connection refused, DNS, TLS, network down
    │   │   ├── EngineTimeout          timed out connecting, or reading an answer to a read
    │   │   ├── EngineServerError      the engine answered 5xx
    │   │   └── RateLimited            429; ``retry_after`` seconds if the engine said
    │   ├── OutcomeUnknown             the request left; we cannot tell if it was applied
    │   ├── MemberOffline              attached while the engine was down: no spending, no vouchers
    │   ├── DeviceError
    │   │   ├── DeviceGone             unplugged, I/O error, port vanished
    │   │   ├── DeviceBusy             the port is held by another process
    │   │   ├── PrinterNotReady        paper out, cover open, offline
    │   │   └── PrintQueueFull         the printer's waiting jobs or the print database at their bound
    │   ├── StorageError               the till's own disk refused a write
    │   │   └── StorageFull            no space left
    │   └── RelayUnavailable           the chain relay's database cannot be reached (503)
    └── PermanentError                 the same request will fail the same way
        ├── ConfigError                the config file or a secret file is wrong
        │   └── EnrolmentRefused       an enrolment code unsigned, foreign, expired or damaged
        ├── StateDirLocked             another tillplug process holds the state directory
        ├── DriverError                no such driver, or it cannot load
        ├── EngineProtocolError        a body that is not the engine's JSON envelope
        ├── EngineRejected             a 4xx with the engine's own message
        │   ├── EngineAuthError        401/403: key, client credentials or scope
        │   ├── MemberNotFound
        │   ├── BenefitNotFound
        │   └── VoucherError           the six outcomes a till must tell apart
        │       ├── VoucherUnknown
        │       ├── VoucherAlreadyUsed
        │       ├── VoucherExpired
        │       ├── VoucherNotRedeemed
        │       ├── VoucherWrongMember
        │       ├── VoucherWrongVenue
        │       └── VoucherRefused     a refusal none of the six: the engine's message, verbatim
        └── FlowError                  a request the till should not have sent
            ├── InsufficientPoints
            ├── CheckoutNotFound
            ├── CheckoutConflict       e.g. a second completion, a void after completion
            │   ├── VouchersNotTendered  check-only vouchers not burned before payment
            │   └── ReturnExceedsSale  the returns of a sale would add up to more than it
            ├── InvalidRequest
            ├── ReturnIdReused         a returnId already used for another return
            ├── PrintJobNotFound
            ├── PrintJobConflict       e.g. cancelling a job that has printed
            └── RelayRefusal           the chain relay's own refusals of a till (docs/relay.md)
                ├── RelayUnauthorized  no, unknown or revoked till token (401)
                ├── RelayForbidden     outside the till's scope: another member, a listing (403)
                ├── SpendInProgress    another spend on the member did not finish in time (409)
                ├── DuplicateEvent     an eventKey used with another body or by another till (409)
                ├── RefundTooLarge     more than is left of the deduction it reverses (422)
                ├── PointsExceedSale   a return's points move past what the chain reported (422)
                ├── SaleNotReported    no till of the chain reported that sale, or more than one (404)
                └── RelayTooLarge      a body over the relay's limit (413)

Messages never contain secrets: errors are built from what was sent and
received, never from headers or credentials.
"""

from __future__ import annotations

__all__ = [
    "BenefitNotFound",
    "CheckoutConflict",
    "CheckoutNotFound",
    "ConfigError",
    "DeviceBusy",
    "DeviceError",
    "DeviceGone",
    "DriverError",
    "DuplicateEvent",
    "EngineAuthError",
    "EngineProtocolError",
    "EngineRejected",
    "EngineServerError",
    "EngineTimeout",
    "EngineUnavailable",
    "EngineUnreachable",
    "EnrolmentRefused",
    "FlowError",
    "InsufficientPoints",
    "InvalidRequest",
    "MemberNotFound",
    "MemberOffline",
    "OutcomeUnknown",
    "PermanentError",
    "PointsExceedSale",
    "PrintJobConflict",
    "PrintJobNotFound",
    "PrintQueueFull",
    "PrinterNotReady",
    "RateLimited",
    "RefundTooLarge",
    "RelayForbidden",
    "RelayRefusal",
    "RelayTooLarge",
    "RelayUnauthorized",
    "RelayUnavailable",
    "RetryableError",
    "ReturnExceedsSale",
    "ReturnIdReused",
    "SaleNotReported",
    "SpendInProgress",
    "StateDirLocked",
    "StorageError",
    "StorageFull",
    "TillplugError",
    "VoucherAlreadyUsed",
    "VoucherError",
    "VoucherExpired",
    "VoucherNotRedeemed",
    "VoucherRefused",
    "VoucherUnknown",
    "VoucherWrongMember",
    "VoucherWrongVenue",
    "VouchersNotTendered",
]


class TillplugError(Exception):
    """Root of the tree.  ``code`` is stable; ``message`` is for people."""

    code = "internal_error"
    default_message = "Something went wrong inside tillplug."
    http_status = 500

    def __init__(self, message: str | None = None) -> None:
        self.message = message or self.default_message
        super().__init__(self.message)

    def to_dict(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message}


class RetryableError(TillplugError):
    retryable = True


class PermanentError(TillplugError):
    retryable = False


# -- retryable ---------------------------------------------------------------


class EngineUnavailable(RetryableError):
    code = "engine_unreachable"
    default_message = "The loyalty service cannot be reached right now. Try again in a moment."
    http_status = 503


class EngineUnreachable(EngineUnavailable):
    pass


class EngineTimeout(EngineUnavailable):
    code = "engine_timeout"
    default_message = "The loyalty service did not answer in time. Try again in a moment."
    http_status = 504


class EngineServerError(EngineUnavailable):
    code = "engine_error"
    default_message = "The loyalty service had a problem. Try again in a moment."
    http_status = 502


class RateLimited(EngineUnavailable):
    code = "engine_busy"
    default_message = "The loyalty service is busy. Try again in a moment."

    def __init__(self, message: str | None = None, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class OutcomeUnknown(RetryableError):
    """The request was sent and no answer came back: it may or may not be applied.

    Never resend such a write blindly; look it up first (the outbox does).
    """

    code = "engine_outcome_unknown"
    default_message = "The loyalty service did not confirm the request; it may or may not have been applied."
    http_status = 504


class MemberOffline(RetryableError):
    code = "member_offline"
    default_message = (
        "The loyalty service is offline: this sale earns points, but points and vouchers cannot be used now."
    )
    http_status = 503


class DeviceError(RetryableError):
    code = "device_error"
    default_message = "A device is not working."
    http_status = 503


class DeviceGone(DeviceError):
    code = "device_gone"
    default_message = "The device is disconnected."


class DeviceBusy(DeviceError):
    code = "device_busy"
    default_message = "The device is in use by another program."


class PrinterNotReady(DeviceError):
    code = "printer_not_ready"
    default_message = "The printer is not ready (paper, cover or offline)."


class PrintQueueFull(DeviceError):
    """Past a print bound ([printing] max_waiting_jobs, max_waiting_mib, max_database_mib): refused, not queued."""

    code = "print_queue_full"
    default_message = "The printer's queue is full; nothing was queued. Check the printer, then try again."


class StorageError(RetryableError):
    """The till's own disk failed a write: nothing was recorded, and space or repair makes it work again."""

    code = "storage_unavailable"
    default_message = "The till could not record this; nothing was changed. Call a technician."
    http_status = 503


class StorageFull(StorageError):
    code = "storage_full"
    default_message = "The till's disk is full, so this could not be recorded; nothing was changed. Call a technician."
    http_status = 507


# -- permanent -----------------------------------------------------------------


class ConfigError(PermanentError):
    """The config is wrong.  ``problems`` lists each one as (key path, message)."""

    code = "config_error"
    default_message = "The configuration is not valid."

    def __init__(self, message: str | None = None, problems: list[tuple[str, str]] | None = None) -> None:
        super().__init__(message)
        self.problems = problems or []


class EnrolmentRefused(ConfigError):
    """A scanned enrolment code this till will not take; the message says why, never the code."""

    code = "enrolment_refused"
    default_message = "The enrolment code was refused."


class StateDirLocked(PermanentError):
    """Another tillplug process (a daemon, or an outbox command) holds ``state_dir``."""

    code = "state_dir_locked"
    default_message = "Another tillplug process is using the state directory."


class DriverError(PermanentError):
    code = "driver_error"
    default_message = "The device driver cannot be used."


class EngineProtocolError(PermanentError):
    code = "engine_protocol_error"
    default_message = "The loyalty service sent an answer tillplug does not understand."
    http_status = 502


class EngineRejected(PermanentError):
    """The engine said no (4xx).  ``engine_message`` is its own text, verbatim."""

    code = "engine_rejected"
    default_message = "The loyalty service refused the request."
    http_status = 422

    def __init__(
        self, message: str | None = None, *, status: int | None = None, engine_message: str | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.engine_message = engine_message


class EngineAuthError(EngineRejected):
    code = "engine_auth_failed"
    default_message = "The loyalty service refused tillplug's credentials. Call a technician."
    http_status = 502


class MemberNotFound(EngineRejected):
    code = "member_not_found"
    default_message = "No loyalty member has this card."
    http_status = 404


class BenefitNotFound(EngineRejected):
    code = "benefit_not_found"
    default_message = "This voucher is not in the member's wallet."
    http_status = 404


class VoucherError(EngineRejected):
    code = "voucher_invalid"
    default_message = "This voucher cannot be used."


class VoucherUnknown(VoucherError):
    code = "voucher_unknown"
    default_message = "This voucher code is not known."
    http_status = 404


class VoucherAlreadyUsed(VoucherError):
    code = "voucher_already_used"
    default_message = "This voucher has already been used."
    http_status = 409


class VoucherExpired(VoucherError):
    code = "voucher_expired"
    default_message = "This voucher has expired."
    http_status = 410


class VoucherNotRedeemed(VoucherError):
    code = "voucher_not_redeemed"
    default_message = "This voucher has not been activated in the app yet."


class VoucherWrongMember(VoucherError):
    code = "voucher_wrong_member"
    default_message = "This voucher belongs to another member."
    http_status = 403


class VoucherWrongVenue(VoucherError):
    code = "voucher_wrong_venue"
    default_message = "This voucher cannot be used in this shop."
    http_status = 403


class VoucherRefused(VoucherError):
    """The engine refused the voucher in words tillplug cannot classify: its message goes to the till."""

    code = "voucher_refused"
    default_message = "The loyalty service refused this voucher."

    def __init__(
        self, message: str | None = None, *, status: int | None = None, engine_message: str | None = None
    ) -> None:
        if message is None and engine_message:
            message = f"The loyalty service refused this voucher: {engine_message}"
        super().__init__(message, status=status, engine_message=engine_message)


class FlowError(PermanentError):
    code = "bad_request"
    default_message = "The till sent a request that cannot be carried out."
    http_status = 400


class InsufficientPoints(FlowError):
    code = "insufficient_points"
    default_message = "The member does not have enough points."
    http_status = 409


class CheckoutNotFound(FlowError):
    code = "checkout_not_found"
    default_message = "There is no such checkout."
    http_status = 404


class CheckoutConflict(FlowError):
    code = "checkout_conflict"
    default_message = "The checkout is not in a state that allows this."
    http_status = 409


class VouchersNotTendered(CheckoutConflict):
    code = "vouchers_not_tendered"
    default_message = "Vouchers on this sale were only checked: tender the sale (burn them) before taking payment."


class VouchersPending(CheckoutConflict):
    code = "vouchers_pending"
    default_message = (
        "A voucher's use on this sale is still being checked: wait for its verdict (voucher_settled) "
        "on the event stream, or void the sale."
    )


class InvalidRequest(FlowError):
    code = "invalid_request"
    default_message = "The request is not valid."
    http_status = 400

    def __init__(self, message: str | None = None, details: list[dict[str, str]] | None = None) -> None:
        super().__init__(message)
        self.details = details or []  # one {field, problem} per invalid field of a request body


class ReturnExceedsSale(CheckoutConflict):
    code = "return_exceeds_sale"
    default_message = "The returns of this sale would add up to more than was sold."


class ReturnIdReused(FlowError):
    code = "return_id_reused"
    default_message = "This returnId was used for a different return; use a new returnId for a new return."
    http_status = 422


class PrintJobNotFound(FlowError):
    code = "print_job_not_found"
    default_message = "There is no such print job."
    http_status = 404


class PrintJobConflict(FlowError):
    code = "print_job_conflict"
    default_message = "The print job is not in a state that allows this."
    http_status = 409


# -- the chain relay (docs/relay.md) -------------------------------------------


class RelayUnavailable(RetryableError):
    code = "relay_unavailable"
    default_message = "The relay's database cannot be reached; try again shortly."
    http_status = 503


class RelayRefusal(FlowError):
    code = "bad_request"
    default_message = "The relay refused the request."


class RelayUnauthorized(RelayRefusal):
    code = "unauthorized"
    default_message = "This till's token is unknown or revoked."
    http_status = 401


class RelayForbidden(RelayRefusal):
    code = "forbidden"
    default_message = "This till may not do that."
    http_status = 403


class SpendInProgress(RelayRefusal):
    code = "spend_in_progress"
    default_message = "Another till is spending this member's points; try again."
    http_status = 409


class DuplicateEvent(RelayRefusal):
    code = "duplicate_event"
    default_message = "This eventKey was already used for another event."
    http_status = 409


class RefundTooLarge(RelayRefusal):
    code = "refund_exceeds_deduction"
    default_message = "The refund is larger than what is left of the deduction it reverses."
    http_status = 422


class PointsExceedSale(RelayRefusal):
    code = "points_exceed_sale"
    default_message = "The returns of this sale would move more points than the chain reported for it."
    http_status = 422


class SaleNotReported(RelayRefusal):
    code = "sale_not_found"
    default_message = "No till of the chain has reported this sale to the relay."
    http_status = 404


class RelayTooLarge(RelayRefusal):
    code = "too_large"
    default_message = "The request body is too large."
    http_status = 413
