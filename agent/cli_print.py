"""``till-agent reprint``: a copy of a receipt, marked as such, on the configured printer."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from agent.cli_base import (
    JsonFlag,
    ReceiptNumber,
    _ask_service,
    _emit,
    _fail,
    _run_config,
    _service_error,
    app,
    out,
)
from agent.cli_config import ConfigOption
from agent.config import CONFIG_ENV, AgentConfig, load_config
from agent.errors import DataDirLocked, PrinterError, TillAgentError

if TYPE_CHECKING:
    from storage.db import TillDB

__all__ = ["configured_header", "reprint"]


@app.command()
def reprint(
    register: Annotated[str, typer.Argument(help="Kassen-ID.")],
    number: ReceiptNumber,
    config_file: ConfigOption = None,
    as_json: JsonFlag = False,
) -> None:
    """Print a copy of a receipt ("KOPIE"), through the running service if there is one."""
    try:
        config = load_config(config_file)
        copy = _reprint_local(config, register, number)
    except DataDirLocked:
        try:
            copy = _reprint_via_api(config, register, number, as_json)
        except TillAgentError as exc:
            _fail(exc, as_json)
    except TillAgentError as exc:
        _fail(exc, as_json)
    _emit({"register": register, "number": number, "copy": copy}, as_json)
    if not as_json:
        out.print(f"copy {copy} of receipt {number} of {register} sent to the printer")


def _reprint_local(config: AgentConfig, register: str, number: int) -> int:
    """No service is running: print with our own worker (a failed job stays queued)."""
    from agent.print_worker import PrintWorker
    from agent.printing import open_printer
    from agent.receipts import ReceiptService
    from agent.signing.registry import UnitRegistry
    from storage.db import open_till_db

    db = open_till_db(config.data_dir, create=False)
    registry = UnitRegistry()
    try:
        worker = PrintWorker(
            ReceiptService(db, registry),
            open_printer(config.printer),
            retry_s=0.0,
            escpos=config.printer.escpos,
            header=config.printer.header,
        )
        copy = worker.reprint(register, number)
        # the jobs queued ahead of the copy print first; a pass sends a batch of them
        while worker.run_once() and not _printed(db, register, number, copy):
            pass
        if worker.last_error is not None:
            raise PrinterError(f"{worker.last_error} (the copy stays queued for `run`)")
        return copy
    finally:
        registry.close()
        db.close()


def _printed(db: TillDB, register: str, number: int, copy: int) -> bool:
    with db.read_connection() as conn:
        row = conn.execute(
            "SELECT state FROM print_jobs WHERE register_id = ? AND number = ? AND copy = ?",
            (register, number, copy),
        ).fetchone()
    return row is not None and row[0] == "printed"


def _reprint_via_api(config: AgentConfig, register: str, number: int, as_json: bool) -> int:
    """The service holds the data directory: ask it over the local API."""
    path = f"receipts/{register}/{number}/reprint"
    response = _ask_service(config, path, None, as_json, pointer=f"--config FILE (or {CONFIG_ENV})")
    if response.status_code == 404:  # the core's NotFound, in its words
        _fail(_service_error(response), as_json)
    if response.status_code >= 400:
        _fail(PrinterError(f"the service refused the reprint: {response.text}"), as_json)
    return int(response.json()["copy"])


def configured_header() -> tuple[str, ...]:
    """``[printer] header`` of the configuration `run` uses (``TILL_AGENT_CONFIG``, else the
    system file, and the environment), for previews; none when it does not load."""
    try:
        return _run_config().printer.header
    except TillAgentError:
        return ()
