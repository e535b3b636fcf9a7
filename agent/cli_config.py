"""``till-agent config check`` and ``config show``: validate and print the configuration.

Both exit 0 on a valid configuration and 3 on an invalid one, with a message naming the
key, the rule and where the value came from. ``config check`` exits 5 when the data
directory keeps `run` from opening its database (a restore that did not finish, or a
database missing where a till lived), under its own heading. Unit PINs are never
printed, and the API token lives only in its own file (``api.token_file``), which is
never read here.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
from rich.markup import escape

from agent.cli_base import err, out
from agent.config import CONFIG_ENV, ENV_PREFIX, AgentConfig, find_config_file, load_config
from agent.errors import ConfigurationError, InvalidSale, StorageError, UnitUnavailable
from agent.signing.config import DEV_ZDA, ZDA_OPTIONAL_KINDS, UnitConfig

if TYPE_CHECKING:
    from cryptography import x509

__all__ = ["ConfigOption", "config_app"]

INVALID = 3
STORAGE = 5  # the data directory refuses `run`, whatever the configuration says

config_app = typer.Typer(help="Check or show the configuration (TOML file + environment).")

ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        envvar=CONFIG_ENV,
        help="Configuration file (default: /etc/till-agent/config.toml if it exists).",
    ),
]


def _load(path: Path | None, as_json: bool = False) -> AgentConfig:
    try:
        return load_config(path)
    except ConfigurationError as exc:
        _invalid(exc, as_json)


def _invalid(exc: ConfigurationError, as_json: bool) -> NoReturn:
    if as_json:
        print(json.dumps({"error": type(exc).__name__, "message": str(exc)}, ensure_ascii=False))
    else:
        # escape: "[rule]" in the message would otherwise be eaten as Rich markup
        err.print(f"[red]invalid configuration:[/red]\n{escape(str(exc))}", highlight=False)
    raise typer.Exit(INVALID)


def _refused_data_dir(refused: StorageError, problems: list[str], as_json: bool) -> NoReturn:
    """A data directory `run` would not open (a pending restore, a lost database): exit 5,
    as every command that meets it, under its own heading after any configuration
    problems (``problems``; with --json, in ``configuration``)."""
    if as_json:
        body = {"error": type(refused).__name__, "message": str(refused)}
        if problems:
            body["configuration"] = "\n".join(problems)
        print(json.dumps(body, ensure_ascii=False))
    else:
        if problems:
            shown = "\n".join(problems)
            err.print(f"[red]invalid configuration:[/red]\n{escape(shown)}", highlight=False)
        err.print(f"[red]data directory:[/red]\n{escape(str(refused))}", highlight=False)
    raise typer.Exit(STORAGE)


def _origin(path: Path | None) -> str:
    """Where the configuration came from: the file (or defaults) and environment overrides."""
    file = find_config_file(path)
    names = sorted(n for n in os.environ if n.startswith(ENV_PREFIX) and n != CONFIG_ENV)
    origin = f"file {file}" if file else "built-in defaults (no file)"
    return origin + (f"; environment: {', '.join(names)}" if names else "")


@config_app.command("check")
def config_check(
    config: ConfigOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")] = False,
) -> None:
    """Validate the configuration; exit 0 if it is usable, 3 (with the reasons) if not;
    5 if the data directory keeps `run` from opening its database (a restore that did not
    finish, a database missing where a till lived), under "data directory:".

    Beyond the values, it opens what `run` opens at start without side effects: the key
    and certificate files of software units, the certificate and module file of PKCS#11
    units, the token and certificate file of chain units, and the optional packages a
    unit or printer kind needs; those of the
    configured units and of the units every register that may still sign (the configured
    one, and every other not closed by its Schlussbeleg) has in the till database.
    A PKCS#11 unit's certificate is compared with the public key its token shows without
    a login (else it says "not checked" and why). It never logs in to a token (a wrong PIN
    could lock it) and never connects to a printer or a service.
    """
    from storage.db import data_dir_problem

    loaded = _load(config, as_json)
    notes: list[str] = []
    problems = check_resources(loaded, notes)
    refused = data_dir_problem(loaded.data_dir)  # exit 5, as every command that meets it
    if refused is not None:
        _refused_data_dir(refused, problems, as_json)
    if problems:
        _invalid(ConfigurationError("\n".join(problems)), as_json)
    for note in notes:  # stderr, as the warnings
        err.print(f"[cyan]note:[/cyan] {escape(note)}", highlight=False)
    warnings = (
        loaded.printer.header_warning,
        loaded.backup.same_disk_warning(loaded.data_dir),
        _kept_register_warning(loaded),
        loaded.hub.unbuilt_warning,
    )
    for warning in filter(None, warnings):  # stderr: --json output stays one object
        err.print(f"[yellow]warning:[/yellow] {escape(warning)}", highlight=False)
    if as_json:
        print(json.dumps({"ok": True, "source": _origin(config)}, ensure_ascii=False))
        return
    out.print(f"[green]configuration OK[/green]: {escape(_origin(config))}", highlight=False)


@config_app.command("show")
def config_show(
    config: ConfigOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")] = False,
) -> None:
    """Print the effective configuration (defaults, file and environment merged) as TOML.

    Paths are shown resolved; secrets (unit PINs) are shown as <hidden>.
    """
    data = _load(config, as_json).public_dict()
    if as_json:
        print(json.dumps(data, ensure_ascii=False, indent=2))
        return
    print(f"# {_origin(config)}")
    print(to_toml(data), end="")


def check_resources(config: AgentConfig, notes: list[str] | None = None) -> list[str]:
    """What `run` would refuse at start beyond the values: one line per problem; what could
    not be checked is added to ``notes``. The data directory's own refusals (a pending
    restore, a lost database) are storage's: storage.db.data_dir_problem."""
    notes = [] if notes is None else notes
    problems = []
    if config.data_dir.exists() and not config.data_dir.is_dir():
        problems.append(f"data_dir: {config.data_dir} is not a directory")
    for unit in config.units:
        found: list[str] = []
        problems += [f"units.{unit.id}: {problem}" for problem in _unit_problems(unit, found)]
        found += filter(None, [_test_provider_note(unit)])
        notes += [f"units.{unit.id}: {note}" for note in found]
    held = _held_register(config)
    problems += _new_register_problems(config, held)
    if held is not None:
        problems += _stored_zda_problems(config, held)
        problems += _register_unit_problems(config, held)
        problems += _stored_unit_problems(config, held, notes)
    if config.printer.kind in ("usb", "serial"):
        from agent.printing.config import open_printer

        try:
            open_printer(config.printer)  # checks the extra; the device opens on a job
        except ConfigurationError as exc:
            problems.append(f"printer.kind: {exc}")
    return problems


