"""The HTTP API fuzzed from its own OpenAPI document (schemathesis): every operation of
`GET /openapi.json` (the admin API and the tenant API), with valid and invalid parameters and
bodies, against the gateway's public app under uvicorn on real SQLite files with data behind
the paths (a tenant, a channel, messages, parked items, dead letters). No answer is a 5xx;
every answer has a status the document lists for that operation, a JSON content type, and a
body of the documented shape (a 4xx is `{"error": "..."}`). Bodies that are not UTF-8, not
JSON or too large get a clear 4xx from every JSON endpoint.

WACLOUD_FUZZ_EXAMPLES sets the examples per operation and generation mode (default 25: the
whole run takes about 20 s; 500 with HYPOTHESIS_PROFILE=long); WACLOUD_FUZZ_SEED replays a
run (the seed is printed with any failure).
"""

from __future__ import annotations

import json
import os
import random
import socket
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode, checks

from tests.unit.hosting import test_admin_api as base
from wacloud.domain import validation
from wacloud.stages import envelopes
from wacloud.stages.envelopes import RawWebhook

fake_server = base.fake_server  # the fixtures of the admin API tests, shared
admin = base.admin

EXAMPLES = int(os.environ.get("WACLOUD_FUZZ_EXAMPLES") or (
    500 if os.environ.get("HYPOTHESIS_PROFILE") == "long" else 25))
SEED = int(os.environ.get("WACLOUD_FUZZ_SEED") or random.randrange(2**32))
CHECKS = [checks.not_a_server_error, checks.status_code_conformance,
          checks.content_type_conformance, checks.response_schema_conformance]


def seed_data(admin: base.Admin) -> dict[str, dict[str, Any]]:
    """Rows, parked items and dead letters, so that fuzzed ids and names find something; the
    path parameters that name them, by operation path."""
    base.meta_channel(admin)
    base.seed_messages(admin)
    admin.registry.park(stage="receive", reason="no tenant", payload=json.dumps({"entry": []}),
                        provider="meta")
    admin.registry.park(stage="receive", reason="not JSON", payload="garbage")
    queues = admin.gateway.queues

    async def dead_letters() -> None:
        raw = queues[envelopes.INBOUND_RAW]
        for n in range(2):
            await raw.send(RawWebhook("meta", None, 1.0, b'{"n": %d}' % n).encode())
        for letter in await raw.receive(2):
            await raw.dead_letter(letter.receipt, "could not parse")

    admin.run(dead_letters())
    letter = admin.get("/admin/v1/dead-letters")[0]["id"]
    names = {"tenant": "acme", "queue": "inbound.raw", "source": "outbound", "id": 1}
    return {"/admin/v1/dead-letters/{queue}/{id}": {**names, "id": letter}, "": names}


def operation_cases(admin: base.Admin) -> list[tuple[str, Any]]:
    document = admin.client.get("/openapi.json").json()
    schema = schemathesis.openapi.from_dict(document)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 20
    return [(f"{op.method.upper()} {op.path}", op) for op in operations]


def run_operation(admin: base.Admin, operation: Any, mode: GenerationMode, examples: int,
                  run_seed: int, seen: dict[str, Counter[int]],
                  real_names: dict[str, dict[str, Any]]) -> None:
    real = real_names.get(operation.path, real_names[""])
    key = admin.tenant_key if operation.path.startswith("/v1/") else admin.admin_key
    base_url = str(admin.client.base_url)

    @seed(run_seed)
    @settings(max_examples=examples, deadline=None, database=None,
              phases=[Phase.explicit, Phase.generate],  # the first failure, unshrunk: fast
              suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy(generation_mode=mode), use_real=st.booleans())
    def fuzz(case: schemathesis.Case, use_real: bool) -> None:
        # The key is the one the operation needs: the fuzzing is of everything after it.
        case.headers = {**(case.headers or {}), "Authorization": f"Bearer {key}"}
        if use_real:  # names that exist, so that half the cases get past the lookups
            case.path_parameters = {name: real.get(name, value) for name, value
                                    in (case.path_parameters or {}).items()}
            if isinstance(case.body, dict):
                for name, value in (("channel", base.PN), ("tenant", "acme")):
                    if name in case.body:
                        case.body[name] = value
        response = case.call(base_url=base_url, timeout=30)
        seen.setdefault(f"{operation.method.upper()} {operation.path}", Counter())[
            response.status_code] += 1
        case.validate_response(response, checks=CHECKS)
        if response.status_code >= 400:  # the schema asks for a string: it says something
            assert response.json()["error"].strip(), (response.status_code, response.text)

    fuzz()


