"""The commands of ``till-agent`` (registered on the Typer apps of :mod:`agent.cli`)."""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import re
import sqlite3
import stat
import sys
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, NoReturn

import typer
from rich.markup import escape
from rich.table import Table

from agent.cli_base import (
    DEFAULT_DATA,
    DataDir,
    JsonFlag,
    ReceiptNumber,
    _emit,
    _fail,
    _print_metrics,
    _print_table,
    _progress,
    app,
    bench_app,
    err,
    export_app,
    out,
    receipts_app,
    simulate_app,
    unit_app,
)
from agent.errors import (
    ConfigurationError,
    DataDirLocked,
    InvalidSale,
    NotFound,
    StorageError,
    TillAgentError,
    WaitsForUnit,
)

if TYPE_CHECKING:  # the commands import what they use: every command starts faster
    from agent.contract import ReceiptResult
    from agent.receipts import ReceiptService
    from agent.signing import UnitConfig
    from agent.unit_switch import UnitSwitch
    from storage.db import TillDB


@contextmanager
def _database(
    data_dir: Path,
    as_json: bool,
    *,
    writer: bool = True,
    create: bool = True,
    when_locked: str = "",
) -> Iterator[TillDB]:
    """The till database (``writer``: its writer lock held), closed at the end; an agent
    error in opening it or in the command's body is the command's exit code.
    ``when_locked`` is added to the message when another process holds the data directory
    (what to do about the running service)."""
    from storage.db import open_till_db

    try:
        db = open_till_db(data_dir, writer=writer, create=create)
    except DataDirLocked as exc:
        _fail(DataDirLocked(f"{exc}{when_locked}") if when_locked else exc, as_json)
    except TillAgentError as exc:
        _fail(exc, as_json)
    try:
        yield db
    except TillAgentError as exc:
        _fail(exc, as_json)
    finally:
        db.close()


@contextmanager
def _service(
    data_dir: Path, as_json: bool = False, *, create: bool = False
) -> Iterator[ReceiptService]:
    """The receipt service on the till database, its writer lock held. Only ``init`` may
    create the database (``create``): elsewhere a mistyped directory is exit 6, and is
    left as it was (no database, no lock file, no directory)."""
    from agent.receipts import ReceiptService
    from agent.signing.registry import UnitRegistry

    with _database(data_dir, as_json, create=create) as db:
        registry = UnitRegistry(simulate_dir=data_dir / "simulate")
        try:
            yield ReceiptService(db, registry)
        finally:
            registry.close()


@contextmanager
def _reader(data_dir: Path, as_json: bool = False) -> Iterator[TillDB]:
    """The till database for reading (no lock): one without the till's schema (an empty
    file) is exit 6 as a missing one is, another program's database exit 5."""
    with _database(data_dir, as_json, writer=False, create=False) as db:
        yield db


def _require_register(conn: sqlite3.Connection, register: str, as_json: bool) -> None:
    """A mistyped Kassen-ID is not an empty register: exit 6 naming it."""
    if conn.execute("SELECT 1 FROM registers WHERE id = ?", (register,)).fetchone() is None:
        _fail(NotFound(f"register {register!r} is not initialized in this till database"), as_json)


def _show_receipt(result: ReceiptResult, as_json: bool) -> None:
    if as_json:
        _emit(result.model_dump(by_alias=True), True)
        return
    colour = {"signed": "green", "fallback": "yellow", "unsigned": "red"}[result.signature_state]
    out.print(
        f"[bold]{result.register_id}[/bold] #{result.number} ({result.receipt_id}) "
        f"{result.kind} [{colour}]{result.signature_state}[/{colour}] {result.issued_at}"
    )
    if result.resolution is not None:
        how = _resolution_text(result.resolution, result.replaced_by, result.voided_by)
        out.print(f"resolution: {how}", highlight=False, markup=False)
    for line in result.lines:
        out.print(f"  {line}", highlight=False, markup=False)
    for label, code in (("QR", result.qr), ("OCR", result.ocr), ("JWS", result.jws)):
        out.print(f"  {label}: {code}", highlight=False, markup=False, soft_wrap=True)


def _resolution_text(resolution: str | None, replaced_by: int | None, voided_by: int | None) -> str:
    """An unsigned receipt's resolution in words ("superseded by 6, voided by 5"); "" for a
    receipt without one."""
    if resolution is None:
        return ""
    text = resolution if replaced_by is None else f"{resolution} by {replaced_by}"
    return text if voided_by is None else f"{text}, voided by {voided_by}"


# -- units ----------------------------------------------------------------------------------

# the UnitConfig fields the unit commands set, and the option that sets each (longest first:
# a message names a field, and the option is named instead)
_UNIT_OPTIONS = {
    "certificate_file": "--certificate",
    "token_label": "--token-label",
    "key_label": "--key-label",
    "key_file": "--id",
    "key_id": "--key-id",
    "module": "--module",
    "pin": "--pin-file",
    "zda": "--zda",
    "id": "--id",
}
_UNIT_RULES = {
    "string_pattern_mismatch": "format",
    "string_too_short": "min-length",
    "string_too_long": "max-length",
    "missing": "required",
    "value_error": "format",
}


def _check_unit_id(unit_id: str, as_json: bool) -> None:
    """A unit id names the unit's key files: one that is not an id is refused (exit 3)
    before anything is created, and so is the development unit's, which ``run`` alone
    makes: a unit of the operator's under it would be taken for that one (by ``run`` on
    the defaults, and by ``development_unit = false``, which refuses its registers)."""
    from agent.signing.config import DEV_UNIT, DEV_ZDA, UNIT_ID_RULE, is_unit_id

    if not is_unit_id(unit_id):
        _fail(
            InvalidSale("--id", "format", f"{unit_id!r} is not a unit id: {UNIT_ID_RULE}"), as_json
        )
    if unit_id == DEV_UNIT:
        message = (
            f"{DEV_UNIT!r} is reserved for the development unit that `till-agent run` creates"
            f" (self-signed, {DEV_ZDA}); choose another --id"
        )
        _fail(InvalidSale("--id", "reserved", message), as_json)


def _unit_config(as_json: bool, **fields: object) -> UnitConfig:
    """The unit the options describe; options that do not describe one are exit 3 naming
    the option (not the configuration field, and no pydantic traceback)."""
    from pydantic import ValidationError

    from agent.signing import UnitConfig

    try:
        return UnitConfig.model_validate(fields)
    except ValidationError as exc:
        error = exc.errors()[0]
        message = str(error["msg"]).removeprefix("Value error, ")
        named = [str(error["loc"][0])] if error["loc"] else []
        named += [f for f in _UNIT_OPTIONS if f != "id" and re.search(rf"\b{f}\b", message)]
        for field, option in _UNIT_OPTIONS.items():
            if field != "id":  # ("provider id" is no option)
                message = re.sub(rf"\b{field}\b", option, message)
        rule = _UNIT_RULES.get(error["type"], "invalid")
        if not error["loc"]:  # the options together: "an open system unit needs ..."
            rule = "required" if "need" in message or "required" in message else "invalid"
        option = _UNIT_OPTIONS.get(named[0], "(unit)") if named else "(unit)"
        _fail(InvalidSale(option, rule, message), as_json)


