"""`wacloud status` (one screen: channels, queues, outboxes, parked items, problems) and
`wacloud doctor` (every check with its fix; exit code 1 when one fails)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Annotated, Any

import typer

from wacloud.admin.status import (
    Check,
    StatusReport,
    database_checks,
    gather_status,
    key_checks,
    queue_check,
    settings_checks,
    token_checks,
    webhook_check,
)
from wacloud.bootstrap import open_registry
from wacloud.cli.common import DataDir, JsonOut, app, emit, fail, is_tty, settings_for
from wacloud.domain.validation import InvalidValue, api_base_url


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


def _section(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """A rich table on a terminal; aligned plain text otherwise."""
    if is_tty():
        from rich.console import Console
        from rich.table import Table
        from rich.text import Text

        table = Table(*columns, title=title, title_justify="left")
        for row in rows:  # Text: values (reasons, URLs) are never read as markup
            table.add_row(*(Text(str(cell)) for cell in row))
        Console().print(table)
        return
    typer.echo(f"{title}:")
    cells = [list(columns)] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    for row in cells:
        typer.echo("  " + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True))
                   .rstrip())


def _rate(channel: dict[str, Any], direction: str) -> str:
    """`1h / 5m` messages per minute."""
    if not channel["reachable"]:
        return "?"
    return (f"{channel[f'{direction}_per_min_last_hour']:g} / "
            f"{channel[f'{direction}_per_min_last_5m']:g}")


def _errors(channel: dict[str, Any]) -> str:
    if not channel["reachable"]:
        return "database unreachable"
    shown = ", ".join(f"{code} x{n}" for code, n in channel["errors_by_code"].items())
    return shown or "-"


def _print_status(report: StatusReport) -> None:
    if report.channels:
        _section("channels (in/min, out/min: last hour / last 5 minutes; failed and "
                 "errors by code: last hour)",
                 ["id", "tenant", "provider", "channel", "state", "in/min", "out/min",
                  "failed", "errors"],
                 [[c["id"], c["tenant"], c["provider"], c["key"],
                   f"PAUSED: {c['pause_reason']}" if c["paused"] else "active",
                   _rate(c, "in"), _rate(c, "out"),
                   c["failed_last_hour"] if c["reachable"] else "?", _errors(c)]
                  for c in report.channels])
    else:
        typer.echo("channels: none (add one with `wacloud channel add`)")
    if report.queues:
        _section("queues", ["queue", "depth", "in flight", "delayed", "dead letters"],
                 [[q["name"], q["depth"], q["in_flight"], q["delayed"], q["dead_letters"]]
                  for q in report.queues])
    if report.outbox:
        _section("outbox", ["tenant", "pending", "reserved", "queued", "oldest pending",
                            "last hour: in / sent / failed"],
                 [[o["tenant"], o["pending"], o["reserved"], o["queued"],
                   _age(o["oldest_pending_age_s"]),
                   f"{o['received_last_hour']} / {o['sent_last_hour']} / "
                   f"{o['failed_last_hour']}"] if o["reachable"] else
                  [o["tenant"], "?", "?", "?", "database unreachable", "?"]
                  for o in report.outbox])
    if report.parked is not None:
        typer.echo(f"parked: {report.parked}" + (" (see `wacloud parked`)" if report.parked
                                                  else ""))
    if report.serve is not None:
        workers = report.serve.get("workers") or []
        alive = sum(1 for w in workers if isinstance(w, dict) and w.get("alive"))
        typer.echo(f"serve: running ({report.serve['url']}); stage workers {alive}/"
                   f"{len(workers)} alive")
    else:
        typer.echo("serve: no running gateway answered on the internal port")
    if not report.problems:
        typer.echo("problems: none")
        return
    typer.echo(f"problems ({len(report.problems)}):")
    for problem in report.problems:
        typer.echo(f"  - {problem.message}\n    fix: {problem.fix}")


@app.command()
def status(data_dir: DataDir = None, as_json: JsonOut = False) -> None:
    """One screen: channels, queues, outboxes, parked items and problems (a database that is
    down, paused channels, dead letters, stage workers of a running serve)."""
    settings = settings_for(data_dir)
    report = gather_status(settings)
    if as_json:
        emit(report.to_json(), True, "")
    else:
        _print_status(report)


def _print_checks(checks: list[Check]) -> None:
    if is_tty():
        from rich.console import Console
        from rich.table import Table
        from rich.text import Text

        table = Table("", "check", "detail", "fix")
        for check in checks:  # Text: a URL like http://[::1] is not markup
            table.add_row(Text("ok") if check.ok else Text("FAIL", style="bold red"),
                          Text(check.name), Text(check.detail),
                          Text("" if check.ok else check.fix or ""))
        Console().print(table)
        return
    for check in checks:
        typer.echo(f"{'ok  ' if check.ok else 'FAIL'}  {check.name}: {check.detail}")
        if not check.ok and check.fix:
            typer.echo(f"      fix: {check.fix}")


@app.command()
def doctor(public_url: Annotated[str | None, typer.Option(
               "--public-url", help="The gateway's public URL (e.g. https://gw.example.com): "
               "check that the webhook endpoint answers from outside.")] = None,
           tokens: Annotated[bool, typer.Option(
               "--tokens/--no-tokens", help="Ask each provider whether each channel's token "
               "works (one read call per channel).")] = True,
           data_dir: DataDir = None, as_json: JsonOut = False) -> None:
    """Check settings, keys, databases, the queue, tokens and the webhook URL; print each
    problem with its fix; exit code 1 when any check fails."""
    settings = settings_for(data_dir, must_exist=False)  # a missing one is a finding
    if public_url is not None:
        try:
            public_url = api_base_url(public_url, allow_http=settings.dev_allow_local_urls)
        except InvalidValue as exc:
            fail(str(exc).replace("API base URL", "--public-url").replace(
                "the provider's API origin, like https://graph.facebook.com",
                "the gateway's public URL, like https://gw.example.com"))
    checks = settings_checks(settings)
    if all(c.ok for c in checks if c.name == "data dir"):
        registry = None
        db_checks = database_checks(settings, None)
        if db_checks[0].ok:
            registry = open_registry(settings)
        try:
            checks += key_checks(settings) if registry is not None else []
            checks += database_checks(settings, registry) if registry is not None else db_checks
            checks.append(queue_check(settings))
            if tokens and registry is not None:
                channels = registry.channels()
                checks += asyncio.run(token_checks(channels)) if channels else []
        finally:
            if registry is not None:
                registry.engine.dispose()
    if public_url is not None:
        checks.append(webhook_check(public_url))
    failed = [c for c in checks if not c.ok]
    if as_json:
        emit({"ok": not failed, "checks": [c.to_json() for c in checks]}, True, "")
    else:
        _print_checks(checks)
        typer.echo(f"{len(failed)} problem(s) found" if failed else "no problems found")
    if failed:
        raise typer.Exit(1)
