"""Files that must survive a power cut once code relies on them: the bytes are fsynced before
the rename that publishes them, and the directory after it (the rename itself is only durable
once its directory is). Media rows say `stored`, and secrets are encrypted under a new key,
only after this returns."""

from __future__ import annotations

import os
from pathlib import Path


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_durably(source: Path, target: Path) -> None:
    """Move `source` over `target` atomically, both the content and the name on disk."""
    fsync_file(source)
    os.replace(source, target)
    fsync_dir(target.parent)