@contextmanager
def _unit_writer(data_dir: Path, unit_id: str, as_json: bool) -> Iterator[TillDB]:
    """The till database, its writer lock held, for adding unit ``unit_id``: taken before
    anything is written (a refused command leaves nothing behind), and an id that is taken
    is refused (exit 3: the stored unit would be replaced)."""
    with _database(data_dir, as_json) as db:
        with db.read_connection() as conn:
            taken = conn.execute("SELECT 1 FROM units WHERE id = ?", (unit_id,)).fetchone()
        if taken is not None:  # the input collides: as init's
            message = f"unit {unit_id!r} already exists in the till database"
            _fail(InvalidSale("--id", "unit-exists", f"{message}: choose another --id"), as_json)
        yield db


@unit_app.command("create-software")
def unit_create_software(
    unit_id: Annotated[
        str, typer.Option("--id", help="Name of the unit: letters, digits, '.', ':', '-'.")
    ] = "dev",
    zda: Annotated[
        str,
        typer.Option(
            help="Provider id of an open system's receipts: AT100, fictitious, for development;"
            " a real one (AT1, ...) on a self-signed key is for tests only. Ignored with --key-id."
        ),
    ] = "AT100",
    key_id: Annotated[
        str | None,
        typer.Option(help="Closed system (R1-AT0): Ordnungsbegriff-KeyID, e.g. U:ATU12345678-K1."),
    ] = None,
    simulate: Annotated[
        bool, typer.Option("--simulate", help="Let `simulate unit` switch it down/up at run time.")
    ] = False,
    data_dir: DataDir = DEFAULT_DATA,
    as_json: JsonFlag = False,
) -> None:
    """Create a DEVELOPMENT software unit (new P-256 key) and store it in the till database.

    Open systems get a self-signed certificate: it is not issued by a trust service provider
    and is not valid for a registered cash register. With --key-id the unit is for a closed
    system (R1-AT0) and has no certificate.
    """
    from agent.signing import create_software_unit, software_unit_files
    from agent.signing.config import DEV_ZDA

    _check_unit_id(unit_id, as_json)
    keys = data_dir / "keys"
    key_file, open_cert_file = software_unit_files(keys, unit_id)
    cert_file = None if key_id else open_cert_file
    config = _unit_config(
        as_json,
        id=unit_id,
        kind="software",
        zda="AT0" if key_id else zda,
        key_file=key_file.resolve(),
        certificate_file=None if cert_file is None else cert_file.resolve(),
        key_id=key_id,
        simulate=simulate,
    )
    files = [f for f in (key_file, cert_file) if f is not None]
    with _unit_writer(data_dir, unit_id, as_json) as db:
        if any(os.path.lexists(f) for f in files):  # left by an earlier till, say
            message = f"unit {unit_id!r} already exists (its key is in {keys})"
            _fail(InvalidSale("--id", "unit-exists", f"{message}: choose another --id"), as_json)
        try:  # from here on the files are ours (the names were free, under the lock)
            try:
                create_software_unit(keys, name=unit_id, key_id=key_id)
            except OSError as exc:
                why = f"{exc.filename}: {exc.strerror}" if exc.filename else str(exc)
                message = f"cannot write the key files of unit {unit_id!r}: {why}"
                _fail(StorageError(message), as_json)
            _add_unit(db, config, as_json)
        except BaseException:
            for f in files:  # a refused unit leaves no key behind to block a retry
                f.unlink(missing_ok=True)
            raise
    if key_id is None and zda != DEV_ZDA:  # not refused: tests and scenario replays use AT1
        err.print(
            f"[yellow]warning:[/yellow] {escape(_borrowed_zda(unit_id, zda))}", highlight=False
        )


def _borrowed_zda(unit_id: str, zda: str) -> str:
    """Why a self-signed key under a real provider's id must not sign a till's receipts."""
    from agent.signing.config import DEV_ZDA

    return (
        f"unit {unit_id} has a self-signed certificate under {zda}, the id of a real trust"
        f" service provider (its receipts say R1-{zda}): for tests only, its receipts claim"
        f" a certificate {zda} never issued; for development leave out --zda (the fictitious"
        f" {DEV_ZDA}), for a registered till use the provider's certificate (unit add-pkcs11)"
    )


def _missing_zda() -> str:
    from agent.signing.config import DEV_ZDA

    return (
        "an open system unit must name the trust service provider of its certificate, which"
        " its receipts carry (R1-<zda>): --zda AT1 (A-Trust), AT2 (GlobalTrust) or AT3"
        f" (PrimeSign); {DEV_ZDA} only for a test token (its registers are development ones)"
    )


@unit_app.command("add-pkcs11")
def unit_add_pkcs11(
    unit_id: Annotated[
        str, typer.Option("--id", help="Name of the unit: letters, digits, '.', ':', '-'.")
    ],
    module: Annotated[Path, typer.Option(help="Path of the PKCS#11 module (.so).")],
    token_label: Annotated[str, typer.Option(help="Label of the token.")],
    key_label: Annotated[str, typer.Option(help="Label of the signing key on the token.")],
    pin_file: Annotated[Path, typer.Option(help="File holding the user PIN (mode 0600).")],
    certificate: Annotated[
        Path | None, typer.Option(help="Certificate (open system; needed without --key-id).")
    ] = None,
    zda: Annotated[
        str | None,
        typer.Option(
            help="Provider id of the certificate: AT1 (A-Trust), AT2 (GlobalTrust), AT3"
            " (PrimeSign); AT100 only for a test token. Required for an open system (a closed"
            " system, --key-id, is AT0)."
        ),
    ] = None,
    key_id: Annotated[str | None, typer.Option(help="Closed system key id.")] = None,
    data_dir: DataDir = DEFAULT_DATA,
    as_json: JsonFlag = False,
) -> None:
    """Add a PKCS#11 token or HSM key as a signature unit (checked by a test signature)."""
    _check_unit_id(unit_id, as_json)
    try:
        pin = pin_file.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) else "it is not UTF-8 text"
        _fail(ConfigurationError(f"cannot read the PIN file {pin_file}: {why}"), as_json)
    config = _unit_config(
        as_json,
        id=unit_id,
        kind="pkcs11",
        zda="AT0" if key_id else (zda or "AT1"),  # (refused below without --zda)
        module=module,
        token_label=token_label,
        key_label=key_label,
        pin=pin,
        certificate_file=certificate,
        key_id=key_id,
    )
    if key_id is None and zda is None:  # it signed as R1-AT1 (A-Trust) whatever its card
        _fail(InvalidSale("--zda", "zda-required", _missing_zda()), as_json)
    with _unit_writer(data_dir, unit_id, as_json) as db:
        _add_unit(db, config, as_json)


