"""The till API's OpenAPI document, built from the route table and the models the server validates with."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from pydantic import BaseModel

from tillplug import __version__
from tillplug.api import schemas
from tillplug.api.idempotency import HEADER, KEEP_SECONDS, MAX_KEY_LENGTH
from tillplug.api.routes import OPERATIONS, PENDING_STATUS

IDEMPOTENCY_KEY = {
    "name": HEADER,
    "in": "header",
    "required": False,
    "description": (
        "Makes a retry safe: on a timeout or a lost connection, send the same call again with the same key. "
        "The first call's answer (status and body) is kept for at least "
        f"{KEEP_SECONDS / 3600:.0f} h and answered again with `Idempotent-Replayed: true`; while the first call "
        "still runs a retry answers 409 `request_in_progress` (ask again shortly); the same key with a "
        "different request answers 422 `idempotency_key_reused`; a call cut short by a restart answers 409 "
        "`request_interrupted` (read the checkout). A key is scoped to this operation and the checkout. "
        "A failure that changed nothing (engine unreachable or busy, printer or disk not ready) is not kept: "
        "its retry runs again. Without the header, every call runs."
    ),
    "schema": {"type": "string", "minLength": 1, "maxLength": MAX_KEY_LENGTH, "pattern": "^[!-~]+$"},
}

REF = "#/components/schemas/{model}"


def _ref(model: type[BaseModel], schemas_out: dict[str, Any]) -> dict[str, str]:
    """Put ``model`` (and every model it uses) in the components; answer a $ref to it."""
    schema = model.model_json_schema(ref_template=REF)
    for name, sub in schema.pop("$defs", {}).items():
        schemas_out[name] = sub
    schemas_out[model.__name__] = schema
    return {"$ref": REF.format(model=model.__name__)}


def _required(model: type[BaseModel]) -> bool:
    return any(field.is_required() for field in model.model_fields.values())


@lru_cache(maxsize=1)
def document() -> dict[str, Any]:
    components: dict[str, Any] = {}
    error = _ref(schemas.Error, components)
    _ref(schemas.TillEvent, components)
    paths: dict[str, Any] = {}
    for op in OPERATIONS:
        if not op.documented:
            continue
        if op.response is not None:
            content = {op.media_type: {"schema": _ref(op.response, components)}}
        else:
            content = {op.media_type: {"schema": {"type": "string"}}}
        refused = {"description": "refused; nothing changed", "content": {"application/json": {"schema": error}}}
        failed = {"description": "the engine or a device failed", "content": {"application/json": {"schema": error}}}
        spec: dict[str, Any] = {
            "summary": op.summary,
            "operationId": op.handler,
            "responses": {
                str(op.status): {"description": "success", "content": content},
                "4XX": refused,
                "5XX": failed,
            },
        }
        if op.pending is not None:
            spec["responses"][str(PENDING_STATUS)] = {
                "description": "the engine's answer was lost: the outcome is being looked up, and its verdict "
                "follows on /v1/events; give no discount until then",
                "content": {op.media_type: {"schema": _ref(op.pending, components)}},
            }
        parameters: list[dict[str, Any]] = [
            {"name": p, "in": "path", "required": True, "schema": {"type": "string"}} for p in op.path_params
        ]
        if op.idempotent:
            parameters.append(IDEMPOTENCY_KEY)
            spec["responses"]["409"] = {
                "description": "request_in_progress or request_interrupted (Idempotency-Key), or the flow's conflict",
                "content": {"application/json": {"schema": error}},
            }
            spec["responses"]["422"] = {
                "description": "idempotency_key_reused: the key was used for a different request",
                "content": {"application/json": {"schema": error}},
            }
        if op.stream:
            spec["responses"]["503"] = {
                "description": "too_many_streams: the till's streams are all in use (Retry-After says when to try)",
                "content": {"application/json": {"schema": error}},
            }
        if parameters:
            spec["parameters"] = parameters
        if op.request is not None:
            spec["requestBody"] = {
                "required": _required(op.request),
                "content": {"application/json": {"schema": _ref(op.request, components)}},
            }
        if not op.auth:
            spec["security"] = [{}]
        paths.setdefault(op.path, {})[op.method.lower()] = spec
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "tillplug till API",
            "version": __version__,
            "description": "Loopback API for the till software. Money is integer minor units plus currency.",
        },
        "components": {"schemas": components, "securitySchemes": {"token": {"type": "http", "scheme": "bearer"}}},
        "security": [{}, {"token": []}],
        "paths": paths,
    }
