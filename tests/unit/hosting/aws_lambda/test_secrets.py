"""Lambda settings: secrets come from AWS Secrets Manager (moto's server over HTTP), never from
plain environment text, and a function without an encryption key refuses to start."""

from __future__ import annotations

import json
import uuid

import pytest

from tests.unit.hosting.aws_lambda.conftest import PNID, TOKEN
from tests.unit.hosting.aws_lambda.harness import LambdaWorld, meta_event
from tests.unit.hosting.aws_lambda.test_pipeline import text_webhook
from wacloud.adapters.db.registry.api_keys import create_api_key
from wacloud.hosting.aws_lambda import credentials, receiver, runtime
from wacloud.hosting.aws_lambda.secrets import (
    SECRETS_ENV,
    SecretsError,
    lambda_settings,
    secret_overrides,
)
from wacloud.stages.envelopes import INBOUND_RAW

GLOBAL_SECRET = "global-meta-app-secret-from-secrets-manager"


def create_secret(values: dict[str, str]) -> str:
    import boto3

    client = boto3.client("secretsmanager")
    answer = client.create_secret(Name=f"wacloud-test-{uuid.uuid4().hex[:8]}",
                                  SecretString=json.dumps(values))
    return str(answer["ARN"])


def test_the_functions_read_their_secrets_from_secrets_manager(
        world: LambdaWorld, aws_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    key = os.environ["WACLOUD_ENCRYPTION_KEY"]
    monkeypatch.delenv("WACLOUD_ENCRYPTION_KEY")  # only in the secret now
    arn = create_secret({"WACLOUD_ENCRYPTION_KEY": key,
                         "WACLOUD_META_APP_SECRET": GLOBAL_SECRET})
    monkeypatch.setenv(SECRETS_ENV, arn)
    settings = lambda_settings()
    assert settings.encryption_key == key and settings.meta_app_secret == GLOBAL_SECRET
    # The receiver checks signatures with the secret it was given (no channel has this one).
    answer = world.invoke("receiver", receiver.handler,
                          meta_event(text_webhook("signed globally"), GLOBAL_SECRET))
    assert answer["statusCode"] == 200, answer
    assert world.depth(INBOUND_RAW)["visible"] == 1


def test_the_credentials_function_decrypts_with_the_key_from_the_secret(
        world: LambdaWorld, aws_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    key = os.environ["WACLOUD_ENCRYPTION_KEY"]
    monkeypatch.delenv("WACLOUD_ENCRYPTION_KEY")
    monkeypatch.setenv(SECRETS_ENV, create_secret({"WACLOUD_ENCRYPTION_KEY": key}))
    service_key = create_api_key(world.registry, tenant=None, service=True, label="lambda")[1]
    credentials._handler.cache_clear()
    try:
        answer = credentials.handler({"provider": "meta", "id": PNID, "headers": {
            "Authorization": f"Bearer {service_key}"}}, None)
        refused = credentials.handler({"provider": "meta", "id": PNID}, None)
    finally:
        credentials._handler.cache_clear()
    assert answer["statusCode"] == 200, answer
    body = json.loads(answer["body"])
    assert body["token"] == TOKEN and body["tenant"] == "acme"
    assert refused["statusCode"] == 401 and TOKEN not in refused["body"]


def test_a_secret_with_unknown_keys_is_refused_without_showing_values() -> None:
    with pytest.raises(SecretsError) as refused:
        secret_overrides({"WACLOUD_ENCRYPTION_KEY": "k", "PASSWORD": "hunter2"}, "arn:x")
    assert "PASSWORD" in str(refused.value) and "hunter2" not in str(refused.value)
    assert secret_overrides({"WACLOUD_REGISTRY_URL": "postgresql://u:p@h/db"}, "arn:x") == {
        "registry_url": "postgresql://u:p@h/db"}


def test_a_missing_secret_is_named_in_the_error(aws_env: dict[str, str],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SECRETS_ENV, "wacloud-no-such-secret")
    with pytest.raises(SecretsError, match="wacloud-no-such-secret"):
        lambda_settings()


def test_a_function_without_an_encryption_key_refuses_to_start(
        world: LambdaWorld, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WACLOUD_ENCRYPTION_KEY")
    runtime.reset()
    with pytest.raises(runtime.ConfigurationError, match="WACLOUD_ENCRYPTION_KEY"):
        runtime.container()
