"""The OpenAPI 3.1 document (`GET /openapi.json`), generated from the operations the admin API
serves and from the pydantic models that validate and describe them, plus the tenant API.

An `Operation` is both a route and its documentation: `wacloud.admin.api` builds its Starlette
routes from the same list, so a path cannot be served without being documented.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema
from starlette.requests import Request
from starlette.responses import Response

from wacloud.admin import models as m

ADMIN_PREFIX = "/admin/v1"
_PARAM = re.compile(r"{(\w+)(?::(\w+))?}")


@dataclass(frozen=True)
class Operation:
    method: str
    path: str  # under ADMIN_PREFIX for the admin API; Starlette syntax ("{id:int}")
    handler: Callable[[Request], Awaitable[Response]] | None
    summary: str
    tag: str
    response: type[BaseModel] | None = None
    many: bool = False  # the answer is a list of `response`
    status: int = 200
    body: type[BaseModel] | None = None
    query: type[BaseModel] | None = None
    errors: Sequence[int] = (400, 401, 403, 404, 422)
    description: str = ""
    path_docs: dict[str, str] = field(default_factory=dict)
    headers: Sequence[dict[str, Any]] = ()
    examples: dict[str, Any] | None = None
    replays: bool = False  # 200 for a replayed idempotent request besides `status`
    prefix: str = ADMIN_PREFIX

    @property
    def full_path(self) -> str:
        return self.prefix + self.path

    @property
    def openapi_path(self) -> str:
        return _PARAM.sub(lambda match: "{" + match.group(1) + "}", self.full_path)


def _ref(refs: dict[Any, Any], model: type[BaseModel], mode: str) -> dict[str, Any]:
    return dict(refs[(model, mode)])


def _schema_refs(operations: Sequence[Operation]
                 ) -> tuple[dict[Any, Any], dict[str, Any]]:
    wanted: list[tuple[type[BaseModel], Any]] = [(m.Error, "serialization")]
    for op in operations:
        if op.body is not None:
            wanted.append((op.body, "validation"))
        if op.response is not None:
            wanted.append((op.response, "serialization"))
    unique = list(dict.fromkeys(wanted))
    refs, defs = models_json_schema(unique, ref_template="#/components/schemas/{model}")
    return refs, defs.get("$defs", {})


def _parameters(op: Operation) -> list[dict[str, Any]]:
    params: list[dict[str, Any]] = []
    for name, convertor in _PARAM.findall(op.full_path):
        params.append({"name": name, "in": "path", "required": True,
                       "description": op.path_docs.get(name, ""),
                       "schema": {"type": "integer"} if convertor == "int" else
                       {"type": "string"}})
    if op.query is not None:
        schema = op.query.model_json_schema()
        for name, info in op.query.model_fields.items():
            prop = dict(schema["properties"][name])
            description = prop.pop("description", info.description or "")
            prop.pop("title", None)
            # An absent query parameter is the "null" of an optional field: no null branch.
            branches = [b for b in prop.pop("anyOf", []) if b != {"type": "null"}]
            if len(branches) == 1:
                prop.update(branches[0])
            elif branches:
                prop["anyOf"] = branches
            if prop.get("default", 0) is None:
                del prop["default"]
            params.append({"name": name, "in": "query", "required": info.is_required(),
                           "description": description, "schema": prop})
    params.extend(op.headers)
    return params


def _operation(op: Operation, refs: dict[Any, Any]) -> dict[str, Any]:
    error = {"description": "An error", "content": {"application/json": {
        "schema": _ref(refs, m.Error, "serialization")}}}
    responses: dict[str, Any] = {}
    if op.response is not None:
        schema = _ref(refs, op.response, "serialization")
        if op.many:
            schema = {"type": "array", "items": schema}
        content = {"application/json": {"schema": schema}}
        responses[str(op.status)] = {"description": op.summary, "content": content}
        if op.replays:
            responses["200"] = {"description": "A retry with the same Idempotency-Key and "
                                "body: the row the first request made (header "
                                "`Idempotent-Replayed: true`)", "content": content}
    codes = set(op.errors)
    if op.body is not None:
        codes |= {400, 413}  # any body may be too large, not UTF-8 or not JSON
    codes.add(503)  # every operation: a database that cannot be reached (retry later)
    for code in sorted(codes):
        responses[str(code)] = error
    words = re.sub(r"[^a-z0-9]+", "_", op.openapi_path.lower()).strip("_")
    doc: dict[str, Any] = {
        "operationId": f"{op.method.lower()}_{words}",
        "summary": op.summary, "tags": [op.tag], "parameters": _parameters(op),
        "responses": responses, "security": [{"bearer": []}]}
    if op.description:
        doc["description"] = op.description
    if op.body is not None:
        media: dict[str, Any] = {"schema": _ref(refs, op.body, "validation")}
        if op.examples:
            media["examples"] = op.examples
        doc["requestBody"] = {"required": True, "content": {"application/json": media}}
    return doc


def tenant_operations() -> list[Operation]:
    """The tenant API (`wacloud.hosting.api`), documented here with the admin API."""
    idempotency = {"name": "Idempotency-Key", "in": "header", "required": False,
                   "description": "A retry with the same key and body gets the first row "
                   "back (200, `Idempotent-Replayed: true`), never a second one; the same key "
                   "with another body is 409.",
                   "schema": {"type": "string", "minLength": 1,
                              "maxLength": m.IDEMPOTENCY_KEY_MAX}}
    return [
        Operation("POST", "/v1/messages", None, "Send a message (it is stored in the "
                  "tenant's outbox and sent in order)", "tenant API", m.Submission,
                  status=201, body=m.MessageSubmission, headers=[idempotency],
                  examples=m.SUBMISSION_EXAMPLES, errors=(400, 401, 404, 409, 413, 422),
                  replays=True, prefix="",
                  description="Needs a tenant API key. Bodies are at most "
                  "WACLOUD_API_MAX_BODY_BYTES (413)."),
        Operation("GET", "/v1/messages/{id:int}", None, "Read a message the tenant sent, "
                  "with its current status", "tenant API", m.OutboundMessage,
                  errors=(401, 404), prefix=""),
    ]


def build_document(operations: Sequence[Operation]) -> dict[str, Any]:
    ops = [*operations, *tenant_operations()]
    refs, schemas = _schema_refs(ops)
    paths: dict[str, dict[str, Any]] = {}
    for op in ops:
        paths.setdefault(op.openapi_path, {})[op.method.lower()] = _operation(op, refs)
    return {
        "openapi": "3.1.0",
        "info": {"title": "wacloud", "version": "1", "description": (
            "The tenant API (`/v1/messages`, a tenant API key) and the admin API "
            f"(`{ADMIN_PREFIX}/...`, an admin key from `wacloud apikey create --admin`). "
            "Keys go in `Authorization: Bearer KEY`, never in a URL. JSON only; every 4xx "
            "answers `{\"error\": \"...\"}`. Secrets are never returned.")},
        "paths": paths,
        "components": {"schemas": schemas, "securitySchemes": {
            "bearer": {"type": "http", "scheme": "bearer",
                       "description": "A tenant API key or an admin key."}}},
        "security": [{"bearer": []}],
    }