def _add_unit(db: TillDB, config: UnitConfig, as_json: bool) -> None:
    """Open the unit (a test signature) and store it; the caller holds the writer lock."""
    from agent.signing import open_unit
    from agent.signing.registry import store_unit

    unit = open_unit(config)
    try:
        now = dt.datetime.now(dt.UTC).isoformat()
        with db.write_connection().transaction() as conn:
            store_unit(conn, config, unit, now)
    finally:
        unit.close()
    ident = unit.identity
    info = {"id": config.id, "kind": config.kind, "suite": ident.suite, "serial": ident.serial}
    if as_json:
        _emit(info, True)
    else:
        out.print(
            f"unit [bold]{config.id}[/bold] ({config.kind}) suite {ident.suite} "
            f"serial {ident.serial}"
        )


@unit_app.command("list")
def unit_list(data_dir: DataDir = DEFAULT_DATA, as_json: JsonFlag = False) -> None:
    """List the signature units stored in the till database."""
    with _reader(data_dir, as_json) as db, db.engine.connect() as conn:
        rows = conn.exec_driver_sql("SELECT id, kind, zda, serial FROM units ORDER BY id").all()
    units = [{"id": r[0], "kind": r[1], "suite": f"R1-{r[2]}", "serial": r[3]} for r in rows]
    if as_json:
        _emit(units, True)
        return
    table = Table("id", "kind", "suite", "serial")
    for u in units:
        table.add_row(u["id"], u["kind"], u["suite"], u["serial"])
    _print_table(table)


_SWITCH_SIGN_TIMEOUT_S = 3.0  # the test signature's deadline: the service's default one


@unit_app.command("switch")
def unit_switch(
    register: Annotated[str, typer.Argument(help="Kassen-ID.")],
    unit: Annotated[
        str, typer.Argument(help="Id of the stored unit to sign with from now on (`unit list`).")
    ],
    data_dir: DataDir = DEFAULT_DATA,
    as_json: JsonFlag = False,
) -> None:
    """Let a register go on with another signature unit: its unit failed for good (a
    stolen or broken card, a replaced certificate).

    The unit must be stored (unit add-pkcs11; unit create-software for development) and
    sign now: a test signature that verifies (else exit 4); it must be of the register's
    system type, open or closed (AT0), else exit 3. A register that signs (or signed) with
    a certified unit never switches to a development unit (AT100; exit 3,
    registered-to-development): its receipts would carry the fictitious test provider. A
    development register never switches to a certified unit (exit 3,
    development-to-registered): a register goes live with its own Startbeleg signed by the
    registered unit, so set up a new register on it (till-agent init NEW-ID --unit UNIT). It
    joins the register's units if it is new to them. The receipts from the next one on
    are signed with it and go on chaining to the earlier ones; the DEP export starts a
    new group for its certificate. What waited for the old unit waits for the new one:
    `till-agent outage recover REGISTER` (or the running service) issues the Sammelbeleg
    with it. It prints what is owed in FinanzOnline and by when: register the new unit,
    report the failure of the old one, check a receipt the new unit signed, then
    `till-agent checks done REGISTER unit --receipt N` (a development unit owes nothing;
    nor does a switch back to the unit that signed the latest receipt, before any receipt
    of the switch away: its open unit check is withdrawn; once that check is recorded, the
    unit it registered is the registered one: a switch away from it owes a unit check of
    its own, of the same receipt number, and one back to it owes nothing). A register that
    signs with the unit already: nothing changes (exit 0). A register closed by its
    Schlussbeleg: exit 4; an unknown register or unit: exit 6. It needs the data directory
    to itself: while `till-agent run` holds it, exit 5 (stop the service, switch, start it
    again).
    """
    from agent.clock import SystemClock
    from agent.issuing import Issuing
    from agent.signing.registry import UnitRegistry
    from agent.unit_switch import check_signs_now, check_switch, switch_unit

    locked = (
        ": a register switches its signature unit while the till service is stopped: stop it"
        " (systemctl stop till-agent), run this command again, then start the service; its"
        " recovery signs the Sammelbeleg with the new unit"
    )
    with _database(data_dir, as_json, create=False, when_locked=locked) as db:
        registry = UnitRegistry(simulate_dir=data_dir / "simulate")
        try:
            clock = SystemClock()
            # it stores a chain signing a process left unfinished: the old unit's receipt
            issuing = Issuing(
                db, registry, clock=clock, sign_timeout=_SWITCH_SIGN_TIMEOUT_S, thresholds=None
            )
            with db.read_connection() as conn:
                reg = check_switch(conn, register, unit)
                new = None if reg["active_unit"] == unit else registry.get(conn, unit)
            if new is not None:  # (the refusals that need no unit come first)
                check_signs_now(new, _SWITCH_SIGN_TIMEOUT_S)
            with issuing.transaction() as conn:
                done = switch_unit(conn, register, unit, clock.now())
        finally:
            registry.close()
    if as_json:
        due = None if done.due is None else done.due.isoformat()
        _emit(
            {
                "register": done.register_id,
                "old_unit": done.old_unit,
                "unit": done.new_unit,
                "switched": done.switched,
                "added": done.added,
                "from_number": done.from_number if done.switched else None,
                "waiting": done.waiting,
                "due": due,
                "owed": done.owed,
                "replaced": done.replaced,
                "withdrawn": done.withdrawn,
                "again": done.again,
            },
            True,
        )
        return
    for line in _switch_lines(done):
        out.print(line, highlight=False, markup=False)


def _switch_lines(done: UnitSwitch) -> list[str]:
    """What ``unit switch`` did and what the operator does next, as terminal lines."""
    register, old, new = done.register_id, done.old_unit, done.new_unit
    if not done.switched:
        return [f"register {register} signs with unit {new} already: nothing was changed"]
    joined = f"; {new} joined the register's units" if done.added else ""
    lines = [
        f"register {register} signs with unit {new} from receipt {done.from_number} on"
        f" (was {old}){joined}"
    ]
    if done.waiting:
        lines.append(
            f"what waited for {old} now waits for {new}: till-agent outage recover {register}"
            f" issues it (the Sammelbeleg signed by {new}); a running service does so itself"
        )
    if done.owed == "back":
        withdrawn = (
            ""
            if done.withdrawn is None
            else f"; the open unit check of the switch to {old} (receipt {done.from_number})"
            " is withdrawn"
        )
        lines.append(
            f"register {register} is back on its registered unit {new}, which signed its latest"
            f" receipt: nothing is owed in FinanzOnline{withdrawn}"
        )
        return lines
    if done.due is None:
        lines.append(
            f"unit {new} is a development unit (AT100), as the register's were: a development"
            " register needs no FinanzOnline step"
        )
        return lines
    if done.replaced is None:  # no certified receipt before the switch: nothing to report
        owed = f"register unit {new} in FinanzOnline"
    else:
        again = " again" if done.again else ""
        owed = (
            f"report the failure of unit {done.replaced} and register unit {new} in"
            f" FinanzOnline{again}"
        )
    lines.append(
        f"by {done.due}: {owed}, check a receipt {new} signed with the BMF Belegcheck app,"
        f" then: till-agent checks done {register} unit --receipt {done.from_number}"
        " --reference ..."
    )
    return lines


# -- registers and receipts -----------------------------------------------------------------


