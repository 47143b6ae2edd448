"""Secrets at rest: authenticated encryption (Fernet) with key rotation (MultiFernet).

The key ring comes from `WACLOUD_ENCRYPTION_KEY` (comma separated, newest first) or from the key
file that `wacloud init` creates with mode 0600. Rotation adds a new key in front; older keys
keep decrypting until everything is re-encrypted.
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from wacloud.adapters.durable import fsync_dir

UNDECRYPTABLE = "a stored secret cannot be decrypted with the configured keys"


class SecretError(RuntimeError):
    """A secret could not be decrypted (wrong or missing key). Never carries the secret."""


class SecretBox:
    def __init__(self, keys: list[str]) -> None:
        if not keys:
            raise SecretError("no encryption key configured (run `wacloud init`)")
        self._keys = keys
        self._fernet = MultiFernet([Fernet(k.encode()) for k in keys])

    def __repr__(self) -> str:
        return f"SecretBox(keys={len(self._keys)})"

    @property
    def key_count(self) -> int:
        return len(self._keys)

    def encrypt(self, plaintext: str) -> str:
        return self._fernet.encrypt(plaintext.encode()).decode()

    def decrypt(self, ciphertext: str) -> str:
        try:
            return self._fernet.decrypt(ciphertext.encode()).decode()
        except InvalidToken:
            raise SecretError(UNDECRYPTABLE) from None

    def rotate(self, ciphertext: str) -> str:
        """Re-encrypt under the newest key."""
        try:
            return self._fernet.rotate(ciphertext.encode()).decode()
        except InvalidToken:
            raise SecretError(UNDECRYPTABLE) from None

    def newest_only(self) -> SecretBox:
        """A box with only the newest key: what remains once older keys are dropped."""
        return SecretBox(self._keys[:1])

    def decrypts(self, ciphertext: str) -> bool:
        try:
            self._fernet.decrypt(ciphertext.encode())
        except InvalidToken:
            return False
        return True

    def encrypt_optional(self, plaintext: str | None) -> str | None:
        return None if plaintext is None else self.encrypt(plaintext)

    def decrypt_optional(self, ciphertext: str | None) -> str | None:
        return None if ciphertext is None else self.decrypt(ciphertext)


def new_key() -> str:
    return Fernet.generate_key().decode()


def read_key_file(path: Path) -> list[str]:
    if not path.is_file():
        return []
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def write_key_file(path: Path, keys: list[str]) -> None:
    """Write the key ring with mode 0600 from the first byte (no window where others can read),
    through a temporary file fsynced and renamed over the old one, then the directory fsynced:
    secrets are re-encrypted under a new key only after this returns, and a power cut must not
    leave them under a key that never reached the disk."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.unlink(missing_ok=True)  # a stale file could carry looser permissions
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write("\n".join(keys) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def parse_env_keys(env_keys: str | None) -> list[str]:
    """`WACLOUD_ENCRYPTION_KEY`: keys separated by commas, newest first."""
    return [k.strip() for k in env_keys.split(",") if k.strip()] if env_keys else []


def load_secret_box(env_keys: str | None, key_file: Path) -> SecretBox:
    return SecretBox(parse_env_keys(env_keys) or read_key_file(key_file))
