"""SecretBox: Fernet encryption of secrets at rest, key rotation, and the key file."""

from __future__ import annotations

import os
import stat
import traceback
from pathlib import Path

import pytest

from wacloud.security.crypto import (
    SecretBox,
    SecretError,
    load_secret_box,
    new_key,
    read_key_file,
    write_key_file,
)

SECRET = "EAAG-very-secret-token-éß-👍"


def test_encrypt_then_decrypt_round_trips_unicode() -> None:
    box = SecretBox([new_key()])

    ciphertext = box.encrypt(SECRET)

    assert SECRET not in ciphertext
    assert box.decrypt(ciphertext) == SECRET
    assert box.decrypt_optional(box.encrypt_optional(SECRET)) == SECRET
    assert box.encrypt_optional(None) is None
    assert box.decrypt_optional(None) is None


def test_encrypting_twice_gives_different_ciphertexts() -> None:
    box = SecretBox([new_key()])

    assert box.encrypt(SECRET) != box.encrypt(SECRET)


def test_rotation_new_key_first_old_key_still_decrypts() -> None:
    old, new = new_key(), new_key()
    under_old = SecretBox([old]).encrypt(SECRET)
    ring = SecretBox([new, old])

    assert ring.decrypt(under_old) == SECRET
    # New encryptions use the newest (first) key.
    assert SecretBox([new]).decrypt(ring.encrypt(SECRET)) == SECRET
    with pytest.raises(SecretError):
        SecretBox([old]).decrypt(ring.encrypt(SECRET))


def test_rotate_reencrypts_under_the_new_key_so_old_key_alone_fails() -> None:
    old, new = new_key(), new_key()
    under_old = SecretBox([old]).encrypt(SECRET)

    rotated = SecretBox([new, old]).rotate(under_old)

    assert SecretBox([new]).decrypt(rotated) == SECRET
    with pytest.raises(SecretError):
        SecretBox([old]).decrypt(rotated)


def test_wrong_key_raises_secret_error_without_the_secret() -> None:
    key, wrong = new_key(), new_key()
    ciphertext = SecretBox([key]).encrypt(SECRET)

    with pytest.raises(SecretError) as caught:
        SecretBox([wrong]).decrypt(ciphertext)

    text = "".join(traceback.format_exception(caught.value))
    for leaked in (SECRET, key, wrong, ciphertext):
        assert leaked not in str(caught.value)
        assert leaked not in text
    assert caught.value.__cause__ is None
    assert caught.value.__suppress_context__


def test_rotate_with_wrong_key_raises_secret_error() -> None:
    ciphertext = SecretBox([new_key()]).encrypt(SECRET)

    with pytest.raises(SecretError) as caught:
        SecretBox([new_key()]).rotate(ciphertext)

    assert SECRET not in str(caught.value)


def test_no_keys_is_a_secret_error() -> None:
    with pytest.raises(SecretError):
        SecretBox([])


def test_repr_shows_no_key() -> None:
    keys = [new_key(), new_key()]
    box = SecretBox(keys)

    assert repr(box) == "SecretBox(keys=2)"
    for key in keys:
        assert key not in repr(box)
        assert key not in str(box)


def test_key_file_is_written_with_mode_0600_and_reads_back(tmp_path: Path) -> None:
    path = tmp_path / "conf" / "keys"
    keys = [new_key(), new_key()]
    previous = os.umask(0)  # the mode must not depend on a permissive umask
    try:
        write_key_file(path, keys)
    finally:
        os.umask(previous)

    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert read_key_file(path) == keys
    assert not path.with_suffix(".tmp").exists()


def test_rewriting_a_world_readable_key_file_makes_it_0600(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    path.write_text("old\n")
    path.chmod(0o644)

    write_key_file(path, [new_key()])

    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_key_file_is_0600_even_when_a_stale_tmp_file_exists(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    stale = path.with_suffix(".tmp")
    stale.write_text("half-written\n")
    stale.chmod(0o644)

    write_key_file(path, [new_key()])

    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_read_key_file_missing_is_empty(tmp_path: Path) -> None:
    assert read_key_file(tmp_path / "absent") == []


def test_load_secret_box_prefers_environment_keys_over_the_file(tmp_path: Path) -> None:
    file_key, env_new, env_old = new_key(), new_key(), new_key()
    path = tmp_path / "keys"
    write_key_file(path, [file_key])
    under_old = SecretBox([env_old]).encrypt(SECRET)

    box = load_secret_box(f" {env_new} , {env_old},", path)

    assert box.key_count == 2
    assert box.decrypt(under_old) == SECRET
    assert load_secret_box(None, path).key_count == 1
    with pytest.raises(SecretError):
        load_secret_box(None, tmp_path / "absent")