@app.command()
def init(
    register: Annotated[str, typer.Argument(help="Kassen-ID (as registered in FinanzOnline).")],
    unit: Annotated[list[str], typer.Option("--unit", help="Unit id; repeat for several.")],
    counter_bytes: Annotated[
        int,
        typer.Option(
            min=5, max=8, help="Turnover counter bytes (8 advised; the BMF Prüftool fails on 16)."
        ),
    ] = 8,
    timezone: Annotated[str, typer.Option(help="Time zone of receipt dates.")] = "Europe/Vienna",
    receipt_id_format: Annotated[
        str, typer.Option(help="Belegnummer format, e.g. '{number}' or 'B{number:06d}'.")
    ] = "{number}",
    data_dir: DataDir = DEFAULT_DATA,
    as_json: JsonFlag = False,
) -> None:
    """Initialize a register: new AES key, signed Startbeleg (refused if the unit cannot sign).

    Prints the AES key and its check value: both are needed for the FinanzOnline registration
    (on the development unit, which is never registered there: for the DEP verification).
    """
    from agent.at_rksv import aes_key_check_value
    from agent.receipts import RegisterSetup

    setup = RegisterSetup(
        register,
        unit,
        counter_bytes=counter_bytes,
        timezone=timezone,
        receipt_id_format=receipt_id_format,
    )
    key = base64.b64encode(setup.aes_key).decode()
    with _service(data_dir, as_json, create=True) as service:
        try:
            result = service.init_register(setup)
        except WaitsForUnit as exc:
            if _waiting_start_key(service, register) != key:
                raise  # nothing was kept: a later init makes a new key
            _kept_key(exc, key, as_json)  # the Startbeleg waits with this key
        owed = _owed_for(service, result)
        development = _by_development_unit(service, result)
    if as_json:
        _emit(
            {
                "start_receipt": result.model_dump(by_alias=True),
                "aes_key": key,
                "aes_key_check_value": aes_key_check_value(key),
            },
            True,
        )
        return
    _show_receipt(result, False)
    out.print(f"AES key ({_aes_key_use(development)}, keep it secret): {key}")
    out.print(f"AES key check value: {aes_key_check_value(key)}")
    if owed is not None:
        out.print(owed)


def _aes_key_use(development: bool) -> str:
    """What the new register's AES key is for, as ``init`` says it: a register whose
    Startbeleg a ``development`` unit signed (:func:`_by_development_unit`) is not
    registered in FinanzOnline, but the DEP verification needs the key."""
    if development:
        return (
            "a development register is not registered in FinanzOnline; the DEP verification"
            " needs it"
        )
    return "register it in FinanzOnline"


def _waiting_start_key(service: ReceiptService, register: str) -> str | None:
    """The AES key kept with the register's waiting Startbeleg, if one waits."""
    from agent.waiting import open_waiting

    with service.db.read_connection() as conn:
        row = open_waiting(conn, register, "start", None)
    return None if row is None or row["setup"] is None else json.loads(row["setup"])["aes_key"]


def _kept_key(exc: WaitsForUnit, key: str, as_json: bool) -> NoReturn:
    """The Startbeleg waits (its answer was lost) with this register's AES key: say the
    key now, the only time it is shown, and exit 4 as for any receipt that must wait."""
    from agent.at_rksv import aes_key_check_value

    check = aes_key_check_value(key)
    if as_json:
        body = {"error": type(exc).__name__, "message": str(exc)}
        print(json.dumps(body | {"aes_key": key, "aes_key_check_value": check}))
    else:
        err.print(f"[yellow]waits:[/yellow] {escape(str(exc))}", highlight=False)
        out.print(f"AES key (register it in FinanzOnline, keep it secret): {key}")
        out.print(f"AES key check value: {check}")
    raise typer.Exit(4)


@app.command()
def issue(
    source: Annotated[str, typer.Argument(help="Sale JSON file, or '-' for stdin.")] = "-",
    data_dir: DataDir = DEFAULT_DATA,
    as_json: JsonFlag = False,
) -> None:
    """Issue a receipt for one sale (the POS contract, see README). Exit 3 on a bad sale.

    A sale is at most 1 MiB, as in the spool and the local API.
    """
    from agent.spool import MAX_SALE_BYTES

    try:  # one byte more than a sale may have tells a larger one, without reading it all
        if source == "-":
            raw = sys.stdin.buffer.read(MAX_SALE_BYTES + 1)
        else:
            with Path(source).open("rb") as handle:
                raw = handle.read(MAX_SALE_BYTES + 1)
    except OSError as exc:
        _fail(InvalidSale("(document)", "readable", f"cannot read {source}: {exc}"), as_json)
    if len(raw) > MAX_SALE_BYTES:
        message = f"a sale is at most {MAX_SALE_BYTES} bytes (1 MiB)"
        _fail(InvalidSale("(document)", "max-size", message), as_json)
    with _service(data_dir, as_json) as service:
        result = service.issue(raw)
    _show_receipt(result, as_json)


# a choice of the command line: another word is a usage error (exit 2), listed by --help
SpecialKind = Literal["null", "monthly", "yearly", "closing"]


@app.command()
def special(
    register: Annotated[str, typer.Argument(help="Kassen-ID.")],
    kind: Annotated[
        SpecialKind,
        typer.Argument(
            help="Which receipt: null (Nullbeleg), monthly (Monatsbeleg), yearly"
            " (Jahresbeleg) or closing (Schlussbeleg)."
        ),
    ],
    yes: Annotated[
        bool,
        typer.Option(
            "--yes",
            help="Confirm a Schlussbeleg, or a Monats-/Jahresbeleg while a jump of the"
            " clock settles.",
        ),
    ] = False,
    failed_ok: Annotated[
        bool,
        typer.Option(
            "--failed-ok",
            help="closing only: if the unit does not sign, issue the Schlussbeleg with the"
            " failure marker (as the BMF notice of 18.11.2016 allows) and end an open"
            " outage with it, instead of waiting: for a unit down for good.",
        ),
    ] = False,
    data_dir: DataDir = DEFAULT_DATA,
    as_json: JsonFlag = False,
) -> None:
    """Issue a zero receipt: Nullbeleg, Monatsbeleg, Jahresbeleg or Schlussbeleg.

    A Monats-/Jahresbeleg closes the current month (register time zone), as the agent's
    closing job would: a month closed already is refused (exit 4). A Schlussbeleg (closing)
    decommissions the register for good, needs --yes and waits while an outage is open
    (unless --failed-ok, below).
    A Monats-/Jahresbeleg whose month the clock may have reached only through a forward
    jump that the service saw less than an hour ago is refused too (exit 4), unless --yes
    confirms the date. After a Jahres- or Schlussbeleg it says what the operator owes and by
    when. An unknown register is exit 6.

    While the register's outage is open the unit is asked first, through the signed
    Sammelbeleg that closes it (a command has no probe to tell it the unit is back): a
    Nullbeleg is that Sammelbeleg, as the local API's zero receipt; if the unit still
    fails, no Nullbeleg is issued (exit 4, as outage recover), a Monatsbeleg carries the
    failure marker and a Jahres- or Schlussbeleg waits (exit 4). Unsigned receipts of a
    chain service get their remedy first, as outage recover issues it (adopted receipts,
    signed Nullbeleg, Sammelbeleg, Storno, reissued sales).

    With --failed-ok (a unit down for good) a Schlussbeleg the unit does not sign carries
    the failure marker instead of waiting, and an open outage ends with it: its failure
    report is due in FinanzOnline within a week, as the decommissioning report is. It
    still waits for a Jahresbeleg that waits (that one must be signed) and for unsigned
    receipts to remedy (exit 4).
    """
    if kind == "closing" and not yes:
        _fail(
            InvalidSale("--yes", "confirm", "a Schlussbeleg ends the register: add --yes"), as_json
        )
    if failed_ok and kind != "closing":
        message = "--failed-ok is for a Schlussbeleg (closing) only"
        _fail(InvalidSale("--failed-ok", "closing-only", message), as_json)
    first: ReceiptResult | None = None
    with _service(data_dir, as_json) as service:
        try:
            if kind == "null":
                result = _zero_receipt(service, register)
            else:
                service.check_special(register, kind, confirmed=yes)
                first = _sammelbeleg_first(service, register, as_json)
                result = _after_first(service, register, kind, (yes, failed_ok), first, as_json)
        except InvalidSale as exc:
            if exc.rule != "register-unknown":
                raise
            # not found, as for receipts, export, outage, checks and backup (the API: 404)
            message = f"register {register!r} is not initialized in this till database"
            raise NotFound(message) from exc
        owed = _owed_for(service, result)
        ended = _ended_outage(service, result)
        waits = (kind == "null" or first is not None) and register in service.probe_targets()
    if as_json:
        body = result.model_dump(by_alias=True)
        body |= {} if first is None else {"issued_first": [_brief(first)]}
        _emit(body if ended is None else body | {"ended_outage": ended[0]}, True)
        return
    _show_receipt(result, as_json)
    if owed is not None:
        out.print(owed)
    if ended is not None:
        out.print(_decommissioned_line(*ended), highlight=False)
    if waits:  # the service's probe issues them; here, the command that does
        out.print(
            f"{register} still waits for its unit (a Sammelbeleg, unsigned receipts to"
            f" remedy or special receipts): till-agent outage recover {register} issues it"
            " once the unit answers"
        )


