"""Shared pieces of the command line: the Typer apps, common options, output helpers, and
the one place that turns an unexpected exception into one line on stderr.

Every error a command reports is one line, `error: ...`, saying what to do, and exit code 1.
An exception no command expected is reported the same way (a database that is down says so);
its traceback is printed only with `--debug` (or WACLOUD_DEBUG=1).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Annotated, Any

import typer
from typer._click import exceptions as click_errors  # typer's own click (0.29+)
from typer.core import TyperGroup
from typer.exceptions import TyperException

from wacloud import __version__
from wacloud.adapters.db.errors import failure_reason, is_database_unavailable
from wacloud.adapters.db.registry.store import RegistryError
from wacloud.admin.queries import channel_summary as channel_summary  # shared with the admin API
from wacloud.observability.logs import mask
from wacloud.security.crypto import SecretError
from wacloud.settings import Settings, load_settings

DEBUG_KEY = "wacloud.debug"


def debug_enabled(ctx: typer.Context | None = None) -> bool:
    if os.environ.get("WACLOUD_DEBUG", "").lower() in ("1", "true", "yes", "on"):
        return True
    return bool(ctx is not None and ctx.meta.get(DEBUG_KEY))


def describe_unexpected(exc: BaseException) -> str:
    """One line for an exception no command expected; never a secret (masked, no SQL)."""
    if isinstance(exc, (SecretError, RegistryError)):  # written for the operator already
        return " ".join(mask(str(exc)).split())
    reason = " ".join(failure_reason(exc).split())
    if is_database_unavailable(exc):
        return (f"a database could not be reached ({reason}); check that it is running and "
                "reachable (`wacloud doctor` checks every database), or run again with --debug")
    return f"{reason} (unexpected; run again with --debug for the traceback)"


class WacloudGroup(TyperGroup):
    """The top-level command group: the one handler for exceptions no command expected, and
    for usage errors (an unknown option, a missing or invalid value): one line too, naming the
    command's --help, instead of click's usage block."""

    def main(self, args: Sequence[str] | None = None, prog_name: str | None = None,
             complete_var: str | None = None, standalone_mode: bool = True,
             windows_expand_args: bool = True, **extra: Any) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, False, windows_expand_args,
                                **extra)
        try:
            code = super().main(args, prog_name, complete_var, False, windows_expand_args,
                                **extra)
        except click_errors.NoArgsIsHelpError as exc:  # `wacloud tenant`: the help
            exc.show()
            sys.exit(exc.exit_code)
        except click_errors.ClickException as exc:
            where = exc.ctx.command_path if isinstance(exc, click_errors.UsageError) and exc.ctx \
                else None
            message = " ".join(exc.format_message().split()).rstrip(".")
            hint = f"; see `{where} --help`" if where else ""
            typer.echo(f"error: {message}{hint}", file=sys.stderr)
            sys.exit(exc.exit_code)
        except typer.Abort:
            typer.echo("aborted", file=sys.stderr)
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except (TyperException, typer.Exit, typer.Abort, KeyboardInterrupt):
            raise
        except Exception as exc:
            if debug_enabled(ctx):
                raise
            typer.echo(f"error: {describe_unexpected(exc)}", err=True)
            raise typer.Exit(1) from None


app = typer.Typer(help="wacloud: multi-tenant WhatsApp messaging gateway.", no_args_is_help=True,
                  cls=WacloudGroup, pretty_exceptions_show_locals=False)


tenant_app = typer.Typer(help="Tenants (client businesses), each with its own database.",
                         no_args_is_help=True)
channel_app = typer.Typer(help="Channels: WhatsApp numbers at Meta, Whapi or Chakra.",
                          no_args_is_help=True)
channel_add = typer.Typer(help="Add a channel.", no_args_is_help=True)
parked_app = typer.Typer(help="Payloads that could not be routed or parsed.")
media_app = typer.Typer(help="Media files of inbound messages.", no_args_is_help=True)
app.add_typer(tenant_app, name="tenant")
app.add_typer(channel_app, name="channel")
channel_app.add_typer(channel_add, name="add")
app.add_typer(parked_app, name="parked")
app.add_typer(media_app, name="media")
apikey_app = typer.Typer(help="API keys (stored hashed, shown once).", no_args_is_help=True)
dlq_app = typer.Typer(help="Dead-letter queues: messages whose handling kept failing.",
                      no_args_is_help=True)
app.add_typer(apikey_app, name="apikey")
app.add_typer(dlq_app, name="dlq")


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"wacloud {__version__}")
        raise typer.Exit()


@app.callback()
def global_options(ctx: typer.Context, debug: Annotated[bool, typer.Option(
        "--debug", envvar="WACLOUD_DEBUG",
        help="Print the traceback of an unexpected error.")] = False,
        version: Annotated[bool, typer.Option(
            "--version", callback=_print_version, is_eager=True,
            help="Print the version and exit.")] = False) -> None:
    """wacloud: multi-tenant WhatsApp messaging gateway."""
    ctx.meta[DEBUG_KEY] = debug


DataDir = Annotated[Path | None, typer.Option("--data-dir", envvar="WACLOUD_DATA_DIR",
                                              help="Data directory (default ./.wacloud).")]
JsonOut = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]
ApiBase = Annotated[str | None, typer.Option("--api-base-url",
                                             help="Replace the provider's API base URL.")]
Mps = Annotated[int, typer.Option("--mps", help="Messages per second allowed on this number.")]


def settings_for(data_dir: Path | None, *, must_exist: bool = True) -> Settings:
    """The settings, with `--data-dir` applied. A command that reads or changes what is there
    stops at once when there is no data dir (nor a registry URL), before it creates any file;
    `init`, `tenant add`, `serve` and `worker` create it (`must_exist=False`; `doctor` and
    `media url` check for themselves)."""
    settings = load_settings(data_dir)
    if must_exist and settings.registry_url is None and not settings.data_dir.is_dir():
        fail(f"no data dir at {settings.data_dir.resolve()} (run `wacloud init`, or give "
             "--data-dir or WACLOUD_DATA_DIR)")
    return settings


# Output goes to `sys.stdout` / `sys.stderr` as they are at the time: while a progress bar is
# shown they are rich's proxies, which print above the bar (click's own stream would not).


def fail(message: str) -> None:
    typer.echo(f"error: {message}", file=sys.stderr)
    raise typer.Exit(1)


def emit(data: Any, as_json: bool, text: str) -> None:
    typer.echo(json.dumps(data, ensure_ascii=False, default=str) if as_json else text,
               file=sys.stdout)


def is_tty(stream: Any = None) -> bool:
    stream = sys.stdout if stream is None else stream
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def emit_rows(rows: Sequence[dict[str, Any]], as_json: bool, columns: Sequence[str],
              lines: Sequence[str], title: str | None = None,
              cells: Sequence[Sequence[Any]] | None = None) -> None:
    """A list: one JSON object per line with --json; a table on a terminal (`cells`, or the
    lines split at tabs); otherwise the tab-separated lines scripts already read."""
    if as_json:
        for row in rows:
            emit(row, True, "")
        return
    if not is_tty() or not rows:
        for line in lines:
            typer.echo(line)
        return
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    table = Table(*columns, title=title)
    for cell_row in cells if cells is not None else [line.split("\t") for line in lines]:
        shown = [str(cell) for cell in cell_row]
        # Text: values (message texts, reasons) are never read as rich markup.
        table.add_row(*(Text(cell) for cell in
                        (shown + [""] * (len(columns) - len(shown)))[:len(columns)]))
    Console().print(table)


class Advance:
    """What `progress` yields: call it with the number of items done; `set_total` when the
    count is known only once the work has started (e.g. the tenants of `migrate`)."""

    def __init__(self, step: Callable[[int], None] | None = None,
                 total: Callable[[int], None] | None = None) -> None:
        self._step = step
        self._total = total

    def __call__(self, n: int) -> None:
        if self._step is not None:
            self._step(n)

    def set_total(self, total: int) -> None:
        if self._total is not None:
            self._total(total)


@contextlib.contextmanager
def progress(description: str, total: int | None, as_json: bool) -> Iterator[Advance]:
    """A progress bar (a spinner while the total is unknown) on stderr, only when stderr is a
    terminal and the output is not --json; yields an `Advance`.

    Lines a command prints meanwhile go above the bar when stdout is the same terminal; piped
    stdout is left alone (rich would otherwise send it to the bar's stream)."""
    if as_json or not is_tty(sys.stderr):
        yield Advance()
        return
    from rich.console import Console
    from rich.progress import MofNCompleteColumn, Progress

    with Progress(*Progress.get_default_columns(), MofNCompleteColumn(),
                  console=Console(stderr=True), transient=True,
                  redirect_stdout=is_tty(sys.stdout)) as bar:
        task = bar.add_task(description, total=total)
        yield Advance(lambda n: bar.advance(task, n),
                      lambda n: bar.update(task, total=n))
