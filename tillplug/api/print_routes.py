"""The print spool's routes: jobs, reprints, cancels, the till's own bytes, the cash drawer.

Every call answers at once: a queued job is ``{"job": ID, "state": "queued"}`` (202); what happens
next arrives as ``print_job`` events and in ``GET /v1/print/jobs/{id}``.
"""

from __future__ import annotations

import base64
import binascii
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, Field
from starlette.requests import Request
from starlette.routing import Route

from tillplug.api.app import Body, parse
from tillplug.errors import InvalidRequest
from tillplug.spool import PrintSpools

if TYPE_CHECKING:
    from tillplug.api.app import TillApi

MAX_RAW_BYTES = 1 << 20  # a receipt with a logo is tens of kilobytes; a megabyte is a mistake


class PrintRaw(Body):
    data: str = Field(min_length=1, max_length=MAX_RAW_BYTES * 4 // 3 + 4, description="ESC/POS bytes, base64")
    printer: str | None = None
    lane: int | None = Field(default=None, ge=1, le=999)


class DrawerOpen(Body):
    printer: str | None = None
    lane: int | None = Field(default=None, ge=1, le=999)
    pin: Literal[2, 5] = 2


class QueuedJob(BaseModel):
    """What every print call answers at once."""

    job: int
    state: Literal["queued"]


class PrintJobView(BaseModel):
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


class PrintJobList(BaseModel):
    jobs: list[PrintJobView]


# (method, path, summary, request model, success status, response model): for the OpenAPI document.
PRINT_ROUTES: list[tuple[str, str, str, Any, int, type[BaseModel]]] = [
    ("get", "/v1/print/jobs", "Print jobs, newest first (?printer=&state=&limit=)", None, 200, PrintJobList),
    ("get", "/v1/print/jobs/{id}", "One print job", None, 200, PrintJobView),
    ("delete", "/v1/print/jobs/{id}", "Cancel a queued or held print job", None, 200, PrintJobView),
    ("post", "/v1/print/jobs/{id}/reprint", "Print a job again (a new job, the same bytes)", None, 202, QueuedJob),
    ("post", "/v1/print/raw", "Print the till's own ESC/POS bytes, whole, between slips", PrintRaw, 202, QueuedJob),
    ("post", "/v1/drawer/open", "Open the cash drawer (dropped if not done within 5 s)", DrawerOpen, 202, QueuedJob),
]


def _job_id(request: Request) -> int:
    try:
        return int(request.path_params["id"])
    except ValueError:
        raise InvalidRequest("A print job id is a number.") from None


def print_routes(api: TillApi, spools: PrintSpools) -> list[Route]:
    r = api._wrap

    async def list_jobs(request: Request) -> Any:
        q = request.query_params
        try:
            limit = max(1, min(1000, int(q.get("limit", "100"))))
        except ValueError:
            raise InvalidRequest("limit is a number.") from None
        jobs = await spools.jobs(printer=q.get("printer"), state=q.get("state"), limit=limit)
        return {"jobs": [j.to_dict() for j in jobs]}

    async def get_job(request: Request) -> Any:
        return (await spools.job(_job_id(request))).to_dict()

    async def reprint(request: Request) -> Any:
        return await spools.reprint(_job_id(request))

    async def cancel(request: Request) -> Any:
        return await spools.cancel(_job_id(request))

    async def raw(request: Request) -> Any:
        body = await parse(request, PrintRaw)
        try:
            data = base64.b64decode(body.data, validate=True)
        except (binascii.Error, ValueError):
            raise InvalidRequest("data must be base64.") from None
        if len(data) > MAX_RAW_BYTES:
            raise InvalidRequest(f"data is over {MAX_RAW_BYTES} bytes.")
        return await spools.submit_raw(data, printer=body.printer, lane=body.lane)

    async def drawer(request: Request) -> Any:
        body = await parse(request, DrawerOpen)
        return await spools.open_drawer(printer=body.printer, lane=body.lane, pin=body.pin)

    return [
        Route("/v1/print/jobs", r(list_jobs), methods=["GET"]),
        Route("/v1/print/jobs/{id}", r(get_job), methods=["GET"]),
        Route("/v1/print/jobs/{id}", r(cancel), methods=["DELETE"]),
        Route("/v1/print/jobs/{id}/reprint", r(reprint, status=202), methods=["POST"]),
        Route("/v1/print/raw", r(raw, status=202), methods=["POST"]),
        Route("/v1/drawer/open", r(drawer, status=202), methods=["POST"]),
    ]