def _zero_receipt(service: ReceiptService, register: str) -> ReceiptResult:
    """The local API's zero receipt (:meth:`ReceiptService.zero_receipt`): the remedy of
    unsigned receipts first; while an outage is open, the signed Sammelbeleg that closes
    it, the unit asked whatever the breaker says. One the unit cannot sign is not issued
    (a lost answer keeps its number, unsigned): the attempt is a failed probe of the
    outage, as in ``outage recover``; the remedy's receipts before and after it are
    listed (stderr), with a new outage opened by a lost answer after it."""
    was_open = _open_outage(service, register)
    with service.db.read_connection() as conn:
        (last,) = conn.execute(_LAST, (register,)).fetchone()
    try:
        result = service.zero_receipt(register).result
    except WaitsForUnit as exc:
        if was_open is None or _open_outage(service, register) != was_open:
            raise
        service.record_probe(register, False, str(exc))
        raise WaitsForUnit(
            f"register {register} has an open outage, and a Nullbeleg now is the Sammelbeleg"
            f" that closes it: {exc}; the outage stays open (till-agent outage recover"
            f" {register} once the unit answers)"
        ) from exc
    with service.db.read_connection() as conn:
        rows = conn.execute(_AFTER, (register, last or 0, result.number)).fetchall()
    if rows:
        listed = ", ".join(f"#{n} {kind} {state}" for n, kind, state in rows)
        now = _open_outage(service, register)
        reopened = "" if now in {None, was_open} else f"; outage {now} is open"
        err.print(f"the remedy of unsigned receipts issued: {listed}{reopened}", highlight=False)
    return result


_LAST = "SELECT max(number) FROM receipts WHERE register_id = ?"
_AFTER = (
    "SELECT number, kind, signature_state FROM receipts WHERE register_id = ? AND number > ?"
    " AND number != ? ORDER BY number"
)


def _open_outage(service: ReceiptService, register: str) -> int | None:
    with service.db.read_connection() as conn:
        row = conn.execute(
            "SELECT max(id) FROM outages WHERE register_id = ? AND ended_at IS NULL", (register,)
        ).fetchone()
    return None if row[0] is None else int(row[0])


def _sammelbeleg_first(
    service: ReceiptService, register: str, as_json: bool
) -> ReceiptResult | None:
    """While ``register``'s outage is open, ask the unit through the Sammelbeleg it owes
    (the breaker would stamp the failure marker without asking): the receipt, or ``None``
    (no outage; or the unit still fails, recorded as a failed probe)."""
    if not service.outages.is_open(register):
        return None
    try:
        first = service.zero_receipt(register).result
    except WaitsForUnit as exc:
        service.record_probe(register, False, str(exc))
        return None
    if not as_json:
        out.print(
            f"the unit answers again: Sammelbeleg #{first.number} ({first.receipt_id})"
            f" closed the outage of {register} first",
            highlight=False,
        )
    return first


def _after_first(
    service: ReceiptService,
    register: str,
    kind: str,
    options: tuple[bool, bool],
    first: ReceiptResult | None,
    as_json: bool,
) -> ReceiptResult:
    """The special receipt asked for (``options``: --yes, --failed-ok); a refusal after a
    Sammelbeleg issued first names that one too in ``--json`` (the text said it already)."""
    yes, failed_ok = options
    try:
        return service.issue_special(register, kind, confirmed=yes, failed_ok=failed_ok)
    except TillAgentError as exc:
        if first is None or not as_json:
            raise
        _fail(exc, as_json, extra={"issued_first": [_brief(first)]})


def _ended_outage(
    service: ReceiptService, result: ReceiptResult
) -> tuple[dict[str, Any], str | None] | None:
    """The outage a Schlussbeleg with the failure marker ended (``outage list``'s JSON of
    it) and its report's due moment in the register's time zone (``None``: a development
    unit's owes none), or ``None``."""
    from agent.evidence import outage_json
    from agent.outage_watch import shown_due
    from agent.outages import load_outage

    if (result.kind, result.signature_state) != ("closing", "fallback"):
        return None
    with service.db.read_connection() as conn:
        row = conn.execute(
            "SELECT o.id, r.timezone FROM outages o JOIN registers r ON r.id = o.register_id"
            " WHERE o.register_id = ? AND o.last_number = ? AND o.ended_at IS NOT NULL"
            " AND o.sammelbeleg_number IS NULL",
            (result.register_id, result.number),
        ).fetchone()
        record = None if row is None else load_outage(conn, int(row[0]))
    if record is None:
        return None
    due = None if record.report_due is None else shown_due(record.report_due, row[1])
    return outage_json(record), due


def _decommissioned_line(outage: dict[str, Any], due: str | None) -> str:
    """What the operator owes for the outage a Schlussbeleg ended, by ``due`` (nothing
    more once its report is recorded)."""
    line = f"outage {outage['id']} ended with the register (no Sammelbeleg follows)"
    if due is None:
        return line + "; a development register owes no FinanzOnline report"
    if outage["report_reference"] is not None:
        return (
            f"{line}: its FinanzOnline report is recorded already"
            f" ({outage['report_reference']}); no end report is owed"
        )
    return (
        f"{line}: report the failure of unit {outage['unit']} in FinanzOnline by {due},"
        f" then: till-agent outage report {outage['id']} --reference ..."
    )


