"""deploy/: the Prometheus rules and the Grafana dashboard parse, have the expected shape, and
name only metrics that the running app's `/metrics` exposes; `promtool check rules` and
`promtool test rules` (Debian package `prometheus`, installed by `.ci/run`; skipped without it,
failed under WACLOUD_REQUIRE_SERVICES=1)."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml  # PyYAML comes with uvicorn[standard]

from tests.services import REQUIRE_ENV, services_required
from wacloud.bootstrap import build_gateway
from wacloud.hosting.http import create_apps
from wacloud.observability.metrics import metric_names
from wacloud.settings import load_settings

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
RULES = DEPLOY / "prometheus" / "alerts.yml"
RULE_TESTS = DEPLOY / "prometheus" / "alerts_test.yml"
DASHBOARD = DEPLOY / "grafana" / "wacloud.json"
NAME = re.compile(r"\bwacloud_[a-z0-9_]+\b")
EXPECTED_ALERTS = {"WacloudQueueStuck", "WacloudChannelPaused", "WacloudDeadLettersGrowing",
                   "WacloudSendErrorRate", "WacloudWebhookRefusals"}


async def scrape(data_dir: Path) -> str:
    gateway = build_gateway(load_settings(data_dir))
    _, internal = create_apps(gateway)
    try:
        transport = httpx.ASGITransport(app=internal)
        async with httpx.AsyncClient(transport=transport, base_url="http://internal") as client:
            answer = await client.get("/metrics")
    finally:
        await gateway.close()
    assert answer.status_code == 200
    return answer.text


@pytest.fixture(scope="module")
def exposed(tmp_path_factory: pytest.TempPathFactory) -> set[str]:
    """The metric names of a real gateway's internal `/metrics`."""
    return metric_names(asyncio.run(scrape(tmp_path_factory.mktemp("deploy") / "data")))


def rules() -> list[dict[str, Any]]:
    data = yaml.safe_load(RULES.read_text())
    assert isinstance(data, dict) and isinstance(data["groups"], list)
    found: list[dict[str, Any]] = []
    for group in data["groups"]:
        assert isinstance(group["name"], str) and group["rules"]
        found.extend(group["rules"])
    return found


def dashboard_exprs() -> list[str]:
    data = json.loads(DASHBOARD.read_text())
    assert data["uid"] and data["title"]
    exprs = [target["expr"] for panel in data["panels"] for target in panel.get("targets", [])]
    variables = [v["query"]["query"] for v in data["templating"]["list"]
                 if isinstance(v.get("query"), dict)]
    return exprs + variables


def test_alert_rules_have_the_expected_alerts_and_fields() -> None:
    found = rules()
    assert {rule["alert"] for rule in found} >= EXPECTED_ALERTS
    for rule in found:
        assert set(rule) >= {"alert", "expr", "labels", "annotations"}, rule
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]
        assert re.fullmatch(r"\d+[smh]", str(rule.get("for", "0m")))


def test_rules_name_only_exposed_metrics(exposed: set[str]) -> None:
    used = {name for rule in rules() for name in NAME.findall(rule["expr"])}
    assert used and used <= exposed, sorted(used - exposed)


def test_dashboard_names_only_exposed_metrics(exposed: set[str]) -> None:
    exprs = dashboard_exprs()
    assert len(exprs) >= 10
    used = {name for expr in exprs for name in NAME.findall(expr)}
    assert used <= exposed, sorted(used - exposed)
    # Every metric family the gateway defines is on the dashboard or in a rule, but those
    # about the credentials endpoint and other Meta products (security, not flow).
    own = {n for n in exposed if n.startswith("wacloud_")
           and not n.endswith(("_sum", "_count", "_created"))}
    used |= {name for rule in rules() for name in NAME.findall(rule["expr"])}
    left = own - used - {"wacloud_credentials_unauthenticated_total",
                         "wacloud_meta_other_objects_total"}
    histograms = {n.removesuffix("_bucket") for n in used if n.endswith("_bucket")}
    assert left <= histograms, sorted(left - histograms)


def test_rule_tests_cover_the_expected_alerts() -> None:
    data = yaml.safe_load(RULE_TESTS.read_text())
    assert data["rule_files"] == [RULES.name]
    tested = {case["alertname"] for test in data["tests"] for case in test["alert_rule_test"]}
    assert EXPECTED_ALERTS - {"WacloudWebhookRefusals"} <= tested


@pytest.mark.parametrize("command", [["check", "rules", str(RULES)],
                                     ["test", "rules", str(RULE_TESTS)]])
def test_promtool_accepts_the_rules_and_their_tests(command: list[str]) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        # `.ci/run` installs it; a developer machine without it skips.
        message = "promtool not installed (Debian package `prometheus`)"
        if services_required():
            pytest.fail(f"{message} ({REQUIRE_ENV}=1)", pytrace=False)
        pytest.skip(message)
    # `test rules` finds alerts.yml beside its test file.
    done = subprocess.run([promtool, *command], capture_output=True, text=True, timeout=60,
                          check=False, cwd=RULES.parent)
    assert done.returncode == 0, done.stdout + done.stderr
