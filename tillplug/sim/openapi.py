"""The simulator's own OpenAPI document: what it promises, so schemathesis can hold it to it."""

from __future__ import annotations

from typing import Any


def _envelope(data: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["status", "data"],
        "properties": {"status": {"type": "string", "enum": ["success"]}, "data": data},
    }


ERROR = {
    "type": "object",
    "required": ["message"],
    "properties": {"status": {"type": "string"}, "message": {"type": "string"}, "data": {"type": "object"}},
}
DISCOUNT = {
    "type": "object",
    "required": ["type", "value"],
    "properties": {
        "type": {"enum": ["ABSOLUTE", "PERCENTAGE", "FIXED"]},
        "value": {"type": "number"},
        "sku": {"type": "string"},
    },
}
BENEFIT = {
    "type": "object",
    "required": ["id", "type", "createdAt", "code", "reward"],
    "properties": {
        "id": {"type": "string"},
        "type": {"type": "string"},
        "createdAt": {"type": "string"},
        "redeemedAt": {"type": ["string", "null"]},
        "burnedAt": {"type": ["string", "null"]},
        "expiresAt": {"type": ["string", "null"]},
        "code": {"type": "object", "required": ["value"], "properties": {"value": {"type": "string"}}},
        "reward": {
            "type": "object",
            "required": ["id", "name"],
            "properties": {
                "id": {"type": "string"},
                "name": {"type": "string"},
                "discounts": {"type": "array", "items": DISCOUNT},
            },
        },
    },
}
EVENT = {
    "type": "object",
    "required": ["id", "type", "payload", "createdAt"],
    "properties": {
        "id": {"type": "string"},
        "type": {"type": "string"},
        "payload": {"type": "object"},
        "createdAt": {"type": "string"},
        "subject": {"type": ["string", "null"]},
    },
}
OCCURRED_AT = {"type": "string", "pattern": r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d+Z?$"}


def _event_body(earn: str, spend: str, refund: str) -> dict[str, Any]:
    """One alternative per configured event type; spend and refund need a non-negative ``points``."""
    points = {"type": "object", "required": ["points"], "properties": {"points": {"type": "integer", "minimum": 0}}}

    def alt(etype: str, payload: dict[str, Any], required: tuple[str, ...] = ("type",)) -> dict[str, Any]:
        return {
            "type": "object",
            "required": list(required),
            "additionalProperties": False,
            "properties": {
                "type": {"type": "string", "enum": [etype]},
                "subject": {"type": "string", "enum": ["1000001", "auth-bob"]},
                "executor": {"type": "string", "minLength": 1, "maxLength": 128},
                "payload": payload,
                "occurredAt": OCCURRED_AT,
            },
        }

    with_payload = ("type", "payload")
    return {
        "oneOf": [alt(earn, {"type": "object"}), alt(spend, points, with_payload), alt(refund, points, with_payload)]
    }


EVENT_BODY = _event_body("TRANSACTION", "REDEEMED_POINTS", "POINTS_REFUND")


def _op(
    summary: str,
    ok_schema: dict[str, Any],
    *,
    body: dict[str, Any] | None = None,
    params: list[dict[str, Any]] | None = None,
    errors: tuple[int, ...] = (400, 401, 403, 404, 409, 429),
) -> dict[str, Any]:
    op: dict[str, Any] = {
        "summary": summary,
        "security": [{"apiKey": [], "bearer": []}],
        "responses": {
            "200": {"description": "success", "content": {"application/json": {"schema": _envelope(ok_schema)}}},
            **{str(s): {"description": "refused", "content": {"application/json": {"schema": ERROR}}} for s in errors},
        },
    }
    if body is not None:
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": body}}}
    if params:
        op["parameters"] = params
    return op


def _path(name: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string", "minLength": 1}}


def document() -> dict[str, Any]:
    wallet = {
        "type": "object",
        "required": ["pointsBalance", "vouchers"],
        "properties": {
            "pointsBalance": {"type": "number"},
            "lifetimeEarn": {"type": "number"},
            "tier": {"type": ["object", "null"]},
            "vouchers": {"type": "array", "items": BENEFIT},
        },
    }
    user = {
        "type": "object",
        "required": ["id"],
        "properties": {
            "id": {"type": "string"},
            "accountNumber": {"type": ["string", "null"]},
            "authIdentifier": {"type": ["string", "null"]},
        },
    }
    reaction = {
        "type": "object",
        "required": ["type"],
        "properties": {"type": {"type": "string"}, "points": {"type": "number"}},
    }
    return {
        "openapi": "3.0.3",
        "info": {"title": "tillplug Loyalty Engine simulator", "version": "1.0.0"},
        "servers": [{"url": "/v1"}],
        "components": {
            "securitySchemes": {
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-Api-Key"},
                "bearer": {"type": "http", "scheme": "bearer"},
            }
        },
        "paths": {
            "/users/{ident}": {
                "get": _op("A member by UUID, account number or authIdentifier", user, params=[_path("ident")])
            },
            "/users/{ident}/wallet": {"get": _op("A member's wallet", wallet, params=[_path("ident")])},
            "/benefits/": {
                "get": _op(
                    "Benefits, filtered by owner",
                    {"type": "array", "items": BENEFIT},
                    params=[{"name": "filter[owner]", "in": "query", "schema": {"type": "string"}}],
                )
            },
            "/benefits/{bid}": {"get": _op("One benefit", BENEFIT, params=[_path("bid")])},
            "/commands/redeem_benefit": {
                "post": _op(
                    "Redeem a benefit",
                    BENEFIT,
                    body={"type": "object", "required": ["benefitId"], "properties": {"benefitId": {"type": "string"}}},
                )
            },
            "/commands/validate_voucher": {
                "post": _op(
                    "Validate (and burn) a voucher code",
                    BENEFIT,
                    body={
                        "type": "object",
                        "required": ["code"],
                        "properties": {
                            "code": {"type": "string", "minLength": 1},
                            "allowFutureValidation": {"type": "boolean"},
                            "userIdentifier": {"type": "string"},
                            "venueIdentifier": {"type": "string"},
                        },
                    },
                )
            },
            "/events/": {
                "post": _op("Report an event", EVENT, body=EVENT_BODY),
                "get": _op(
                    "Events, filtered by payload eventKey",
                    {"type": "array", "items": EVENT},
                    params=[
                        {"name": "filter[payload.eventKey]", "in": "query", "schema": {"type": "string"}},
                        {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 1000}},
                    ],
                ),
            },
            "/events/test_reaction": {
                "post": _op(
                    "Which reactors would fire",
                    {
                        "type": "array",
                        "items": {"type": "object", "properties": {"reactions": {"type": "array", "items": reaction}}},
                    },
                    body=EVENT_BODY,
                )
            },
            "/events/{eid}/reactions": {
                "get": _op("An event's reactions", {"type": "array", "items": reaction}, params=[_path("eid")])
            },
        },
    }