def _brief(result: ReceiptResult) -> dict[str, object]:
    return {
        "number": result.number,
        "receipt_id": result.receipt_id,
        "kind": result.kind,
        "state": result.signature_state,
    }


_OWED = {
    "start": "register the unit and the register in FinanzOnline, check this Startbeleg with"
    " the BMF Belegcheck app, then: till-agent checks done {register} start --reference ...",
    "yearly": "check this Jahresbeleg with the BMF Belegcheck app, then: till-agent checks"
    " done {register} yearly --year {year} --reference ...",
    "closing": "report the decommissioning of register {register} in FinanzOnline, then:"
    " till-agent checks done {register} closing --reference ...",
}


def _by_development_unit(service: ReceiptService, result: ReceiptResult) -> bool:
    """True when ``result`` was signed by a development unit (AT100, the checks' test:
    :func:`~agent.checks.development_units`), whatever the unit is called."""
    from agent.checks import development_units

    with service.db.read_connection() as conn:
        row = conn.execute(
            "SELECT unit_id FROM receipts WHERE register_id = ? AND number = ?",
            (result.register_id, result.number),
        ).fetchone()
        return row is not None and row[0] in development_units(conn)


def _owed_for(service: ReceiptService, result: ReceiptResult) -> str | None:
    """What the operator owes for a Start-, Jahres- or Schlussbeleg just issued, and by
    when (the obligation issuing recorded), as a line for the terminal."""
    from agent.checks import load_checks

    if result.kind not in _OWED:
        return None
    if result.signature_state != "unsigned" and _by_development_unit(service, result):
        return (
            f"register {result.register_id} signs with a development unit (AT100): a"
            " development register needs no FinanzOnline step (no registration, Belegcheck"
            " or report)"
        )
    with service.db.read_connection() as conn:
        records = load_checks(conn, result.register_id)
    record = next((r for r in records if r.receipt_number == result.number), None)
    if record is None:  # not signed: nothing is owed for it (it waits)
        return None
    what = _OWED[result.kind].format(register=result.register_id, year=record.year)
    return f"by {record.due_date}: {what}"


@receipts_app.command("list")
def receipts_list(
    register: Annotated[str, typer.Option(help="Kassen-ID.")],
    limit: Annotated[int, typer.Option(min=1, max=10000)] = 20,
    data_dir: DataDir = DEFAULT_DATA,
    as_json: JsonFlag = False,
) -> None:
    """List the latest receipts of a register (an unsigned one: how it was remedied)."""
    from agent.receipt_view import resolutions

    query = (
        "SELECT number, receipt_id, kind, signature_state, issued_at, amount_normal"
        " + amount_reduced1 + amount_reduced2 + amount_zero + amount_special FROM receipts"
        " WHERE register_id = ? ORDER BY number DESC LIMIT ?"
    )
    with _reader(data_dir, as_json) as db, db.read_connection() as conn:
        rows = conn.execute(query, (register, limit)).fetchall()
        if not rows:
            _require_register(conn, register, as_json)
        unsigned = [r[0] for r in rows if r[3] == "unsigned"]
        resolved = resolutions(conn, register, unsigned)
    items = []
    for r in rows:
        item = dict(
            zip(
                ("number", "receipt_id", "kind", "signature_state", "issued_at", "total_cents"),
                r,
                strict=True,
            )
        )
        how = resolved.get(r[0])
        none = {"resolution": None, "replaced_by": None, "voided_by": None}
        items.append(item | (none if how is None else how.fields()))
    if as_json:
        _emit(items, True)
        return
    table = Table("number", "Belegnummer", "kind", "signature", "issued at", "total", "resolution")
    for i in items:
        table.add_row(
            str(i["number"]),
            i["receipt_id"],
            i["kind"],
            i["signature_state"],
            i["issued_at"],
            f"{i['total_cents'] / 100:.2f}",
            _resolution_text(i["resolution"], i["replaced_by"], i["voided_by"]),
        )
    _print_table(table)


@receipts_app.command("show")
def receipts_show(
    register: Annotated[str, typer.Argument(help="Kassen-ID.")],
    number: ReceiptNumber,
    png: Annotated[
        Path | None, typer.Option("--png", help="Also write a preview image (PNG) here.")
    ] = None,
    data_dir: DataDir = DEFAULT_DATA,
    as_json: JsonFlag = False,
) -> None:
    """Show one receipt: text lines, QR and OCR codes, JWS (an unsigned one: how it was
    remedied); --png renders a preview."""
    from agent.receipt_records import known_receipt
    from agent.receipt_view import current_result

    if png is not None:
        _refuse_output(png, "--png", data_dir, as_json)
    with _reader(data_dir, as_json) as db, db.read_connection() as conn:
        _require_register(conn, register, as_json)  # not "has no receipt 1"
        try:
            row = known_receipt(conn, register, number)
        except NotFound as exc:
            _fail(exc, as_json)
        result = current_result(conn, row)
    if png is not None:
        from agent.cli_print import configured_header
        from agent.durable import replace_file
        from agent.printing import render_png

        try:
            replace_file(png, render_png(result, header=configured_header()))
        except OSError as exc:
            _fail_to_write(png, exc, as_json)
    _show_receipt(result, as_json)


# -- export and verification ----------------------------------------------------------------


def _fail_to_write(output: Path, exc: OSError, as_json: bool) -> NoReturn:
    """An export that could not be written (its directory, its name, the disk): exit 2
    naming the file (or directory) the user asked for, and the directory on its way that
    failed, not the temporary file."""
    detail = exc.strerror or str(exc)
    if exc.filename is not None and Path(exc.filename) in output.parents:
        # mkdir met a file where a directory should be: "File exists" would mislead
        why = "not a directory" if isinstance(exc, FileExistsError) else detail
        detail = f"{exc.filename}: {why}"
    elif isinstance(exc, FileExistsError) and exc.filename == str(output):
        detail = "not a directory"  # the output directory (outage export's) is a file
    _fail(ConfigurationError(f"cannot write {output}: {detail}"), as_json)


def _refuse_non_regular(output: Path, as_json: bool, *also: Path) -> None:
    """An output that exists and is no regular file (a device, a fifo, a socket, a
    directory) is refused before anything is written: renamed over, /dev/null would become
    a file holding the export. ``also``: names the command writes on the way (exit 2
    naming them too)."""
    from agent.durable import refuse_non_regular

    for path in (output, *also):
        try:
            refuse_non_regular(path)
        except OSError as exc:
            if path == output:
                _fail_to_write(output, exc, as_json)
            detail = f"{path}: {exc.strerror or exc}"
            _fail(ConfigurationError(f"cannot write {output}: {detail}"), as_json)


# the files of a data directory an output must never replace, and what each is
_TILL_FILES = {
    "": "the till database",
    "-wal": "the till database's write-ahead log",
    "-shm": "the till database's shared memory",
    "-journal": "the till database's rollback journal",
}


