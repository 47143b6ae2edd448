"""The credentials function: `wacloud.hosting.lambda_credentials` with the settings the other
functions get (secrets from Secrets Manager), invoked by other functions or services with
a service key (see the README's "Credentials broker service")."""

from __future__ import annotations

import functools
from typing import Any

from wacloud.hosting.aws_lambda.secrets import lambda_settings
from wacloud.hosting.lambda_credentials import Handler, build_handler


@functools.cache
def _handler() -> Handler:
    return build_handler(lambda_settings())


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Lambda entry point: `wacloud.hosting.aws_lambda.credentials.handler`."""
    return _handler()(event, context)