@dataclass(frozen=True)
class _Held:
    """What the data directory holds of the configured register: its units in their
    order (None: no such register, nor its waiting Startbeleg); the units of every
    register that may still sign (``active``: not closed, or its Startbeleg waits), by
    register id; and the stored configurations of all these units, files placed in the
    data directory."""

    unit_ids: list[str] | None
    units: list[UnitConfig]
    active: dict[str, list[str]] = field(default_factory=dict)
    zdas: dict[str, str] = field(default_factory=dict)  # every stored unit's provider
    signing: dict[str, str] = field(default_factory=dict)  # the unit each of those signs with


def _new_register_problems(config: AgentConfig, held: _Held | None) -> list[str]:
    """What `run` refuses when it creates the configured register (registers.check_setup:
    e.g. a counter of more than 8 bytes, which still loads for an existing register): only
    when the data directory does not hold that register, or the check cannot tell."""
    from agent.registers import RegisterSetup, check_setup

    reg = config.register_
    if held is not None and held.unit_ids is not None:
        return []
    setup = RegisterSetup(
        reg.id,
        [],  # the units are checked above; check_setup does not look at them
        counter_bytes=reg.counter_bytes,
        timezone=reg.timezone,
        receipt_id_format=reg.receipt_id_format,
    )
    try:
        check_setup(setup)
    except InvalidSale as exc:
        return [
            f"register.{exc.field}: {exc.message} [{exc.rule}] (register {reg.id} is not in"
            f" {config.data_dir}, or its database cannot be read: `run` would create it so)"
        ]
    return []


def _stored_zda_problems(config: AgentConfig, held: _Held) -> list[str]:
    """Each configured unit the till database stores under another provider: `run`
    refuses to start (registry.refuse_other_zda), the stored unit is never changed."""
    from agent.signing.config import other_zda

    return [
        other_zda(unit, stored)
        for unit in config.units
        if (stored := held.zdas.get(unit.id)) is not None and stored != unit.zda
    ]


