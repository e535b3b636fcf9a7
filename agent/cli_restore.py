"""``till-agent restore BACKUP_FILE``: put a backup of the till database back (agent.restore)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from agent.cli_base import DEFAULT_DATA, DataDir, JsonFlag, _emit, _fail, _print_table, app, out
from agent.errors import TillAgentError

if TYPE_CHECKING:
    from agent.restore import Restored

__all__ = ["restore"]


@app.command()
def restore(
    backup: Annotated[
        Path | None,
        typer.Argument(
            metavar="BACKUP_FILE",
            help='The backup of the till database (`sqlite3 till.sqlite3 ".backup FILE"`).',
            show_default=False,
        ),
    ] = None,
    yes: Annotated[
        bool,
        typer.Option(
            "--yes",
            help="The backup's last receipts (shown without it) were checked against the"
            " last receipt each register printed and the POS: needed when the data"
            " directory holds no readable database of this till.",
        ),
    ] = False,
    abandon: Annotated[
        bool,
        typer.Option(
            "--abandon",
            help="Undo a restore that did not finish (restore.pending in the data"
            " directory): the database it replaced back in place, its copy removed.",
        ),
    ] = False,
    data_dir: DataDir = DEFAULT_DATA,
    as_json: JsonFlag = False,
) -> None:
    """Restore the till database from a backup, with the service stopped.

    The backup is checked first (integrity, the journal's hash chain, its schema revision:
    a later version's is refused, an earlier one is migrated when the service starts). A
    backup behind the till database in the data directory is refused (exit 4): its
    receipt numbers after the backup's are on paper (or signed by a chain service) and
    would be issued again; so is one taken before a unit switch of that database. Without
    a readable database of this till (a dead disk, a new machine, one made afresh) the
    backup's last receipts are shown and --yes is needed (exit 3 without it). The
    database it replaces and its -wal and -shm are moved into replaced-<UTC time>/ in the
    data directory, never deleted; the restored one is mode 0600 and owned as the data
    directory. Print jobs the backup still had open are skipped (`reprint` prints a
    KOPIE), and the restore is journaled (till.restored). The api-token and keys/ are not in the
    database: restore them beside it. restore.pending in the data directory records a
    restore until it is done: nothing opens the database meanwhile (exit 5); the same
    restore run again finishes it, --abandon undoes it.
    """
    from agent.clock import SystemClock
    from agent.restore import BackupBehind, ConfirmationNeeded, SwitchedAfterBackup
    from agent.restore import restore as restore_backup

    if abandon:
        _abandon(backup, yes, data_dir, as_json)
        return
    if backup is None:
        raise typer.BadParameter("BACKUP_FILE is needed (or --abandon)", param_hint="BACKUP_FILE")
    try:
        done = restore_backup(backup, data_dir, confirmed=yes, now=SystemClock().now())
    except BackupBehind as exc:
        _fail(exc, as_json, extra={"registers": exc.fields()})
    except SwitchedAfterBackup as exc:
        _fail(exc, as_json, extra={"switches": exc.fields()})
    except ConfirmationNeeded as exc:
        _fail(exc, as_json, extra={"registers": [r.as_dict() for r in exc.last]})
    except TillAgentError as exc:
        _fail(exc, as_json)
    if as_json:
        _emit(done.as_dict(), True)
        return
    _summary(done, data_dir)


def _abandon(backup: Path | None, yes: bool, data_dir: Path, as_json: bool) -> None:
    from agent.restore import abandon
    from storage.db import DB_FILE

    if backup is not None or yes:
        raise typer.BadParameter(
            "--abandon takes no BACKUP_FILE and no --yes: it undoes the restore that"
            " restore.pending records",
            param_hint="'--abandon'",
        )
    try:
        undone = abandon(data_dir)
    except TillAgentError as exc:
        _fail(exc, as_json)
    if as_json:
        _emit(undone.as_dict(), True)
        return
    put_back = ", ".join(undone.put_back) or "none (they had not been moved)"
    _say(f"the restore of {undone.backup} into {data_dir} is undone")
    _say(f"  put back from {undone.replaced}/: {put_back}")
    if undone.removed_copy:
        _say(f"  the restored copy, {DB_FILE} already, was removed")
    _say("the till database is the one the restore would have replaced; start the service")


def _summary(done: Restored, data_dir: Path) -> None:
    say = _say
    if done.leftovers:
        say(f"removed what killed restores left: {', '.join(done.leftovers)}")
    if done.resumed:
        say("finished the restore a kill had interrupted (restore.pending)")
    say(f"restored {done.backup} into {done.database}")
    say(f"  sha256 {done.sha256}, {done.size} bytes, schema revision {done.revision}")
    table = Table("register", "last receipt", "Belegnummer", "issued at", "total")
    for r in done.registers:
        total = "" if r.total_cents is None else f"{r.total_cents / 100:.2f}"
        table.add_row(r.register, str(r.number), r.receipt_id or "", r.issued_at or "", total)
    _print_table(table)
    if done.replaced is not None:
        was = done.current.problem or (
            ", ".join(f"{r.register} at {r.number}" for r in done.current.last)
            or "a till database without a register"
        )
        say(f"the files it replaced are kept in {done.replaced}/ ({was})")
    switches = done.switches_left_behind
    if (behind := done.events_left_behind) is not None:
        among = any(behind[0] <= s.seq <= behind[1] for s in switches)
        say(
            f"its journal events {behind[0]}-{behind[1]} came after the backup's (outages,"
            f" checks, printer{', unit switches' if among else ''}): they are only in that"
            " copy, the receipts are all here"
        )
    if switches:
        shown = "; ".join(s.shown() for s in switches)
        say(
            "its unit switches are not in the backup, only in that copy (the restored"
            f" registers sign with the units the backup names): {shown}"
        )
    if done.confirmed_by_operator:
        say("--yes: you confirmed these are the last receipts each register printed")
    if done.skipped:
        say(
            f"print jobs still open in the backup are skipped, not printed again as originals:"
            f" {done.skipped.shown()}; one that did not come out on paper: `till-agent reprint"
            " REGISTER NUMBER` (a copy, KOPIE)"
        )
    say(f"journaled as event {done.journal_seq} (till.restored)")
    if done.migrates_on_start:
        say(
            f"schema revision {done.revision} is migrated to this version's when the service starts"
        )
    token = (
        ""
        if (data_dir / "api-token").exists()
        else " (none here: the service makes a new one, give it to the POS)"
    )
    say(
        f"next: put back the api-token{token} and keys/ (owner as {data_dir}), check with"
        " `till-agent config check`, then start the service"
    )


def _say(text: str) -> None:
    out.print(text, highlight=False, markup=False)