def _refuse_output(output: Path, option: str, data_dir: Path, as_json: bool, *also: Path) -> None:
    """An output the till cannot lose is refused before anything is written, exit 2 naming
    ``option``: the till database (its -wal, -shm, -journal and lock file too), anything in
    the data directory's keys/, or an existing file its mode keeps from us (a quarterly DEP
    backup is 0444). Symbolic links are followed, and a hard link is the file it names.
    ``also``: names the command writes on the way. Then :func:`_refuse_non_regular`."""
    for path in (output, *also):
        why = _protected(path, data_dir)
        if why is not None:
            _fail(ConfigurationError(f"{option}: cannot write {path}: {why}"), as_json)
    _refuse_non_regular(output, as_json, *also)


def _protected(path: Path, data_dir: Path) -> str | None:
    """Why ``path`` must not be written over (see :func:`_refuse_output`), or None."""
    from storage.db import DB_FILE, LOCK_FILE

    try:
        found: os.stat_result | None = os.stat(path)
    except OSError:
        found = None  # a new name: where it would be made is what counts
    target = _resolved(path)
    till = {data_dir / f"{DB_FILE}{s}": what for s, what in _TILL_FILES.items()}
    till[data_dir / LOCK_FILE] = "the lock file of the till's data directory"
    for name, what in till.items():
        if target == _resolved(name) or _same_file(found, name):
            return f"it is {what} ({name})"
    keys = data_dir / "keys"
    if target.is_relative_to(_resolved(keys)) or any(_same_file(found, k) for k in _in(keys)):
        return f"it is in the till's key directory {keys}"
    if found is not None and not _writable_by_mode(found):
        return f"it is read-only (mode {stat.S_IMODE(found.st_mode):04o}): it is kept as it is"
    return None


def _resolved(path: Path) -> Path:
    try:
        return path.resolve()
    except (OSError, RuntimeError):  # a loop of links: nothing can be written there anyway
        return Path(os.path.abspath(path))


def _same_file(found: os.stat_result | None, other: Path) -> bool:
    try:
        return found is not None and os.path.samestat(found, os.stat(other))
    except OSError:
        return False


def _in(directory: Path) -> list[Path]:
    try:
        return [Path(entry.path) for entry in os.scandir(directory)]
    except OSError:
        return []


def _writable_by_mode(found: os.stat_result) -> bool:
    """Whether the mode bits let this process write the file: the owner's, the group's or
    the others' write bit, whichever is ours (root, whom permissions do not stop: any)."""
    mode, uid = found.st_mode, os.geteuid()
    if uid == 0:
        return bool(mode & 0o222)
    if found.st_uid == uid:
        return bool(mode & stat.S_IWUSR)
    if found.st_gid in {os.getegid(), *os.getgroups()}:
        return bool(mode & stat.S_IWGRP)
    return bool(mode & stat.S_IWOTH)


