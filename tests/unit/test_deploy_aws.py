"""The SAM template `deploy/aws/template.yaml`, checked offline: cfn-lint, `sam validate --lint`
and plain `sam validate` (each catches mistakes the others miss), then what it must wire: a
function per handler with its trigger, the queues as the SQS adapter names and declares them,
partial batch responses, the schedule, and no secret in plain environment text.

aws-sam-cli pins its own boto3, so it lives in `.venv-sam` (`make sam`, a prerequisite of
`make test`); where it could not be installed these tests skip, unless
WACLOUD_REQUIRE_SERVICES=1.
"""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.services import REQUIRE_ENV, services_required
from wacloud.adapters.queue.sqs.names import sqs_name as adapter_sqs_name
from wacloud.bootstrap import queue_specs
from wacloud.settings import load_settings

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "deploy" / "aws" / "template.yaml"
SAM = ROOT / ".venv-sam" / "bin" / "sam"
CFN_LINT = Path(sys.executable).parent / "cfn-lint"
SECRET_SETTINGS = {"WACLOUD_ENCRYPTION_KEY", "WACLOUD_META_APP_SECRET", "WACLOUD_REGISTRY_URL"}
HANDLERS = {
    "ReceiverFunction": "wacloud.hosting.aws_lambda.receiver.handler",
    "WriterFunction": "wacloud.hosting.aws_lambda.writer.handler",
    "MediaFunction": "wacloud.hosting.aws_lambda.media.handler",
    "CollectorFunction": "wacloud.hosting.aws_lambda.collector.handler",
    "SenderFunction": "wacloud.hosting.aws_lambda.sender.handler",
    "SaverFunction": "wacloud.hosting.aws_lambda.saver.handler",
    "CredentialsFunction": "wacloud.hosting.aws_lambda.credentials.handler",
}
CONSUMERS = {  # function -> the port queues its SQS events are
    "WriterFunction": {"inbound.raw"},
    "MediaFunction": {"inbound.media"},
    "SenderFunction": {"outbound.send"},
    "SaverFunction": {"outbound.results"},
}


def offline(argv: list[str]) -> list[str]:
    """`argv` without network when this machine can take it away (a new network namespace):
    the checks must not need any."""
    unshare = shutil.which("unshare")
    if unshare and subprocess.run([unshare, "-n", "true"], capture_output=True).returncode == 0:
        return [unshare, "-n", *argv]
    return argv


