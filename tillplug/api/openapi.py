"""The till API's OpenAPI document, built from the route table and the models the server validates with."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from pydantic import BaseModel

from tillplug import __version__
from tillplug.api import schemas
from tillplug.api.routes import OPERATIONS

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
        if op.path_params:
            spec["parameters"] = [
                {"name": p, "in": "path", "required": True, "schema": {"type": "string"}} for p in op.path_params
            ]
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
