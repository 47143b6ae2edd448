"""Settings for a Lambda function: the environment, plus secrets from AWS Secrets Manager.

Secrets never travel as plain environment text: the function's environment names a secret
(`WACLOUD_SECRETS_ARN`), a JSON object whose keys are setting variables, for example
`{"WACLOUD_ENCRYPTION_KEY": "...", "WACLOUD_META_APP_SECRET": "...",
"WACLOUD_REGISTRY_URL": "postgresql+psycopg://USER:PW@HOST/DB"}`. It is read once per
container (aws-lambda-powertools' parameters utility, through boto3's usual credentials and
`AWS_ENDPOINT_URL`), and its values override the environment's.
"""

from __future__ import annotations

import os
from typing import Any

from wacloud.settings import Settings, load_settings

SECRETS_ENV = "WACLOUD_SECRETS_ARN"
PREFIX = "WACLOUD_"


class SecretsError(RuntimeError):
    """The secret could not be read or is not what it should be (the message names keys and
    the secret's id, never a value)."""


def secret_overrides(secret: dict[str, Any], secret_id: str) -> dict[str, Any]:
    """The settings a secret's JSON object sets, by field name."""
    overrides: dict[str, Any] = {}
    unknown: list[str] = []
    for key, value in secret.items():
        name = key[len(PREFIX):].lower() if key.startswith(PREFIX) else None
        if name is None or name not in Settings.model_fields:
            unknown.append(key)
            continue
        overrides[name] = value
    if unknown:
        raise SecretsError(f"secret {secret_id}: unknown keys {sorted(unknown)} "
                           f"(expected WACLOUD_* setting names)")
    return overrides


def read_secret(secret_id: str) -> dict[str, Any]:
    from aws_lambda_powertools.utilities import parameters

    try:
        value = parameters.get_secret(secret_id, transform="json")
    except Exception as exc:  # its text names the secret id and AWS's reason, not the value
        raise SecretsError(f"could not read secret {secret_id}: {type(exc).__name__}") from exc
    if not isinstance(value, dict):
        raise SecretsError(f"secret {secret_id} is not a JSON object")
    return value


def lambda_settings() -> Settings:
    """The environment's settings with the secret's values over them."""
    secret_id = os.environ.get(SECRETS_ENV)
    overrides = secret_overrides(read_secret(secret_id), secret_id) if secret_id else {}
    return load_settings(**overrides)