def run(argv: list[str], cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SAM_CLI_TELEMETRY": "0", "AWS_EC2_METADATA_DISABLED": "true"}
    return subprocess.run(offline(argv), cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=120, check=False)


def sam() -> Path:
    if SAM.exists():
        return SAM
    message = f"aws-sam-cli is not installed in {SAM.parent.parent} (`make sam` could not)"
    if services_required():
        pytest.fail(f"{message} ({REQUIRE_ENV}=1)", pytrace=False)
    pytest.skip(message)


def template() -> dict[str, Any]:
    from cfnlint.decode import cfn_yaml

    loaded: dict[str, Any] = cfn_yaml.load(str(TEMPLATE))
    return loaded


@pytest.fixture
def broken(tmp_path: Path) -> Iterator[Path]:
    """A copy of the template with an event key misspelled."""
    text = TEMPLATE.read_text("utf-8")
    assert "FunctionResponseTypes: [ReportBatchItemFailures]" in text
    copy = tmp_path / "template.yaml"
    copy.write_text(text.replace("FunctionResponseTypes: [ReportBatchItemFailures]",
                                 "FunctionResponseType: [ReportBatchItemFailures]", 1))
    yield copy


def test_cfn_lint_passes() -> None:
    assert CFN_LINT.exists(), f"cfn-lint is not in {CFN_LINT.parent} (it comes with moto)"
    result = run([str(CFN_LINT), str(TEMPLATE)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_cfn_lint_catches_a_misspelled_handler_property(tmp_path: Path) -> None:
    copy = tmp_path / "template.yaml"
    copy.write_text(TEMPLATE.read_text("utf-8").replace("Handler:", "Handlerr:", 1))
    result = run([str(CFN_LINT), str(copy)])
    assert result.returncode != 0 and "Handlerr" in result.stdout


def test_sam_validate_lint_passes() -> None:
    result = run([str(sam()), "validate", "--lint", "--template", str(TEMPLATE)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_sam_validate_passes() -> None:
    result = run([str(sam()), "validate", "--template", str(TEMPLATE), "--region", "us-east-1"])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "is a valid SAM Template" in result.stdout


def test_sam_validate_catches_what_lint_lets_through(broken: Path) -> None:
    result = run([str(sam()), "validate", "--template", str(broken), "--region", "us-east-1"])
    assert result.returncode != 0
    assert "FunctionResponseType" in result.stdout + result.stderr


def test_every_handler_is_a_function_with_its_trigger() -> None:
    resources = template()["Resources"]
    functions = {name: r for name, r in resources.items()
                 if r["Type"] == "AWS::Serverless::Function"}
    assert {name: f["Properties"]["Handler"] for name, f in functions.items()} == HANDLERS
    for path in HANDLERS.values():
        module, _, attribute = path.rpartition(".")
        assert callable(getattr(importlib.import_module(module), attribute)), path

    receiver = functions["ReceiverFunction"]["Properties"]["Events"]
    assert {e["Type"] for e in receiver.values()} == {"HttpApi"}
    assert {e["Properties"]["Path"] for e in receiver.values()} >= {"/webhooks/{proxy+}"}
    [schedule] = functions["CollectorFunction"]["Properties"]["Events"].values()
    assert schedule["Type"] == "Schedule"
    assert schedule["Properties"]["Schedule"] == "rate(1 minute)"
    assert "Events" not in functions["CredentialsFunction"]["Properties"]

    queues = {name: r["Properties"]["QueueName"]["Fn::Sub"] for name, r in resources.items()
              if r["Type"] == "AWS::SQS::Queue"}
    for function, wanted in CONSUMERS.items():
        properties = functions[function]["Properties"]
        events = properties["Events"].values()
        assert {e["Type"] for e in events} == {"SQS"}
        for event in events:
            assert event["Properties"]["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
            assert event["Properties"]["BatchSize"] == 10  # as deploy/aws/README.md counts
        consumed = {queues[e["Properties"]["Queue"]["Fn::GetAtt"][0]] for e in events}
        assert consumed == {sqs_name(name, fifo=name == "outbound.send") for name in wanted}


def sqs_name(name: str, *, fifo: bool) -> str:
    """The SQS adapter's spelling of a port queue, with the template's prefix parameter."""
    return adapter_sqs_name("${QueuePrefix}", name, fifo=fifo)


def test_the_queues_are_those_the_stages_use_with_their_dead_letter_queues() -> None:
    data = template()
    resources = data["Resources"]
    environment = data["Globals"]["Function"]["Environment"]["Variables"]
    settings = load_settings(queue_visibility_timeout_s=float(
        environment["WACLOUD_QUEUE_VISIBILITY_TIMEOUT_S"]))
    queues = {r["Properties"]["QueueName"]["Fn::Sub"]: (name, r["Properties"])
              for name, r in resources.items() if r["Type"] == "AWS::SQS::Queue"}
    functions = {name: r["Properties"] for name, r in resources.items()
                 if r["Type"] == "AWS::Serverless::Function"}
    timeout_of = {name: p.get("Timeout", data["Globals"]["Function"]["Timeout"])
                  for name, p in functions.items()}
    expected = set()
    for spec in queue_specs(settings).values():
        if spec.name.endswith(".dlq"):
            continue  # the send queue's own DLQ: checked with it
        name = sqs_name(spec.name, fifo=spec.fifo)
        dead = sqs_name(spec.dead_letter_name, fifo=spec.fifo)
        expected |= {name, dead}
        assert name in queues, f"no queue {name} in the template"
        _, properties = queues[name]
        assert properties.get("FifoQueue", False) is spec.fifo
        assert properties["VisibilityTimeout"] == spec.visibility_timeout, name
        redrive = properties["RedrivePolicy"]
        assert redrive["maxReceiveCount"] == spec.max_receives, name
        dead_resource, dead_properties = queues[dead]
        assert redrive["deadLetterTargetArn"] == {"Fn::GetAtt": [dead_resource, "Arn"]}
        assert dead_properties.get("FifoQueue", False) is spec.fifo
        # Lambda refuses a trigger on a queue whose visibility is shorter than the function's
        # timeout (and a longer run would see its messages handed out again).
        for function, wanted in CONSUMERS.items():
            if spec.name in wanted:
                assert timeout_of[function] <= spec.visibility_timeout, (function, name)
    assert set(queues) == expected


def test_no_secret_is_in_plain_environment_text() -> None:
    data = template()
    environments = [data["Globals"]["Function"]["Environment"]["Variables"]]
    environments += [r["Properties"].get("Environment", {}).get("Variables", {})
                     for r in data["Resources"].values()
                     if r["Type"] == "AWS::Serverless::Function"]
    for variables in environments:
        assert not SECRET_SETTINGS & set(variables), variables
    assert environments[0]["WACLOUD_SECRETS_ARN"] == {"Ref": "SecretsArn"}
    for name, resource in data["Resources"].items():
        if resource["Type"] != "AWS::Serverless::Function":
            continue
        statements = [s for policy in resource["Properties"]["Policies"]
                      for s in policy["Statement"]]
        [secrets] = [s for s in statements if s["Action"] == "secretsmanager:GetSecretValue"]
        assert secrets["Resource"] == {"Ref": "SecretsArn"}, name
        # Least privilege: no wildcard actions or resources.
        for statement in statements:
            actions = statement["Action"] if isinstance(statement["Action"], list) else [
                statement["Action"]]
            assert all("*" not in action for action in actions), (name, statement)
            assert statement["Resource"] != "*", (name, statement)
