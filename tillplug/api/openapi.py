"""The till API's OpenAPI document, built from the same request models the server validates with."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from tillplug import __version__
from tillplug.api import app as models
from tillplug.api.print_routes import PRINT_ROUTES

ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {
                "code": {"type": "string", "examples": ["insufficient_points", "voucher_already_used"]},
                "message": {"type": "string"},
                "details": {"type": "array"},
            },
        }
    },
}
MONEY = {"type": "object", "properties": {"amount": {"type": "integer"}, "currency": {"type": "string"}}}

# (method, path, summary, request model or None, success status)
ROUTES: list[tuple[str, str, str, Any, int]] = [
    ("get", "/v1/health", "Devices, engine reachability, outbox depth and age", None, 200),
    (
        "get",
        "/v1/events",
        "Server-sent events: scans, member found, voucher results, redemptions, "
        "device states, errors (text/event-stream; Last-Event-ID resumes)",
        None,
        200,
    ),
    ("get", "/v1/members/{code}", "Look a member up without a checkout (balance, vouchers)", None, 200),
    ("post", "/v1/checkouts", "Open a checkout on a lane", models.CheckoutCreate, 201),
    ("get", "/v1/checkouts/{tx}", "A checkout: member, points spent, vouchers", None, 200),
    ("put", "/v1/checkouts/{tx}/member", "Attach a member (same as scanning the card)", models.MemberAttach, 200),
    (
        "post",
        "/v1/checkouts/{tx}/points",
        "Spend points as money (taken now, before completion)",
        models.SpendPoints,
        200,
    ),
    ("post", "/v1/checkouts/{tx}/vouchers", "Validate a voucher code (burn, or checkOnly)", models.VoucherApply, 200),
    ("get", "/v1/checkouts/{tx}/benefits", "The member's vouchers a cashier can pick", None, 200),
    (
        "post",
        "/v1/checkouts/{tx}/benefits/{bid}/redeem",
        "Redeem a picked voucher and validate its code",
        models.RedeemBenefit,
        200,
    ),
    (
        "post",
        "/v1/checkouts/{tx}/complete",
        "Complete the sale after payment: points are earned through the outbox",
        models.Complete,
        200,
    ),
    ("post", "/v1/checkouts/{tx}/void", "Void the sale: every points deduction is given back", None, 200),
    ("post", "/v1/print/balance", "Print a balance slip for a member", models.PrintBalance, 200),
    ("post", "/v1/print/test", "Print the test page", models.PrintTest, 200),
]
ROUTES += [route[:5] for route in PRINT_ROUTES]  # the print spool's routes (tillplug/api/print_routes.py)


@lru_cache(maxsize=1)
def document() -> dict[str, Any]:
    paths: dict[str, Any] = {}
    schemas: dict[str, Any] = {"Error": ERROR, "Money": MONEY}
    for method, path, summary, model, status in ROUTES:
        op: dict[str, Any] = {
            "summary": summary,
            "responses": {
                str(status): {
                    "description": "success",
                    "content": {"application/json": {"schema": {"type": "object"}}},
                },
                "4XX": {
                    "description": "refused; nothing changed",
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
                },
                "5XX": {
                    "description": "the engine or a device failed",
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
                },
            },
        }
        params = [p.strip("{}") for p in path.split("/") if p.startswith("{")]
        if params:
            op["parameters"] = [
                {"name": p, "in": "path", "required": True, "schema": {"type": "string"}} for p in params
            ]
        if model is not None:
            schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
            for name, sub in schema.pop("$defs", {}).items():
                schemas[name] = sub
            schemas[model.__name__] = schema
            op["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}},
            }
        paths.setdefault(path, {})[method] = op
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "tillplug till API",
            "version": __version__,
            "description": "Loopback API for the till software. Money is integer minor units plus currency.",
        },
        "components": {"schemas": schemas, "securitySchemes": {"token": {"type": "http", "scheme": "bearer"}}},
        "security": [{}, {"token": []}],
        "paths": paths,
    }
