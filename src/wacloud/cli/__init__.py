"""The `wacloud` command line: thin, it parses arguments and calls bootstrap and operations."""

from __future__ import annotations

import logging

from wacloud.cli import (
    dlq_cmds,
    inbound_cmds,
    media_cmds,
    migrate_cmds,
    ops_cmds,
    outbound_cmds,
    privacy_cmds,
    queue_cmds,
    registry_cmds,
    security_cmds,
)
from wacloud.cli.common import app

__all__ = ["app", "dlq_cmds", "inbound_cmds", "main", "media_cmds", "migrate_cmds", "ops_cmds",
           "outbound_cmds", "privacy_cmds", "queue_cmds", "registry_cmds",
           "security_cmds"]


def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    app()
