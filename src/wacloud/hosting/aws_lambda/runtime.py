"""One Lambda container's gateway: built at its first invocation, kept while it is warm.

Lambda runs one invocation at a time per container and freezes the container between them.
The gateway (registry and tenant database connections, provider HTTP clients, the queue
broker and the media store) and the event loop they are bound to live here, at module level,
so a warm invocation pays for none of them. `reset()` closes them (tests; a new set of
settings).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

from wacloud.adapters.db.errors import TroubleLog
from wacloud.bootstrap import Gateway, build_gateway
from wacloud.hosting.runner import StageRunner
from wacloud.hosting.runners import stage_runners
from wacloud.hosting.worker import use_stage_threads
from wacloud.observability.logs import configure_logging
from wacloud.settings import Settings

T = TypeVar("T")
log = logging.getLogger(__name__)
_TROUBLE = TroubleLog(log)


class ConfigurationError(RuntimeError):
    """The function's settings cannot work in Lambda (the message says which and why)."""


def check_settings(settings: Settings) -> None:
    if not settings.encryption_key:
        # Without it `init_data_dir` would make a random key in /tmp, a different one in every
        # container, and nothing encrypted elsewhere could be read.
        raise ConfigurationError(
            "WACLOUD_ENCRYPTION_KEY is not set: put it in the secret named by "
            "WACLOUD_SECRETS_ARN (see deploy/aws/README.md)")


@dataclass
class Container:
    """The settings, the event loop and the gateway of this container."""

    settings: Settings
    loop: asyncio.AbstractEventLoop
    gateway: Gateway
    runners: dict[str, StageRunner] = field(default_factory=dict)
    _registry_checked: float = 0.0

    def run(self, work: Coroutine[Any, Any, T]) -> T:
        """Run `work` on the container's loop (the one its clients were made on)."""
        return self.loop.run_until_complete(work)

    async def fresh(self) -> None:
        """Reload the registry snapshot (channels, secrets, tenants) if it changed: what the
        long-running processes' watcher does every `registry_poll_s`, done here at most that
        often, at the start of an invocation."""
        now = time.monotonic()
        if now - self._registry_checked < self.settings.registry_poll_s:
            return
        self._registry_checked = now
        try:
            await asyncio.to_thread(self.gateway.broker.refresh)
        except Exception as exc:  # route from the snapshot meanwhile
            _TROUBLE.failed("the registry", "credentials refresh", exc)
        else:
            _TROUBLE.succeeded("the registry")

    def runner(self, name: str) -> StageRunner:
        """The runner of the gateway's stage `name`, as this container uses it."""
        runner = self.runners.get(name)
        if runner is None:
            [runner] = stage_runners(self.gateway, (name,))
            # Each function has its own CPU: nothing to give way to (`StageRunner.defer_to`).
            runner.defer_to = None
            self.runners[name] = runner
        return runner

    def close(self) -> None:
        try:
            self.run(self.gateway.close())
        finally:
            self.loop.close()


_container: Container | None = None


def open_container(settings: Settings) -> Container:
    check_settings(settings)
    if os.environ.get("AWS_LAMBDA_FUNCTION_NAME"):  # in Lambda: its log stream is stderr
        configure_logging(settings)
    loop = asyncio.new_event_loop()
    use_stage_threads(loop)

    async def build() -> Gateway:  # on the loop: clients that look for it find it
        return build_gateway(settings)

    try:
        gateway = loop.run_until_complete(build())
    except BaseException:
        loop.close()
        raise
    return Container(settings, loop, gateway)


def container() -> Container:
    """This container's gateway, built at the first call from `lambda_settings()`."""
    global _container
    if _container is None:
        from wacloud.hosting.aws_lambda.secrets import lambda_settings

        _container = open_container(lambda_settings())
    return _container


def reset() -> None:
    """Close this container's gateway; the next invocation builds a new one."""
    global _container
    current, _container = _container, None
    if current is not None:
        current.close()