@export_app.command("dep")
def export_dep_cmd(
    register: Annotated[str, typer.Option(help="Kassen-ID.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="DEP file to write.")],
    start: Annotated[
        dt.datetime | None,
        typer.Option(
            "--from",
            formats=["%Y-%m-%d"],
            metavar="YYYY-MM-DD",
            help="First day to export (inclusive), a date as 2026-01-31. Receipts count by"
            " the date printed on them: the local date in the register's time zone"
            " (init --timezone, default Europe/Vienna).",
        ),
    ] = None,
    end: Annotated[
        dt.datetime | None,
        typer.Option(
            "--to",
            formats=["%Y-%m-%d"],
            metavar="YYYY-MM-DD",
            help="Last day to export (inclusive), in the register's time zone.",
        ),
    ] = None,
    data_dir: DataDir = DEFAULT_DATA,
    as_json: JsonFlag = False,
) -> None:
    """Export the DEP7 (Datenerfassungsprotokoll) of a register; streams, bounded memory."""
    from agent.durable import fsync_directory
    from agent.export import count_receipts, export_dep

    tmp = output.with_name(output.name + ".partial")
    first, last = start and start.date(), end and end.date()
    if first is not None and last is not None and first > last:
        raise typer.BadParameter(
            f"the range is empty: --from {first} is after --to {last}", param_hint="'--from'"
        )
    _refuse_output(output, "--output", data_dir, as_json, tmp)
    with _reader(data_dir, as_json) as db:
        total = count_receipts(db, register, start=first, end=last)  # NotFound: no file yet
        # receipts before and after the range (dates never decrease along the chain)
        before = after = 0
        if first is not None and first > dt.date.min:
            before = count_receipts(db, register, end=first - dt.timedelta(days=1))
        if last is not None and last < dt.date.max:
            after = count_receipts(db, register, start=last + dt.timedelta(days=1))
        try:
            output.parent.mkdir(parents=True, exist_ok=True)
            tmp.unlink(missing_ok=True)  # a partial export left by a crash (or a link)
            with (
                tmp.open("x", encoding="utf-8") as handle,  # never through a link
                _progress(as_json) as progress,
            ):
                task = progress.add_task("exporting", total=total)
                count = export_dep(
                    db,
                    register,
                    handle,
                    start=first,
                    end=last,
                    on_receipt=lambda: progress.advance(task),
                )
                handle.flush()
                os.fsync(handle.fileno())  # on disk before it takes the name
            tmp.replace(output)
            fsync_directory(output.parent)
        except BaseException as exc:
            with suppress(OSError):  # (there may be no such directory)
                tmp.unlink()  # a half-written export is never left behind
            if isinstance(exc, OSError):
                _fail_to_write(output, exc, as_json)
            raise
    if count == 0:  # a range that missed (a typo, the wrong year) is not a quiet period
        dated = f" dated {first or '...'} to {last or '...'}" if first or last else ""
        err.print(
            f"[yellow]warning:[/yellow] the export holds no receipt: {register} has none{dated}",
            highlight=False,
        )
    elif before or after:  # a part: say so, and how to verify it
        what = (
            f"a part of the DEP of {register} (receipts dated {first or '...'} to {last or '...'})"
        )
        if before:
            how = (
                f"it begins after {before} earlier receipts, not with the Startbeleg: verify"
                f" it with till-agent verify --partial {output} CONTAINER"
            )
        else:
            how = f"it starts with the Startbeleg: till-agent verify {output} CONTAINER checks it"
        err.print(f"[yellow]note:[/yellow] {output} is {what}; {how}", highlight=False)
    if as_json:
        _emit({"file": str(output), "receipts": count}, True)
    else:
        out.print(f"{count} receipts written to {output}")


@export_app.command("crypto-container")
def export_container_cmd(
    register: Annotated[str, typer.Option(help="Kassen-ID.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="File to write.")],
    data_dir: DataDir = DEFAULT_DATA,
    as_json: JsonFlag = False,
) -> None:
    """Write cryptographicMaterialContainer.json (AES key + certificates): keep it secret."""
    from agent.durable import replace_file
    from agent.export import export_container

    _refuse_output(output, "--output", data_dir, as_json)
    with _reader(data_dir, as_json) as db:
        text = export_container(db, register)
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        # it holds the AES key: private from its first byte, and never left half written
        replace_file(output, text.encode("utf-8"), mode=0o600)
    except OSError as exc:
        _fail_to_write(output, exc, as_json)
    if as_json:
        _emit({"file": str(output)}, True)
    else:
        out.print(f"crypto material container written to {output}")


@app.command()
def verify(
    dep: Annotated[Path, typer.Argument(help="DEP7 export (dep-export.json).")],
    container: Annotated[Path, typer.Argument(help="cryptographicMaterialContainer.json.")],
    partial: Annotated[
        bool,
        typer.Option(
            "--partial",
            help="The DEP may be a part (export dep --from): a first receipt that is not the"
            " Startbeleg is taken as given (its chaining value and turnover counter);"
            " every receipt after it is checked.",
        ),
    ] = False,
    as_json: JsonFlag = False,
) -> None:
    """Verify a DEP export: signatures, chain, counter, numbering, dates, outage rules.

    Exit 0 if valid, 1 if not; every finding names the receipt and the rule. A file that
    cannot be read (missing, a directory) is a finding naming it, exit 1. A container
    without an AES key leaves the turnover counter unchecked: a note says so (still exit 0).
    Receipts with the failure marker (zero receipts among them) and a DEP that ends inside
    an outage are no finding either: notes say so, --json counts them.
    A DEP that does not start with the Startbeleg is invalid unless --partial is given.
    """
    from agent.at_rksv.verify import verify_files

    try:
        size: int | None = dep.stat().st_size
    except OSError:  # verify_files says what is wrong with it
        size = None
    with _progress(as_json) as progress:
        task = progress.add_task("verifying", total=size)
        report = verify_files(
            dep, container, on_read=lambda n: progress.advance(task, n), partial=partial
        )
    if as_json:
        findings = [
            {"receipt": f.receipt, "rule": f.rule, "message": f.message} for f in report.findings
        ]
        body: dict[str, object] = {"ok": report.ok, "receipts": report.receipts}
        body |= {"counter_checked": report.counter_checked, "partial": report.partial}
        body["notes"] = report.notes
        body |= {  # no findings, but counted: rksv.md 5
            "fallback_receipts": report.fallback_receipts,
            "fallback_zero_receipts": report.fallback_zero_receipts,
            "outages": report.outages,
            "ends_in_outage": report.open_outage_from is not None,
            "open_outage_from": report.open_outage_from,
        }
        _emit({**body, "findings": findings}, True)
    else:
        for finding in report.findings:
            out.print(
                f"[red]{finding.rule}[/red] at {finding.receipt or '(DEP)'}: {finding.message}",
                highlight=False,
                soft_wrap=True,  # one finding, one line (a terminal wraps it by itself)
            )
        for note in report.notes:  # what was not checked: no finding, but not to be missed
            out.print(f"[yellow]note:[/yellow] {note}", highlight=False, soft_wrap=True)
        verdict = "[green]valid[/green]" if report.ok else "[red]INVALID[/red]"
        limit = ""
        if report.receipts and not report.counter_checked:
            limit = " (turnover counter not checked)"
        out.print(f"{verdict}: {report.receipts} receipts checked{limit}")
    raise typer.Exit(0 if report.ok else 1)


# -- simulation and benchmarks --------------------------------------------------------------


@simulate_app.command("scenario")
def simulate_scenario(
    scenario: Annotated[Path, typer.Argument(help="CashBoxSimulation JSON file.")],
    out_dir: Annotated[Path, typer.Option("--out", help="Directory for the results.")],
    closed: Annotated[bool, typer.Option(help="Closed system (R1-AT0, key ids).")] = False,
    counter_bytes: Annotated[int, typer.Option(min=5, max=8)] = 8,
    as_json: JsonFlag = False,
) -> None:
    """Replay an official scenario on a fresh temporary register; write DEP + container."""
    from agent.simulate import run_scenario

    try:
        result = run_scenario(scenario, out_dir, closed=closed, counter_bytes=counter_bytes)
    except TillAgentError as exc:
        _fail(exc, as_json)
    info = {
        "receipts": result.receipts,
        "fallback": result.fallback,
        "dep": str(result.dep_file),
        "container": str(result.container_file),
    }
    if as_json:
        _emit(info, True)
    else:
        out.print(
            f"{result.receipts} receipts ({result.fallback} fallback) -> "
            f"{result.dep_file}, {result.container_file}"
        )


@bench_app.command("receipts")
def bench_receipts_cmd(
    n: Annotated[int, typer.Option("--n", min=10, help="Receipts per path.")] = 5000,
    clients: Annotated[
        int,
        typer.Option(
            "--clients", min=1, max=64, help="Concurrent POS threads (agent; >1 uses group commit)."
        ),
    ] = 1,
    directory: Annotated[
        Path | None,
        typer.Option(
            "--dir",
            help="Write the bench databases here (e.g. on the till's data disk); "
            "default a temporary directory.",
            exists=True,
            file_okay=False,
            writable=True,
        ),
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Full receipt path vs. a raw baseline (ECDSA sign + one fsync'd SQLite insert).

    Also the floor: what no RKSV receipt can skip, in the tightest Python (floor_ratio).
    """
    from agent.bench import bench_receipts

    with _progress(as_json) as progress:
        task = progress.add_task("issuing receipts", total=n)
        result = bench_receipts(
            n,
            clients=clients,
            progress=lambda k: progress.advance(task, k),
            directory=directory,
        )
    _print_metrics(result.as_dict(), as_json)


@bench_app.command("outage")
def bench_outage_cmd(
    n: Annotated[int, typer.Option("--n", min=10, help="Receipts with the breaker open.")] = 1000,
    deadline: Annotated[
        float, typer.Option("--deadline", min=0.1, help="Signing deadline, seconds.")
    ] = 3.0,
    probe_interval: Annotated[
        float, typer.Option("--probe-interval", min=0.1, help="Probe interval, seconds.")
    ] = 1.0,
    as_json: JsonFlag = False,
) -> None:
    """An outage, measured: first receipt, receipts with the breaker open, recovery."""
    from agent.bench import bench_outage

    with _progress(as_json) as progress:
        task = progress.add_task("outage", total=n)
        result = bench_outage(
            n, deadline, probe_interval, progress=lambda k: progress.advance(task, k)
        )
    _print_metrics(result.as_dict(), as_json)


@app.command()
def run(
    config_file: Annotated[
        Path | None,
        typer.Option(
            "--config",
            envvar="TILL_AGENT_CONFIG",
            help="TOML configuration (default: /etc/till-agent/config.toml if it exists,"
            " else built-in defaults: development unit, file printer).",
        ),
    ] = None,
) -> None:
    """Run the till service: takes sales from the spool and the local API, issues and prints
    receipts, runs the probe and the timers."""
    import logging

    from agent.config import load_config
    from agent.service import TillService

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)
    # watchdog logs an ERROR when its inotify thread is stopped under a pending event
    logging.getLogger("watchdog.observers.inotify").addFilter(
        lambda record: "thread is inactive" not in record.getMessage()
    )
    try:
        config = load_config(config_file)
        TillService(config).run_until_signal()
    except TillAgentError as exc:
        _fail(exc)