def _register_unit_problems(config: AgentConfig, held: _Held) -> list[str]:
    """Every register that may still sign and signs with the development unit now under
    ``development_unit = false`` (`run` refuses to start), and the configured register,
    when it exists, on units the configured ones lack (`run` logs an ERROR and it keeps
    signing with its own)."""
    from agent.signing.config import DEV_UNIT
    from agent.signing.registry import development_register, other_units

    register_id = config.register_.id
    configured = [unit.id for unit in config.units]
    problems = []
    if not config.development_unit:
        problems += [  # the unit it signs with now, not one it switched away from
            f"development_unit: {development_register(r, DEV_UNIT, configured, named=register_id)}"
            for r, unit in held.signing.items()
            if unit == DEV_UNIT
        ]
    if held.unit_ids is not None:
        problem = other_units(register_id, held.unit_ids, configured, held.active)
        problems += [] if problem is None else [f"units: {problem}"]
    return problems


def _stored_unit_problems(config: AgentConfig, held: _Held, notes: list[str]) -> list[str]:
    """The files of the stored units that `run` opens them from: the configured
    register's and those of every register that may still sign (a configured unit's are
    checked as configured: `run` stores its configuration anew)."""
    configured = {unit.id for unit in config.units}
    signers: dict[str, list[str]] = {}
    for register_id, units in {config.register_.id: held.unit_ids or [], **held.active}.items():
        for unit_id in units:
            signers.setdefault(unit_id, []).append(register_id)
    problems = []
    for unit in held.units:
        if unit.id in configured:
            continue
        names = sorted(set(signers.get(unit.id, [])))
        where = (
            f"register{'s' * (len(names) > 1)} {', '.join(names)}: unit {unit.id}"
            " (stored in the till database)"
        )
        found: list[str] = []
        problems += [f"{where}: {problem}" for problem in _unit_problems(unit, found)]
        notes += [f"{where}: {note}" for note in found]
    return problems


def _kept_register_warning(config: AgentConfig) -> str | None:
    """For an existing register: a configured counter_bytes that a new register would not
    get is ignored there (the register keeps the size it was created with)."""
    from agent.at_rksv.counter import ISSUED_COUNTER_BYTES_MAX

    reg = config.register_
    if reg.counter_bytes <= ISSUED_COUNTER_BYTES_MAX:
        return None
    held = _held_register(config)
    if held is None or held.unit_ids is None:
        return None
    return (
        f"register.counter_bytes = {reg.counter_bytes} is ignored: register {reg.id} exists"
        f" in {config.data_dir} and keeps the counter size it was created with (a new"
        f" register would be refused: 5 to {ISSUED_COUNTER_BYTES_MAX} bytes)"
    )


def _held_register(config: AgentConfig) -> _Held | None:
    """What the data directory holds of the configured register (or its waiting
    Startbeleg) and of the other registers that may still sign; None when its database
    cannot be read (no permission, damaged)."""
    from agent.errors import NoDatabase, StorageError
    from agent.signing.registry import (
        active_register_units,
        register_unit_ids,
        signing_units,
        stored_config,
    )
    from storage.db import open_till_db

    try:
        db = open_till_db(config.data_dir, writer=False, create=False)  # a check changes nothing
    except NoDatabase:
        return _Held(None, [])
    except StorageError:
        return None
    try:
        with db.read_connection() as conn:
            ids = register_unit_ids(conn, config.register_.id)
            active = active_register_units(conn)
            every = [*(ids or []), *(u for units in active.values() for u in units)]
            units = [stored_config(conn, unit_id) for unit_id in dict.fromkeys(every)]
            zdas = {str(i): str(z) for i, z in conn.execute("SELECT id, zda FROM units")}
            signing = signing_units(conn)
    finally:
        db.close()
    return _Held(ids, units, active, zdas, signing)


def _test_provider_note(unit: UnitConfig) -> str | None:
    """What a unit that is not the development software unit but gives zda = AT100 (a
    test token) signs: development receipts; None for any other unit."""
    if unit.kind in ZDA_OPTIONAL_KINDS or unit.zda != DEV_ZDA:
        return None
    return (
        f"zda = {DEV_ZDA!r}: a test {unit.kind} unit; it signs as R1-{DEV_ZDA}, the"
        " fictitious test provider, so a register on it is a development one (it owes no"
        " FinanzOnline step, and no registered till may use it)"
    )


