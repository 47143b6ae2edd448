"""Key rotation over a real SQLite registry and key file: every encrypted column is
re-encrypted under the new key, old keys are dropped only when nothing needs them, and keys
from the environment are never "rotated" behind the operator's back."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from wacloud.adapters.db.engines import create_engine
from wacloud.adapters.db.registry.store import Registry, channels, encrypted_columns, tenants
from wacloud.bootstrap import init_data_dir, open_registry
from wacloud.cli import app
from wacloud.credentials.key_rotation import KeyRotationError, prune, reencrypt, rotate, status
from wacloud.domain.model import Provider
from wacloud.security.crypto import SecretBox, SecretError, new_key, read_key_file
from wacloud.settings import Settings, load_settings

TOKEN = "EAAG-rotation-token-4711"
APP_SECRET = "app-secret-rotation-4711"
DB_URL = "postgresql+psycopg://u:db-password-4711@db/globex"
SECRETS = (TOKEN, APP_SECRET, "verify-4711", "hook-secret-4711", "db-password-4711")


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.delenv("WACLOUD_ENCRYPTION_KEY", raising=False)
    settings = load_settings(tmp_path / "data")
    init_data_dir(settings)
    registry = open_registry(settings)
    registry.add_tenant("acme")
    registry.add_tenant("globex", DB_URL)
    registry.add_channel(tenant="acme", provider=Provider.META, key="106540352242922",
                         phone_number_id="106540352242922", waba_id="102290129340398",
                         token=TOKEN, app_secret=APP_SECRET, verify_token="verify-4711")
    registry.add_channel(tenant="globex", provider=Provider.WHAPI, key="MANTIS-M72HC",
                         token=TOKEN + "-whapi", webhook_secret="hook-secret-4711")
    registry.engine.dispose()
    return settings


def ciphertexts(settings: Settings) -> list[str]:
    engine = create_engine(settings.registry)
    try:
        with engine.connect() as conn:
            return [value for column in encrypted_columns() for value in conn.execute(
                sa.select(column).where(column.is_not(None))).scalars()]
    finally:
        engine.dispose()


def plain(settings: Settings) -> tuple[list[tuple[str, str | None, str | None]], list[str | None]]:
    registry = open_registry(settings)
    try:
        chans = [(c.token, c.app_secret, c.webhook_secret) for c in registry.channels()]
        return chans, [t.db_url for t in registry.tenants()]
    finally:
        registry.engine.dispose()


def version(settings: Settings) -> int:
    registry = open_registry(settings)
    try:
        return registry.version()
    finally:
        registry.engine.dispose()


def test_rotate_reencrypts_every_column_under_a_new_key_and_keeps_the_old(
        settings: Settings) -> None:
    before_plain = plain(settings)
    before_cipher = ciphertexts(settings)
    old_keys = read_key_file(settings.key_file)
    before_version = version(settings)

    report = rotate(settings)

    keys = read_key_file(settings.key_file)
    assert len(keys) == 2 and keys[1:] == old_keys
    assert stat.S_IMODE(settings.key_file.stat().st_mode) == 0o600
    assert report.reencrypted == {"tenants.db_url": 1, "channels.token": 2,
                                  "channels.app_secret": 1, "channels.verify_token": 1,
                                  "channels.webhook_secret": 1}
    after = ciphertexts(settings)
    assert len(after) == len(before_cipher) == 6 and not set(after) & set(before_cipher)
    newest = SecretBox(keys[:1])
    assert all(newest.decrypts(value) for value in after)
    assert not any(SecretBox(old_keys).decrypts(value) for value in after)
    assert plain(settings) == before_plain
    assert version(settings) > before_version
    assert status(settings)["under_older"] == 0


def test_drop_old_leaves_only_the_new_key_and_everything_still_decrypts(
        settings: Settings) -> None:
    before_plain = plain(settings)
    old_keys = read_key_file(settings.key_file)

    report = rotate(settings, drop_old=True)

    keys = read_key_file(settings.key_file)
    assert len(keys) == 1 and keys[0] not in old_keys
    assert report.dropped == 1 and report.keys_after == 1
    assert plain(settings) == before_plain


def test_prune_reencrypts_a_straggler_written_with_the_old_key_before_dropping_it(
        settings: Settings) -> None:
    old_keys = read_key_file(settings.key_file)
    rotate(settings)
    # A process that loaded only the old key before the rotation adds a channel afterwards.
    stale = Registry(create_engine(settings.registry), SecretBox(old_keys))
    stale.add_channel(tenant="acme", provider=Provider.CHAKRA, key="plugin-1",
                      phone_number_id="1065", token="late-token", webhook_secret="late-hook")
    stale.engine.dispose()
    assert status(settings)["under_older"] == 2

    report = prune(settings)

    assert report.dropped == 1
    assert report.reencrypted["channels.token"] == 3
    assert len(read_key_file(settings.key_file)) == 1
    assert ("late-token", None, "late-hook") in plain(settings)[0]


def test_rotate_refuses_and_changes_nothing_when_a_secret_is_undecryptable(
        settings: Settings) -> None:
    foreign = SecretBox([new_key()]).encrypt("foreign")
    engine = create_engine(settings.registry)
    with engine.begin() as conn:
        conn.execute(channels.update().where(channels.c.key == "MANTIS-M72HC").values(
            token_encrypted=foreign))
    engine.dispose()
    keys_before = read_key_file(settings.key_file)
    cipher_before = ciphertexts(settings)

    with pytest.raises(KeyRotationError) as caught:
        rotate(settings, drop_old=True)

    assert "channels.token" in str(caught.value)
    assert read_key_file(settings.key_file) == keys_before
    assert ciphertexts(settings) == cipher_before


def test_environment_keys_are_not_rotated_but_explained(
        settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    file_keys = read_key_file(settings.key_file)
    monkeypatch.setenv("WACLOUD_ENCRYPTION_KEY", file_keys[0])
    env_settings = load_settings(settings.data_dir)

    with pytest.raises(KeyRotationError) as caught:
        rotate(env_settings)
    assert "WACLOUD_ENCRYPTION_KEY=NEW,OLD" in str(caught.value)
    assert file_keys[0] not in str(caught.value)
    assert read_key_file(settings.key_file) == file_keys

    # The documented path: NEW,OLD in the variable, then reencrypt, then prune says it is safe.
    new = new_key()
    monkeypatch.setenv("WACLOUD_ENCRYPTION_KEY", f"{new},{file_keys[0]}")
    env_settings = load_settings(settings.data_dir)
    with pytest.raises(KeyRotationError, match="still need an older key"):
        prune(env_settings)
    counts = reencrypt(env_settings)
    assert sum(counts.values()) == 6
    with pytest.raises(KeyRotationError, match="you can remove the older keys"):
        prune(env_settings)
    assert all(SecretBox([new]).decrypts(value) for value in ciphertexts(settings))
    assert read_key_file(settings.key_file) == file_keys  # the file was never touched


def test_cli_prints_counts_and_never_a_secret_or_key(settings: Settings) -> None:
    runner = CliRunner()
    data_dir = str(settings.data_dir)
    outputs = []
    for args in (["keys", "status", "--json"], ["keys", "rotate", "--json"],
                 ["keys", "rotate"], ["keys", "prune", "--json"], ["keys", "status"]):
        result = runner.invoke(app, [*args, "--data-dir", data_dir])
        assert result.exit_code == 0, result.output
        outputs.append(result.output)
    assert json.loads(outputs[1])["reencrypted_total"] == 6
    assert json.loads(outputs[3])["dropped_keys"] == 2
    keys = read_key_file(settings.key_file)
    text = "\n".join(outputs) + "\n".join(ciphertexts(settings))
    for secret in SECRETS:
        assert secret not in "\n".join(outputs)
        assert secret not in text
    for key in keys:
        assert key not in "\n".join(outputs)


def test_set_channel_token_replaces_it_unpauses_and_bumps(settings: Settings) -> None:
    registry = open_registry(settings)
    try:
        channel = registry.channel_by_key(Provider.META, "106540352242922")
        registry.set_channel_pause(channel.id, True, "meta error 190: token expired")
        before = registry.version()

        assert registry.set_channel_token(channel.id, "EAAG-fresh") is True

        fresh = registry.channel_by_id(channel.id)
        assert (fresh.token, fresh.paused, fresh.pause_reason) == ("EAAG-fresh", False, None)
        assert registry.version() > before
        with registry.engine.connect() as conn:
            stored = conn.execute(sa.select(channels.c.token_encrypted).where(
                channels.c.id == channel.id)).scalar_one()
        assert "EAAG-fresh" not in stored
    finally:
        registry.engine.dispose()


def test_cli_set_token_by_provider_id_or_channel_id(settings: Settings) -> None:
    runner = CliRunner()
    data_dir = str(settings.data_dir)
    by_key = runner.invoke(app, ["channel", "set-token", "--provider", "whapi", "MANTIS-M72HC",
                                 "--token", "whapi-new-4711", "--json", "--data-dir", data_dir])
    assert by_key.exit_code == 0, by_key.output
    assert json.loads(by_key.output)["key"] == "MANTIS-M72HC"
    assert "whapi-new-4711" not in by_key.output
    channel_id = json.loads(by_key.output)["id"]
    by_id = runner.invoke(app, ["channel", "set-token", str(channel_id), "--token", "-",
                                "--data-dir", data_dir], input="from-stdin-4711\n")
    assert by_id.exit_code == 0, by_id.output
    assert "from-stdin-4711" not in by_id.output
    tokens = [c[0] for c in plain(settings)[0]]
    assert "from-stdin-4711" in tokens
    unknown = runner.invoke(app, ["channel", "set-token", "--provider", "meta", "999",
                                  "--token", "x", "--data-dir", data_dir])
    assert unknown.exit_code == 1


def test_encrypted_columns_cover_every_secret_column() -> None:
    names = {f"{c.table.name}.{c.name}" for c in encrypted_columns()}
    assert {"tenants.db_url_encrypted", "channels.token_encrypted",
            "channels.app_secret_encrypted", "channels.verify_token_encrypted",
            "channels.webhook_secret_encrypted"} <= names
    assert tenants.c.db_url_encrypted in encrypted_columns()


def test_secret_box_newest_only_and_decrypts() -> None:
    old, new = new_key(), new_key()
    ring = SecretBox([new, old])
    under_old = SecretBox([old]).encrypt("x")
    assert ring.decrypts(under_old) and not ring.newest_only().decrypts(under_old)
    assert ring.newest_only().key_count == 1
    with pytest.raises(SecretError):
        ring.newest_only().decrypt(under_old)