def test_every_operation_survives_fuzzing_from_the_openapi_document(admin: base.Admin) -> None:
    real_names = seed_data(admin)
    failures = []
    seen: dict[str, Counter[int]] = {}
    for name, operation in operation_cases(admin):
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            try:
                run_operation(admin, operation, mode, EXAMPLES, SEED, seen, real_names)
            # Every operation is fuzzed and every failure reported (checks raise groups).
            except (Exception, BaseExceptionGroup) as exc:
                failures.append(f"{name} ({mode.value}): {exc}"[:3000])
    assert not failures, f"seed {SEED} (WACLOUD_FUZZ_SEED):\n" + "\n\n".join(failures)
    for name, counts in sorted(seen.items()):  # shown with -s: how far the cases got
        print(name, dict(sorted(counts.items())))
    # The fuzzing reached the handlers, not only the refusals in front of them.
    answered = [name for name, counts in seen.items() if any(200 <= s < 300 for s in counts)]
    assert len(answered) >= len(seen) * 3 // 4, seen


BAD_BODIES: list[tuple[str, bytes, dict[str, str], int]] = [
    ("not UTF-8", b'{"a": "\xff\xfe"}', {}, 400),
    ("latin-1 text", "{\"slug\": \"ação\"}".encode("latin-1"), {}, 400),
    ("not JSON", b"slug=acme", {"Content-Type": "application/x-www-form-urlencoded"}, 400),
    ("truncated JSON", b'{"ids": [1, 2', {}, 400),
    ("empty", b"", {}, 400),
    ("lone surrogate", b'{"reason": "\\ud800"}', {}, 400),
    ("deep nesting", b"[" * 100_000 + b"]" * 100_000, {}, 413),
    ("huge", b'{"reason": "' + b"x" * 3_000_000 + b'"}', {}, 413),
]


def json_endpoints(admin: base.Admin) -> list[tuple[str, str, str]]:
    document = admin.client.get("/openapi.json").json()
    found = []
    for path, methods in document["paths"].items():
        for method, doc in methods.items():
            if "requestBody" in doc:
                concrete = path.replace("{id}", "1").replace("{queue}", "inbound.raw")
                key = admin.tenant_key if path.startswith("/v1/") else admin.admin_key
                found.append((method.upper(), concrete, key))
    return found


@pytest.mark.parametrize(("what", "content", "headers", "status"), BAD_BODIES,
                         ids=[b[0] for b in BAD_BODIES])
def test_bodies_that_are_not_json_get_a_clear_4xx_from_every_json_endpoint(
        admin: base.Admin, what: str, content: bytes, headers: dict[str, str],
        status: int) -> None:
    base.meta_channel(admin)
    endpoints = json_endpoints(admin)
    assert len(endpoints) >= 8
    for method, path, key in endpoints:
        answer = admin.client.request(method, path, content=content, headers={
            "Authorization": f"Bearer {key}", **headers})
        # The tenant API's limit (WACLOUD_API_MAX_BODY_BYTES) is larger than the admin API's.
        expected: Callable[[int], bool] = (
            (lambda got: got == status) if status != 413 or not path.startswith("/v1/")
            else (lambda got: got in (400, 413)))
        assert expected(answer.status_code), (what, method, path, answer.status_code,
                                              answer.text[:200])
        assert answer.headers["content-type"] == "application/json", (what, path)
        assert set(answer.json()) == {"error"} and answer.json()["error"], (what, path)