def _unit_problems(unit: UnitConfig, notes: list[str]) -> list[str]:
    from agent.signing import open_unit
    from agent.signing.software import load_certificate

    if unit.kind == "software":
        try:
            open_unit(unit).close()  # reads the key and the certificate, nothing more
        except ConfigurationError as exc:
            return [str(exc)]
        return []
    if unit.kind == "chain":  # the service is only reachable at run time, not its files
        return _chain_problems(unit)
    problems = []
    try:
        import agent.signing.pkcs11  # noqa: F401 - only: is the extra installed?
    except ImportError:
        problems.append("PKCS#11 units need: pip install 'till-agent[pkcs11]'")
    module = unit.module
    if module is not None and module.is_absolute() and not module.is_file():
        problems.append(f"module: the PKCS#11 module {module} does not exist")
    if unit.certificate_file is not None and unit.zda != "AT0":
        try:
            certificate = load_certificate(unit.certificate_file)
        except ConfigurationError as exc:
            problems.append(str(exc))
        else:
            if not problems:  # the extra and the module are there
                problems += _token_key_problems(unit, certificate, notes)
    return problems


def _token_key_problems(
    unit: UnitConfig, certificate: x509.Certificate, notes: list[str]
) -> list[str]:
    """Whether the certificate is for the key on the token, as far as the token shows its
    public key without a login (`run` refuses the unit otherwise, exit 2); what cannot be
    compared so is a note that says why, never a problem: the token may be out now."""
    from cryptography.hazmat.primitives import serialization

    from agent.signing.base import call_with_deadline
    from agent.signing.pkcs11 import token_public_key
    from agent.signing.registry import OPEN_TIMEOUT_S

    assert unit.module is not None  # checked by UnitConfig, as the labels
    assert unit.token_label is not None
    assert unit.key_label is not None
    key, token, module = unit.key_label, unit.token_label, unit.module
    try:  # a token that hangs is a note, not a hung check (as `run` gives up opening it)
        public = call_with_deadline(
            lambda: token_public_key(module, token, key),
            time.monotonic() + OPEN_TIMEOUT_S,
            f"token {token!r}",
        )
    except (ConfigurationError, UnitUnavailable) as exc:
        notes.append(f"certificate_file and the token's key {key!r}: not checked ({exc})")
        return []
    if public is None:
        notes.append(
            f"certificate_file and the token's key {key!r}: not checked (token {token!r} shows"
            " no public key under that label without a login; `run` compares them at start)"
        )
        return []
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if certificate.public_key().public_bytes(*spki) == public:
        return []
    return [
        f"certificate_file: {unit.certificate_file} is for another key than {key!r} on token"
        f" {token!r} (its public key, read without a login): `run` would refuse the unit;"
        " configure the certificate issued for that key, or the key_label of the"
        " certificate's key"
    ]


def _chain_problems(unit: UnitConfig) -> list[str]:
    """The token file (and certificate file) of a chain unit, read as opening it does."""
    from agent.signing.software import load_certificate

    problems = []
    assert unit.token_file is not None  # checked by UnitConfig
    try:
        if not unit.token_file.read_text(encoding="utf-8").strip():
            problems.append(f"the token file {unit.token_file} is empty")
    except (OSError, UnicodeDecodeError) as exc:
        problems.append(f"cannot read the token file {unit.token_file}: {exc}")
    if unit.certificate_file is not None:
        try:
            load_certificate(unit.certificate_file)
        except ConfigurationError as exc:
            problems.append(str(exc))
    return problems


def to_toml(data: dict[str, Any]) -> str:
    """Render the configuration's JSON form as TOML that ``load_config`` reads back.

    Keys whose value is unset (None) are written as comments, since TOML has no null;
    nested tables (``[printer.escpos]``) follow their parent's keys.
    """
    return "\n".join(_toml_table(data, "")) + "\n"


def _toml_table(table: dict[str, Any], prefix: str) -> list[str]:
    lines = _toml_pairs(table)
    for name, value in table.items():
        dotted = f"{prefix}{name}"
        if isinstance(value, dict):
            lines += ["", f"[{dotted}]", *_toml_table(value, dotted + ".")]
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            for item in value:  # a sub-table after [[name]] belongs to that item
                lines += ["", f"[[{dotted}]]", *_toml_table(item, dotted + ".")]
    return lines


def _toml_pairs(table: dict[str, Any]) -> list[str]:
    pairs = []
    for key, value in table.items():
        if value is None:
            pairs.append(f"# {key} = (unset)")
        elif isinstance(value, dict) or (
            isinstance(value, list) and value and all(isinstance(v, dict) for v in value)
        ):
            continue  # written as a table of its own
        else:
            pairs.append(f"{key} = {_toml_value(value)}")
    return pairs


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    # a JSON string is a valid TOML basic string for everything json.dumps emits
    return json.dumps(str(value), ensure_ascii=False)
