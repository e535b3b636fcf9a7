"""``till-agent demo`` and ``till-agent bench ingest`` (registered on the apps of cli_base)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console, Group
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from agent.cli_base import (
    JsonFlag,
    _fail,
    _print_metrics,
    _print_table,
    _progress,
    app,
    bench_app,
    out,
)
from agent.contract import ReceiptResult
from agent.errors import ConfigurationError, TillAgentError

if TYPE_CHECKING:
    from agent.demo import SummaryRow

__all__ = ["bench_ingest_cmd", "demo"]

_STATE_STYLE = {"signed": "green", "fallback": "yellow", "unsigned": "red"}


class _RichNarrator:
    """Tells the day on a console: one line per step, a small preview per receipt."""

    def __init__(self, console: Console) -> None:
        self.console = console

    def step(self, at: str, text: str) -> None:
        self.console.print(f"[cyan]{at}[/cyan]  {escape(text)}", highlight=False)

    def receipt(self, result: ReceiptResult) -> None:
        self.console.print(_preview(result))


def _preview(result: ReceiptResult) -> Panel:
    """The printable lines and the QR payload of one receipt, framed like the paper."""
    style = _STATE_STYLE[result.signature_state]
    body = Group(
        Text("\n".join(result.lines)),
        Text("QR code payload:", style="bold"),
        Text(result.qr, style="dim", overflow="fold"),
    )
    title = f"#{result.number} {result.kind} [{style}]{result.signature_state}[/{style}]"
    return Panel(body, title=title, title_align="left", width=48, border_style=style)


def _summary_table(rows: Sequence[SummaryRow]) -> Table:
    table = Table(title="The day at a glance")
    for name in ("No.", "time", "kind", "state", "amount", "note"):
        table.add_column(name, justify="right" if name in ("No.", "amount") else "left")
    for row in rows:
        style = _STATE_STYLE.get(row.state, "")
        table.add_row(
            str(row.number),
            row.time,
            row.kind,
            f"[{style}]{row.state}[/{style}]",
            f"{row.amount_cents / 100:.2f}",
            escape(row.note),
        )
    return table


@app.command()
def demo(
    out_dir: Annotated[
        Path | None,
        typer.Option(
            "--out",
            file_okay=False,
            help="Leave the DEP export, the crypto container and PNG previews here.",
        ),
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """A business day in one command: outages, Sammelbeleg, a remedied receipt, DEP verified.

    Sales, the unit going down, fallback receipts and the Sammelbeleg, an unsigned receipt
    remedied (Nullbeleg + reissue), then the DEP exported and verified.

    A temporary till database and a fake chain service on 127.0.0.1: nothing certified.

    Exit 0 only if the DEP verifies.
    """
    from agent.demo import CONTAINER_FILE, DEP_FILE, run_demo

    narrator = None if as_json else _RichNarrator(out)
    if not as_json:
        out.rule("[bold]till-agent demo[/bold]: one business day at a till")
    try:
        result = run_demo(out_dir, narrator)
    except TillAgentError as exc:
        _fail(exc, as_json)
    except OSError as exc:
        _fail(ConfigurationError(f"cannot write the demo files: {exc}"), as_json)
    if as_json:
        print(json.dumps(result.as_dict(), ensure_ascii=False, indent=2))
        raise typer.Exit(0 if result.ok else 1)
    _print_table(_summary_table(result.rows))
    for finding in result.findings:
        out.print(
            f"[red]{finding.rule}[/red] at {finding.receipt or '(DEP)'}: {finding.message}",
            soft_wrap=True,
        )
    count, found = result.verified_receipts, len(result.findings)
    verdict = "[green]DEP verified[/green]" if result.ok else "[red]DEP NOT verified[/red]"
    out.print(f"{verdict}: {count} receipts, {found} findings", highlight=False)
    if out_dir is not None:
        dep, container = out_dir / DEP_FILE, out_dir / CONTAINER_FILE
        out.print(
            f"Left in {out_dir}: {DEP_FILE}, {CONTAINER_FILE}, previews/ "
            f"({len(result.previews)} PNG). Check them: till-agent verify {dep} {container}",
            highlight=False,
            soft_wrap=True,
        )
    raise typer.Exit(0 if result.ok else 1)


@bench_app.command("ingest")
def bench_ingest_cmd(
    n: Annotated[int, typer.Option("--n", min=1, help="Sales through each path.")] = 2000,
    clients: Annotated[
        int, typer.Option("--clients", min=1, max=64, help="Concurrent API clients.")
    ] = 4,
    as_json: JsonFlag = False,
) -> None:
    """Sales through the spool and the local API of a real `till-agent run` process."""
    from agent.bench_ingest import bench_ingest

    with _progress(as_json) as progress:
        tasks: dict[str, Any] = {}

        def advance(phase: str, k: int) -> None:
            if phase not in tasks:
                tasks[phase] = progress.add_task(phase, total=n)
            progress.advance(tasks[phase], k)

        try:
            result = bench_ingest(n, clients=clients, progress=advance)
        except TillAgentError as exc:
            _fail(exc, as_json)
    _print_metrics(result.as_dict(), as_json)
    raise typer.Exit(0 if result.spool_failed == 0 and result.api_failed == 0 else 1)