# -- what the fuzzing found ------------------------------------------------------------------


def test_a_path_with_an_encoded_newline_is_answered_by_the_admin_api_in_json(
        admin: base.Admin) -> None:
    for path, status in (("/admin/v1/tenants/%0A/messages", 404),
                         ("/admin/v1/tenants/acme/messages/%0A/1", 404),
                         ("/admin/v1/dead-letters/inbound.raw/a%0Ab", 404),
                         ("/admin/v1/%0A", 404)):
        answer = admin.client.get(path, headers=admin.headers())
        assert answer.status_code == status, (path, answer.text)
        assert answer.headers["content-type"] == "application/json", (path, answer.text)
        assert answer.json()["error"], path


def test_an_id_no_database_holds_is_404_from_the_tenant_api(admin: base.Admin) -> None:
    key = {"Authorization": f"Bearer {admin.tenant_key}"}
    for value in ("2446984288822757949440", "-99999999999999999999", str(2**63), "0", "-1"):
        answer = admin.client.get(f"/v1/messages/{value}", headers=key)
        assert answer.status_code == 404, (value, answer.text)
        assert answer.json() == {"error": "no such message"}


def test_the_document_lists_every_status_an_operation_answers(admin: base.Admin) -> None:
    paths = admin.client.get("/openapi.json").json()["paths"]
    for path, methods in paths.items():
        for method, doc in methods.items():
            codes = set(doc["responses"])
            if "requestBody" in doc:  # a body may be too large, not UTF-8 or not JSON
                assert {"400", "413"} <= codes, (method, path)
            assert "503" in codes, (method, path)  # a database may be unreachable
    # What the fuzzing found undocumented: a discard body over the admin API's limit.
    answer = admin.client.post("/admin/v1/parked/discard", headers=admin.headers(),
                               json={"ids": ["1"] * 20_000, "reason": "x"})
    assert answer.status_code == 413
    assert "413" in paths["/admin/v1/parked/discard"]["post"]["responses"]


def test_a_request_that_is_not_valid_http_gets_a_json_400(admin: base.Admin) -> None:
    port = admin.client.base_url.port
    assert port is not None
    for head in (b"Content-Length: q\r\n", b"X-A: a\x01b\r\n"):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
            conn.sendall(b"GET /admin/v1/channels HTTP/1.1\r\nHost: x\r\n" + head + b"\r\n")
            received = b""
            while chunk := conn.recv(4096):  # the server closes the connection
                received += chunk
        status, _, rest = received.partition(b"\r\n")
        headers, _, body = rest.partition(b"\r\n\r\n")
        assert status == b"HTTP/1.1 400 Bad Request", received
        assert b"content-type: application/json" in headers.lower(), received
        assert json.loads(body)["error"].startswith("not a valid HTTP request"), received


def test_a_token_no_http_header_can_carry_is_refused_where_it_enters(admin: base.Admin) -> None:
    base.meta_channel(admin)
    for token in ("secret\nX-Injected: 1", "secret\x7f", "séçret", "two words", "\u2028"):
        answer = admin.client.put("/admin/v1/channels/1/token", json={"token": token},
                                  headers=admin.headers())
        assert answer.status_code == 422, (token, answer.text)
        assert "invalid token" in answer.json()["error"] and token not in answer.text
        created = admin.client.post("/admin/v1/channels", headers=admin.headers(), json={
            "provider": "whapi", "tenant": "acme", "channel_id": "C1", "token": token,
            "webhook_secret": "s", "api_base_url": admin.fake_url})
        assert created.status_code == 422, (token, created.text)
    # The token in force is untouched, and still tested with the provider.
    checked = admin.client.post("/admin/v1/channels/1/token/test", headers=admin.headers())
    assert checked.status_code == 200 and checked.json()["ok"] is True, checked.text
    assert validation.token("  EAAG-token_1.x  ") == "EAAG-token_1.x"
