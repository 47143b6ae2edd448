"""Commands for secrets and the credentials service: keys, servicekey, audit.

Output holds counts, ids and key prefixes only. The one exception is a value made for the
operator to store: a service key at creation and a key from `keys generate`, printed once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, TypeVar

import typer

from wacloud.adapters.db.registry.api_keys import create_api_key, list_api_keys, revoke_api_key
from wacloud.adapters.db.registry.audit import list_audit
from wacloud.adapters.db.registry.store import RegistryError
from wacloud.bootstrap import open_registry
from wacloud.cli.common import DataDir, JsonOut, app, emit, emit_rows, fail, settings_for
from wacloud.credentials.key_rotation import KeyRotationError, prune, reencrypt, rotate, status
from wacloud.security.crypto import SecretError, new_key

keys_app = typer.Typer(help="Encryption keys of the stored secrets (rotation).",
                       no_args_is_help=True)
servicekey_app = typer.Typer(help="Service keys for POST /internal/credentials and the Lambda "
                             "handler (stored hashed, shown once).", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
app.add_typer(servicekey_app, name="servicekey")

T = TypeVar("T")


def _run(action: Callable[[], T]) -> T:
    try:
        return action()
    except (KeyRotationError, SecretError, RegistryError) as exc:
        fail(str(exc))
        raise  # unreachable: fail() exits


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{name} {n}" for name, n in counts.items())


@keys_app.command("rotate")
def keys_rotate(drop_old: Annotated[bool, typer.Option(
                    "--drop-old", help="Then remove the older keys (after checking that the "
                    "new key alone opens every stored secret).")] = False,
                data_dir: DataDir = None, as_json: JsonOut = False) -> None:
    """Add a new key in front of the key file and re-encrypt every stored secret under it."""
    report = _run(lambda: rotate(settings_for(data_dir), drop_old=drop_old))
    data = report.to_json()
    emit(data, as_json, f"new key added; re-encrypted {data['reencrypted_total']} secret(s) "
         f"({_counts(report.reencrypted)}); keys in the file: {report.keys_after}"
         + (f" ({report.dropped} old key(s) dropped)" if report.dropped else
            " (run `wacloud keys prune` to drop the old ones)"))


@keys_app.command("prune")
def keys_prune(data_dir: DataDir = None, as_json: JsonOut = False) -> None:
    """Drop every key but the newest, once nothing needs the older ones."""
    report = _run(lambda: prune(settings_for(data_dir)))
    emit(report.to_json(), as_json, f"dropped {report.dropped} old key(s); re-encrypted "
         f"{sum(report.reencrypted.values())} secret(s) that still needed one")


@keys_app.command("reencrypt")
def keys_reencrypt(data_dir: DataDir = None, as_json: JsonOut = False) -> None:
    """Re-encrypt every stored secret under the newest configured key (file or environment)."""
    counts = _run(lambda: reencrypt(settings_for(data_dir)))
    emit({"reencrypted": counts, "reencrypted_total": sum(counts.values())}, as_json,
         f"re-encrypted {sum(counts.values())} secret(s) ({_counts(counts)})")


@keys_app.command("status")
def keys_status(data_dir: DataDir = None, as_json: JsonOut = False) -> None:
    """Where the keys come from and how many stored secrets each key state covers."""
    data = _run(lambda: status(settings_for(data_dir)))
    emit(data, as_json, f"{data['keys']} key(s) from the {data['source']}; stored secrets: "
         f"{data['under_newest']} under the newest key, {data['under_older']} under an older "
         f"one, {data['undecryptable']} undecryptable")


@keys_app.command("generate")
def keys_generate(as_json: JsonOut = False) -> None:
    """Print a new key (for WACLOUD_ENCRYPTION_KEY); nothing is stored."""
    key = new_key()
    emit({"key": key}, as_json, key)


@servicekey_app.command("create")
def servicekey_create(label: Annotated[str | None, typer.Option("--label")] = None,
                      data_dir: DataDir = None, as_json: JsonOut = False) -> None:
    """Create a service key; it is printed once and stored hashed."""
    registry = open_registry(settings_for(data_dir))
    record, key = _run(lambda: create_api_key(registry, tenant=None, service=True,
                                              label=label))
    emit({"id": record.id, "label": record.label, "prefix": record.prefix, "key": key},
         as_json, f"{key}\n(service key {record.id}; shown once, store it now)")


@servicekey_app.command("list")
def servicekey_list(data_dir: DataDir = None, as_json: JsonOut = False) -> None:
    """List service keys (prefixes only)."""
    registry = open_registry(settings_for(data_dir))
    records = [r for r in list_api_keys(registry) if r.is_service]
    emit_rows([{"id": r.id, "prefix": r.prefix, "label": r.label, "revoked": r.revoked}
               for r in records], as_json, ["id", "prefix", "label", "state"],
              [f"{r.id}\t{r.prefix}...\t{r.label or ''}" + ("\trevoked" if r.revoked else "")
               for r in records])


@servicekey_app.command("revoke")
def servicekey_revoke(key_id: int, data_dir: DataDir = None, as_json: JsonOut = False) -> None:
    """Revoke a service key (refused from the next request on)."""
    registry = open_registry(settings_for(data_dir))
    if not any(k.id == key_id and k.is_service for k in list_api_keys(registry)):
        fail(f"no service key {key_id}")
    _run(lambda: revoke_api_key(registry, key_id))
    emit({"id": key_id, "revoked": True}, as_json, f"service key {key_id} revoked")


@app.command("audit")
def audit(limit: Annotated[int, typer.Option("--limit")] = 1000,
          data_dir: DataDir = None, as_json: JsonOut = False) -> None:
    """Calls of the credentials endpoint: who asked for which id, when, and the outcome."""
    registry = open_registry(settings_for(data_dir))
    rows = list_audit(registry, limit)
    emit_rows(rows, as_json, ["at", "via", "source", "key", "asked", "outcome"],
              [_audit_line(row) for row in rows])


def _audit_line(row: dict[str, Any]) -> str:
    who = f"key {row['key_id']} ({row['key_prefix']}...)" if row["key_id"] else "no valid key"
    target = f"{row['provider'] or '?'}:{row['lookup_id'] or '?'}"
    found = f" -> {row['tenant']}/{row['channel_key']}" if row["tenant"] else ""
    return (f"{row['at']}\t{row['via']}\t{row['source'] or '-'}\t{who}\t{target}{found}\t"
            f"{row['outcome']} ({row['status']})")
