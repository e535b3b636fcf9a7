"""The agent's configuration: one TOML file, environment overrides, validated at start.

Where values come from, later ones winning:

1. built-in defaults (enough for ``till-agent run`` on a fresh machine);
2. the file: ``--config FILE`` (which must exist), else ``/etc/till-agent/config.toml``
   when it exists;
3. environment variables ``TILL_AGENT_<SECTION>__<KEY>`` (``TILL_AGENT_API__PORT=8080``),
   ``TILL_AGENT_<KEY>`` for top-level keys (``TILL_AGENT_DATA_DIR``) and
   ``TILL_AGENT_<SECTION>__<TABLE>__<KEY>`` inside a table of a section
   (``TILL_AGENT_PRINTER__ESCPOS__CODE_TABLE=16``). A value is read
   as a TOML value when it parses as one (``8080``, ``true``) unless the key holds text or
   a path, which take the value verbatim, or a USB id (``printer.usb_vendor``,
   ``usb_product``), which is hex as lsusb prints it: ``1504`` is 0x1504, as ``0x1504``.

``data_dir`` defaults to ``$STATE_DIRECTORY`` (set by systemd's ``StateDirectory=``),
else ``$XDG_DATA_HOME/till-agent``, else ``~/.local/share/till-agent`` when the home
directory exists, else ``./till-data``. Every other relative path (except a PKCS#11
``module``, which the loader searches) is taken relative to ``data_dir``.

Every problem is a :class:`~agent.errors.ConfigurationError` whose message names the
dotted key, the rule and the source of the value, e.g.
``api.port: Input should be less than or equal to 65535 [less_than_equal] (from
TILL_AGENT_API__PORT)``.
"""

from __future__ import annotations

import os
import re
import secrets
import stat
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args, get_origin
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from agent.at_rksv.counter import MAX_COUNTER_BYTES, MIN_COUNTER_BYTES
from agent.at_rksv.payload import AUSTRIAN_ZONES, REGISTER_ID_RULE, is_register_id
from agent.durable import create_file, device_of
from agent.errors import ConfigurationError
from agent.printing.render import EscposOptions
from agent.receipt_text import WIDTH
from agent.signing.config import (
    DEV_UNIT,
    DEV_ZDA,
    ZDA_OPTIONAL_KINDS,
    UnitConfig,
    missing_zda,
)
from agent.strict_values import refuse_coercion

if TYPE_CHECKING:
    from agent.outage_watch import Thresholds
    from agent.probe import Backoff

__all__ = [
    "CONFIG_ENV",
    "ENV_PREFIX",
    "HIDDEN",
    "MISSING_HEADER",
    "SYSTEM_CONFIG",
    "AgentConfig",
    "ApiConfig",
    "BackupConfig",
    "HubConfig",
    "OutageConfig",
    "PrinterConfig",
    "ProbeConfig",
    "RegisterConfig",
    "SpoolConfig",
    "default_data_dir",
    "ensure_api_token",
    "find_config_file",
    "load_config",
]

SYSTEM_CONFIG = Path("/etc/till-agent/config.toml")
ENV_PREFIX = "TILL_AGENT_"
CONFIG_ENV = "TILL_AGENT_CONFIG"  # names the file (the CLI's --config); not an override
HIDDEN = "<hidden>"

# (section, key) -> its default name under data_dir; relative values are placed there too
_UNDER_DATA_DIR: dict[tuple[str, str], str | None] = {
    ("api", "token_file"): "api-token",
    ("api", "unix_socket"): None,
    ("spool", "dir"): "spool",
    ("printer", "dir"): "prints",
    ("backup", "dir"): "dep-backups",
}


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    @field_validator("*", mode="before")
    @classmethod
    def _as_written(cls, value: Any, info: ValidationInfo) -> Any:
        return refuse_coercion(cls, value, info)


def _needs(rule: str, key: str, message: str) -> PydanticCustomError:
    """A rule broken by a combination of keys; ``key`` names the one to fix."""
    return PydanticCustomError(rule, message, {"key": key})


def default_data_dir(env: Mapping[str, str] | None = None) -> Path:
    """Where the till's data lives when ``data_dir`` is not configured (see the module doc).

    A home directory this user cannot look into (a parent without search permission) is
    taken as no home directory, as a missing one is.

    Raises:
        ConfigurationError: the last resort, ``./till-data``, has no place either (the
            working directory is gone).
    """
    env = os.environ if env is None else env
    if state := env.get("STATE_DIRECTORY"):
        return Path(state.split(":")[0])
    if (xdg := env.get("XDG_DATA_HOME")) and Path(xdg).is_absolute():
        return Path(xdg) / "till-agent"
    home = env.get("HOME")
    if home and _is_dir(Path(home)):
        return Path(home) / ".local" / "share" / "till-agent"
    try:
        return Path("till-data").absolute()
    except OSError as exc:
        no_home = f"HOME {home} is no directory this user can look into" if home else "no HOME"
        raise ConfigurationError(
            f"data_dir: not configured, and there is no default: {no_home}, and the working"
            f" directory for ./till-data cannot be found ({exc.strerror}); set data_dir (or"
            f" {ENV_PREFIX}DATA_DIR), or pass --data-dir"
        ) from exc


def _is_dir(path: Path) -> bool:
    """``path`` is a directory; ``False`` also when it cannot be looked at (EACCES)."""
    try:
        return path.is_dir()
    except OSError:
        return False


class RegisterConfig(_Section):
    """The register created on first start (later changes need a new register)."""

    id: str = "KASSE-1"
    timezone: str = "Europe/Vienna"
    # up to 16 still loads (a till configured so before keeps starting); a new register
    # gets 5 to 8 (agent.at_rksv.counter.ISSUED_COUNTER_BYTES_MAX), refused naming the field
    # by `run` and, while the data directory does not hold the register, by `config check`
    counter_bytes: int = Field(8, ge=MIN_COUNTER_BYTES, le=MAX_COUNTER_BYTES)
    receipt_id_format: str = "{number}"

    @field_validator("id")
    @classmethod
    def _kassen_id(cls, value: str) -> str:
        if not is_register_id(value):
            raise PydanticCustomError("id-format", REGISTER_ID_RULE)
        return value

    @field_validator("timezone")
    @classmethod
    def _austrian_zone(cls, value: str) -> str:
        if value not in AUSTRIAN_ZONES:
            raise PydanticCustomError(
                "time-zone",
                "receipts carry Austrian local time (RKSV Anlage Z 4, Beleg-Datum-Uhrzeit;"
                " reference/rksv.md 1.1): the time zone must be Europe/Vienna, not {zone}",
                {"zone": value},
            )
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise PydanticCustomError(
                "time-zone", "unknown time zone {zone} (is tzdata installed?)", {"zone": value}
            ) from exc
        return value

    @field_validator("receipt_id_format")
    @classmethod
    def _numbering(cls, value: str) -> str:
        # what any format must do to load; the stricter rule of a new register
        # (registers.check_receipt_id_format: one id per number) is applied where one is
        # created (`run`, `init`) and by `config check` while the register does not exist,
        # so a till configured before that rule keeps starting (its register keeps its format)
        try:
            first, second = (value.format(number=n) for n in (1, 2))
        except (KeyError, IndexError, ValueError) as exc:
            raise PydanticCustomError("format", "use {number}, e.g. 'B{number:06d}'") from exc
        if first == second:
            raise PydanticCustomError("format", "the format must contain {number}")
        if "_" in first or len(first) > 64 or not first.isprintable():
            raise PydanticCustomError("id-format", "receipt ids must be 1-64 characters, no '_'")
        return value


class ProbeConfig(_Section):
    """How often a signature unit of an open outage is asked whether it is back."""

    initial_s: float = Field(5.0, gt=0)
    max_s: float = Field(60.0, gt=0)
    jitter: float = Field(0.2, ge=0, lt=1)

    @model_validator(mode="after")
    def _ordered(self) -> ProbeConfig:
        if self.max_s < self.initial_s:
            raise _needs("order", "max_s", "max_s must not be less than initial_s")
        return self

    def backoff(self) -> Backoff:
        from agent.probe import Backoff

        return Backoff(initial=self.initial_s, cap=self.max_s, jitter=self.jitter)


class OutageConfig(_Section):
    """When an open outage escalates (the RKSV allows 48 hours, then a week to report)."""

    warn_hours: float = Field(24.0, gt=0)
    approaching_hours: float = Field(44.0, gt=0)
    exceeded_hours: float = Field(48.0, gt=0, le=48)
    report_days: float = Field(7.0, gt=0, le=7)
    jump_tolerance_s: float = Field(120.0, gt=0)
    check_interval_s: float = Field(60.0, gt=0, le=3600)

    @model_validator(mode="after")
    def _ordered(self) -> OutageConfig:
        if not self.warn_hours <= self.approaching_hours < self.exceeded_hours:
            raise _needs(
                "order",
                "approaching_hours",
                "need warn_hours <= approaching_hours < exceeded_hours",
            )
        return self

    def thresholds(self) -> Thresholds:
        from agent.outage_watch import Thresholds

        return Thresholds(
            warn_hours=self.warn_hours,
            approaching_hours=self.approaching_hours,
            exceeded_hours=self.exceeded_hours,
            report_days=self.report_days,
            jump_tolerance_s=self.jump_tolerance_s,
        )


class ApiConfig(_Section):
    """The local HTTP API for the POS; ``unix_socket``, when set, replaces host and port.

    ``port = 0`` lets the operating system pick a free port when the service starts: it
    logs the address and writes it to ``<data_dir>/api-address``, where the commands that
    ask the running service find it (agent.local_api).
    """

    enabled: bool = True
    host: str = Field("127.0.0.1", min_length=1)
    port: int = Field(8765, ge=0, le=65535)
    unix_socket: Path | None = None
    token_file: Path | None = None  # placed at <data_dir>/api-token when loaded


class SpoolConfig(_Section):
    """The spool directory the POS drops sale files into."""

    enabled: bool = True
    dir: Path | None = None  # <data_dir>/spool when loaded
    rescan_s: float = Field(5.0, gt=0)


class BackupConfig(_Section):
    """The quarterly DEP backups (§ 7 Abs 3 RKSV: at least quarterly, unalterably, on an
    external electronic medium): ``dir`` should be on another disk than ``data_dir``."""

    enabled: bool = True
    dir: Path | None = None  # <data_dir>/dep-backups when loaded

    def same_disk_warning(self, data_dir: Path) -> str | None:
        """Why the backups are not on an external medium, or None: ``dir`` (or, while it
        does not exist, the directory it would be made in) is on the data directory's
        file system (the same ``st_dev``). A path that cannot be examined warns nothing."""
        if not self.enabled or self.dir is None:
            return None
        here, there = device_of(data_dir), device_of(self.dir)
        if here is None or here != there:
            return None
        return (
            f"backup.dir: {self.dir} is on the same file system as data_dir {data_dir}:"
            " a DEP backup on the till's own disk is not on an external medium"
            " (§ 7 Abs 3 RKSV); set [backup] dir to a mounted external disk or share"
        )


HEADER_LINES = 6
MISSING_HEADER = (
    "printer.header is not set: printed receipts carry no business name"
    " (§ 132a Abs 3 BAO asks for the seller's name); set e.g."
    ' header = ["Gasthaus Zur Post", "Hauptstraße 1, 1010 Wien"] in [printer]'
)


_HEX_ID = re.compile(r"(0[xX])?[0-9A-Fa-f]{1,4}")  # a USB id as lsusb prints it, or 0x...


class PrinterConfig(_Section):
    """The receipt printer; ``file`` writes previews into ``dir``, ``none`` prints nothing.

    ``escpos`` describes the printer model (reference/libraries.md A1): ``code_table`` is
    the ``ESC t`` number of PC858 (with the euro sign) in its list, which its self-test
    page prints; ``qr = "image"`` for printers without native QR codes.

    ``keep_days``: the file printer deletes a job and its preview in ``dir`` once it is
    that many days old (at the first job after the start, then at most once a day); 0
    keeps them for ever.

    ``header``: the lines printed centred at the top of every receipt and copy, the
    business's name and address (§ 132a Abs 3 BAO: a receipt names the seller). Only the
    paper and the PNG preview carry them, not the stored receipt or its JSON.
    """

    kind: Literal["file", "network", "usb", "serial", "none"] = "file"
    dir: Path | None = None  # <data_dir>/prints when loaded
    keep_days: int = Field(30, ge=0, le=36500)  # the file printer's jobs; 0: for ever
    host: str | None = None
    port: int = Field(9100, ge=1, le=65535)
    usb_vendor: int | None = Field(None, ge=0, le=0xFFFF)
    usb_product: int | None = Field(None, ge=0, le=0xFFFF)
    serial_device: Path | None = None
    baudrate: int = Field(9600, gt=0)
    timeout_s: float = Field(5.0, gt=0)
    retry_s: float = Field(30.0, gt=0)
    escpos: EscposOptions = Field(default_factory=EscposOptions)
    header: tuple[str, ...] = ()

    @field_validator("header", mode="before")
    @classmethod
    def _header_list(cls, value: Any) -> Any:
        """A list of strings, nothing else: one string would otherwise be read as its letters."""
        if not isinstance(value, list | tuple):
            raise PydanticCustomError(
                "header-list",
                'a list of 0-{lines} strings, e.g. ["Gasthaus Zur Post", "Hauptstraße 1"]',
                {"lines": HEADER_LINES},
            )
        return value

    @field_validator("header")
    @classmethod
    def _header_lines(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if len(value) > HEADER_LINES:
            raise PydanticCustomError(
                "header-lines",
                "at most {lines} lines, not {count}",
                {"lines": HEADER_LINES, "count": len(value)},
            )
        for number, line in enumerate(value, start=1):
            if not 1 <= len(line) <= WIDTH or not line.isprintable() or not line.strip():
                raise PydanticCustomError(
                    "header-line",
                    "line {number} must be 1-{width} printable characters, not only spaces"
                    " (no tabs, line breaks or invisible format characters): {line}",
                    {"number": number, "width": WIDTH, "line": repr(line)},
                )
        return value

    @property
    def header_warning(self) -> str | None:
        """Why the configured receipts are incomplete, or None: no header, no business name."""
        if self.header or self.kind == "none":
            return None
        return MISSING_HEADER

    @field_validator("usb_vendor", "usb_product", mode="before")
    @classmethod
    def _hex_id(cls, value: Any) -> Any:
        """USB ids as printed by lsusb: "04b8" and "0x04b8" are read as hex, like 0x04B8;
        so is "1504" (an environment value is always this text: :data:`_HEX_IDS`). An
        integer is taken as it is: the file's 0x04b8, or a bare decimal 1504 (= 0x05e0)."""
        if not isinstance(value, str):
            return value
        if _HEX_ID.fullmatch(value) is None:
            raise PydanticCustomError(
                "hex-id",
                "a USB id is 1-4 hex digits as lsusb prints it (ID 04b8:0202), e.g. 04b8 or"
                " 0x04b8, not {value}",
                {"value": repr(value)},
            )
        return int(value, 16)

    @model_validator(mode="after")
    def _kind_needs(self) -> PrinterConfig:
        needs = {"network": ("host",), "usb": ("usb_vendor", "usb_product")}
        needs["serial"] = ("serial_device",)
        if "kind" not in self.model_fields_set:
            # a printer's address without its kind would print into preview files, silently
            for key in sorted(self.model_fields_set & _KIND_OF_KEY.keys()):
                kind = _KIND_OF_KEY[key]
                raise _needs(
                    "kind-missing",
                    "kind",
                    f'{key} is for a {kind} printer: set kind = "{kind}" (the default is file)',
                )
        for key in needs.get(self.kind, ()):
            if getattr(self, key) is None:
                raise _needs("kind-needs", key, f"a {self.kind} printer needs {key}")
        return self


# the keys that only one kind of printer reads
_KIND_OF_KEY = {
    "host": "network",
    "port": "network",
    "usb_vendor": "usb",
    "usb_product": "usb",
    "serial_device": "serial",
    "baudrate": "serial",
}


class HubConfig(_Section):
    """The hub the journal is meant for; no ``url`` means the till works alone.

    Forwarding is not built yet (``sync/`` is to come): a ``url`` is validated and kept,
    and :attr:`unbuilt_warning` says that nothing is sent to it.
    """

    url: str | None = None

    @property
    def unbuilt_warning(self) -> str | None:
        """What a configured hub does not get yet, or None without a ``url``: said by
        ``config check`` and once at start, so a user does not wait for events in vain."""
        if self.url is None:
            return None
        return (
            f"hub forwarding is not built yet: nothing is sent to {self.url};"
            " the journal keeps every event for it"
        )

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None:
            parts = urlsplit(value)
            if parts.scheme not in ("https", "http") or not parts.hostname:
                raise PydanticCustomError("url", "use an http(s) URL like https://hub.example")
        return value


# the development unit's kind and provider (AT1: as an earlier version made it, kept with
# its identity): [[units]] lists it so, with the units of the till's other registers
_DEV_UNIT_AS_MADE = frozenset({("software", DEV_ZDA), ("software", "AT1")})


class AgentConfig(_Section):
    """The whole configuration: immutable, validated, passed explicitly.

    ``development_unit``: when no ``[[units]]`` are configured, ``run`` creates a software
    unit on first start, labelled as not certified (development only); with units it has
    no effect. Set it to false in production so that a missing unit stops the agent.

    ``[[units]]``: a unit of any kind but ``software`` must give its ``zda`` (refused as
    ``units.<id>.zda``, rule ``zda-required``); a software unit without it signs as the
    fictitious test provider AT100, as the development unit does.
    """

    data_dir: Path = Field(default_factory=default_data_dir)
    development_unit: bool = True
    units: tuple[UnitConfig, ...] = ()
    sign_timeout_s: float = Field(3.0, gt=0, le=60)
    # "register" would shadow ABCMeta.register on the class: the key is an alias
    register_: RegisterConfig = Field(default_factory=RegisterConfig, alias="register")
    probe: ProbeConfig = Field(default_factory=ProbeConfig)
    outage: OutageConfig = Field(default_factory=OutageConfig)
    api: ApiConfig = Field(default_factory=ApiConfig)
    spool: SpoolConfig = Field(default_factory=SpoolConfig)
    printer: PrinterConfig = Field(default_factory=PrinterConfig)
    hub: HubConfig = Field(default_factory=HubConfig)
    backup: BackupConfig = Field(default_factory=BackupConfig)

    @model_validator(mode="before")
    @classmethod
    def _place_paths(cls, data: Any, info: ValidationInfo) -> Any:
        if not isinstance(data, dict):
            return data
        env = (info.context or {}).get("env", os.environ)
        raw = data.get("data_dir")
        raw = default_data_dir(env) if raw is None else raw
        if not isinstance(raw, str | Path) or not _placeable(raw):
            return data  # the field's own validation names the problem
        base = Path(raw).expanduser().absolute()
        placed = dict(data, data_dir=base)
        for (name, key), default in _UNDER_DATA_DIR.items():
            section = placed.get(name, {})
            section = section.model_dump() if isinstance(section, BaseModel) else section
            if isinstance(section, dict):
                value = section.get(key)
                value = default if value is None else value
                if isinstance(value, str | Path) and _placeable(value):
                    placed[name] = dict(section, **{key: base / Path(value).expanduser()})
        if isinstance(units := placed.get("units"), list | tuple):
            placed["units"] = [_place_unit(unit, base) for unit in units]
        return placed

    @model_validator(mode="after")
    def _units(self) -> AgentConfig:
        ids = [unit.id for unit in self.units]
        if len(ids) != len(set(ids)):
            raise _needs("unique", "units", "two units share an id")
        for index, unit in enumerate(self.units):
            if unit.id == DEV_UNIT and (unit.kind, unit.zda) not in _DEV_UNIT_AS_MADE:
                raise _needs(
                    "reserved",
                    f"units.{index}.id",
                    f"{DEV_UNIT!r} is reserved for the development unit that `run` creates (a"
                    f" software unit signing as {DEV_ZDA}; AT1 as an earlier version made"
                    f" it), which [[units]] may list as it is; this {unit.kind} unit of"
                    f" provider {unit.zda} needs another id",
                )
            if unit.kind not in ZDA_OPTIONAL_KINDS and "zda" not in unit.model_fields_set:
                raise _needs("zda-required", f"units.{unit.id}.zda", missing_zda(unit.kind))
        return self

    @property
    def wants_development_unit(self) -> bool:
        """True when ``run`` should create the (uncertified) development unit on first start."""
        return self.development_unit and not self.units

    def public_dict(self) -> dict[str, Any]:
        """The configuration as JSON-able data with secrets (unit PINs) hidden."""
        data = self.model_dump(mode="json", by_alias=True)
        for unit in data["units"]:
            if unit.get("pin") is not None:
                unit["pin"] = HIDDEN
        return data


def _place_unit(unit: Any, base: Path) -> Any:
    keys = ("key_file", "certificate_file", "token_file")  # not module: the loader searches
    if isinstance(unit, UnitConfig):
        paths = {k: base / v for k in keys if (v := getattr(unit, k, None)) is not None}
        return unit.model_copy(update=paths)
    if isinstance(unit, dict):
        paths = {
            k: base / Path(v).expanduser()
            for k in keys
            if isinstance(v := unit.get(k), str) and _placeable(v)
        }
        return dict(unit, **paths)
    return unit


def _placeable(value: str | Path) -> bool:
    """A path that can be placed under data_dir; an empty one or one with a NUL byte is
    left as written, for the field's validation to refuse (an empty one is not ".")."""
    return not isinstance(value, str) or (bool(value.strip()) and "\x00" not in value)


def find_config_file(path: Path | None = None) -> Path | None:
    """The file to read: ``path`` (which must exist), else the system file if it exists.

    Raises:
        ConfigurationError: ``path`` was given and is not a file; or the system file cannot
            be looked at or read by this user.
    """
    if path is not None:
        if not path.exists():
            raise ConfigurationError(f"{path}: the configuration file does not exist")
        if not path.is_file():
            raise ConfigurationError(f"{path}: not a regular file; --config names a TOML file")
        return path
    return _system_file()


def _system_file() -> Path | None:
    """SYSTEM_CONFIG if it exists. Its directory is 0750 root:till-agent (README), so for a
    user outside that group it cannot even be looked at: that is said, with the way out,
    rather than taken for "no file" (the defaults would name another data directory)."""
    try:
        found = SYSTEM_CONFIG.is_file()
    except OSError as exc:
        raise _unreadable(exc.strerror or str(exc)) from exc
    if found and not os.access(SYSTEM_CONFIG, os.R_OK):
        raise _unreadable("permission denied")
    return SYSTEM_CONFIG if found else None


def _unreadable(reason: str) -> ConfigurationError:
    return ConfigurationError(
        f"{SYSTEM_CONFIG}: cannot read the configuration: {reason[:1].lower()}{reason[1:]};"
        " run the command as a member of group till-agent (e.g. `runuser -u till-agent --"
        " till-agent ...`), or name a configuration this user can read with --config FILE"
        f" ({CONFIG_ENV})"
    )


def load_config(path: Path | None = None, *, env: Mapping[str, str] | None = None) -> AgentConfig:
    """Load, merge and validate the configuration (see the module doc for the order).

    Args:
        path: an explicit file (``--config``); it must exist.
        env: the environment to read overrides from (default ``os.environ``).

    Raises:
        ConfigurationError: naming the file and line for TOML syntax, or the dotted key,
            the rule and the source of the value for everything else.
    """
    env = os.environ if env is None else env
    file = find_config_file(path)
    data: dict[str, Any] = {} if file is None else _read_toml(file)
    sources = dict.fromkeys(_leaves(data), str(file))
    _apply_env(data, sources, env)
    if file is not None and not data:
        # a file cut to nothing (a power cut during an edit, a failed copy), and nothing
        # from the environment: it would run a development till on the built-in defaults,
        # in another data directory
        raise ConfigurationError(
            f"{file}: the configuration file holds no settings (empty, or only comments),"
            " and the environment gives none; a till's configuration names at least its"
            " data directory or units. To run on the built-in defaults, name no"
            " configuration file"
        )
    try:
        return AgentConfig.model_validate(data, context={"env": env})
    except ValidationError as exc:
        raise ConfigurationError(_describe(exc, sources)) from exc


def _read_toml(file: Path) -> dict[str, Any]:
    try:
        raw = file.read_bytes()
        # Windows editors start UTF-8 files with a byte order mark, which TOML does not allow
        return tomllib.loads(raw.decode("utf-8-sig"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigurationError(f"{file}: not valid TOML: {exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigurationError(f"{file}: not valid TOML: not UTF-8 ({exc.reason})") from exc
    except OSError as exc:
        raise ConfigurationError(f"{file}: cannot read the configuration: {exc}") from exc


def _leaves(data: Mapping[str, Any], prefix: str = "") -> list[str]:
    keys: list[str] = []
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        keys += _leaves(value, dotted + ".") if isinstance(value, dict) else [dotted]
    return keys


def _apply_env(data: dict[str, Any], sources: dict[str, str], env: Mapping[str, str]) -> None:
    for name in sorted(env):
        if not name.startswith(ENV_PREFIX) or name == CONFIG_ENV:
            continue
        path = name.removeprefix(ENV_PREFIX).lower().split("__")
        if len(path) > 3 or not all(path):
            raise ConfigurationError(
                f"{name}: use {ENV_PREFIX}<KEY>, {ENV_PREFIX}<SECTION>__<KEY> or "
                f"{ENV_PREFIX}<SECTION>__<TABLE>__<KEY> [env-name]"
            )
        _refuse_list_entry(name, path)
        target = data
        for depth, part in enumerate(path[:-1], start=1):
            target = target.setdefault(part, {})
            if not isinstance(target, dict):
                table = ".".join(path[:depth])
                raise ConfigurationError(
                    f"{table}: must be a table to take {name} [table] (from {sources[table]})"
                )
        target[path[-1]] = _env_value(name, path, env[name])
        sources[".".join(path)] = name


def _refuse_list_entry(name: str, path: list[str]) -> None:
    """Refuse a variable for one key of one entry of a list of tables (``[[units]]``):
    the list has no table to take it, and pydantic would only say "a valid tuple"."""
    if len(path) > 1 and get_origin(_annotation(path[:1])) is tuple:
        whole = f"{ENV_PREFIX}{path[0].upper()}"
        raise ConfigurationError(
            f"{name}: [[{path[0]}]] is a list, and one key of one entry cannot be set from"
            f" the environment; set the whole list in {whole}: one TOML array of inline"
            " tables, on one line (docs/config.example.toml shows one) [env-list]"
        )


_VALUE = "v = "  # an environment value is parsed as the value of this key
# keys whose environment value is hex text as lsusb prints it, never a TOML number: 1504
# (Bixolon's vendor id) would be TOML's decimal 1504, 0e15 its float 0.0
_HEX_IDS = frozenset({"printer.usb_vendor", "printer.usb_product"})
# the first character of a TOML value that cannot be a plain word: array, table, string
_TOML_ONLY = ("[", "{", '"', "'")


def _env_value(name: str, path: list[str], raw: str) -> Any:
    """``raw`` of variable ``name`` as a TOML value, or verbatim when the key holds text
    or a path, or when it is a bare word TOML does not take (``file``, ``04b8``: the
    field's own validation reads it).

    Raises:
        ConfigurationError: a value that can only be TOML (an array, an inline table or a
            quoted string) does not parse: naming the variable and TOML's error.
    """
    annotation = _annotation(path)
    kinds = set(get_args(annotation) or (annotation,)) if annotation else set()
    if (kinds and kinds <= {str, Path, type(None)}) or ".".join(path) in _HEX_IDS:
        return raw
    try:
        value = tomllib.loads(f"{_VALUE}{raw}")["v"]
    except tomllib.TOMLDecodeError as exc:
        if raw.lstrip().startswith(_TOML_ONLY):
            raise ConfigurationError(_not_toml(name, raw, exc)) from exc
        return raw
    if isinstance(value, float) and kinds and float not in kinds:
        return raw  # a float for a field that takes none: its own validation reads the text
    return value


def _not_toml(name: str, raw: str, exc: tomllib.TOMLDecodeError) -> str:
    """TOML's error about the value of ``name``, its column counted in the value itself."""
    why = re.sub(
        r"\(at line 1, column (\d+)\)",
        lambda found: f"(at line 1, column {int(found[1]) - len(_VALUE)})",
        str(exc),
    )
    hint = ""
    if "\n" in raw.strip():  # the two-line form once shown in docs/config.example.toml
        hint = "; an inline table {...} must be on one line (TOML 1.0): put the value on one line"
    return f"{name}: not a valid TOML value: {why}{hint} [toml]"


def _annotation(path: list[str]) -> Any:
    """The declared type of a dotted key, or None for a key that does not exist."""
    annotation: Any = AgentConfig
    for part in path:
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return None
        field = next(
            (f for name, f in annotation.model_fields.items() if part in (name, f.alias)), None
        )
        annotation = field.annotation if field else None
    return annotation


def _describe(exc: ValidationError, sources: Mapping[str, str]) -> str:
    lines = []
    for error in exc.errors(include_url=False, include_input=False):
        loc = [str(part) for part in error["loc"]]
        extra = (error.get("ctx") or {}).get("key")
        key = ".".join([*loc, extra] if extra and extra not in loc else loc) or "(top level)"
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = "unknown key"
        lines.append(f"{key}: {message} [{error['type']}] (from {_source(key, loc, sources)})")
    return "\n".join(lines)


def _source(key: str, loc: list[str], sources: Mapping[str, str]) -> str:
    parts = key.split(".")
    for end in range(len(parts), 0, -1):
        if (found := sources.get(".".join(parts[:end]))) is not None:
            return found
    prefix = ".".join(loc) + "." if loc else ""
    under = sorted({src for name, src in sources.items() if name.startswith(prefix)})
    return ", ".join(under) or "default"


# -- the API token --------------------------------------------------------------------------

_TOKEN_FORM = re.compile(r"^[A-Za-z0-9._~+/=-]{16,}$")


def ensure_api_token(path: Path) -> str:
    """Read the API token, or create it (mode 0600, never readable by others even briefly).

    Creation writes a private temporary file and hard-links it into place, so a reader
    never sees a partial token and two agents starting at once agree on one token.

    Raises:
        ConfigurationError: the file is readable or writable by group or others, is not a
            regular file (symlinks are refused), holds no usable token, or cannot be made.
    """
    try:
        return _read_token(path)
    except FileNotFoundError:
        pass
    token = secrets.token_urlsafe(32)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        create_file(path, f"{token}\n".encode("ascii"), mode=0o600)
    except FileExistsError:
        return _read_token(path)  # another process won the race: its token stands
    except OSError as exc:
        raise ConfigurationError(f"{path}: cannot create the API token file: {exc}") from exc
    return token


def _read_token(path: Path) -> str:
    """The token in ``path``; FileNotFoundError when there is none yet."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise ConfigurationError(f"{path}: cannot open the API token file: {exc}") from exc
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise ConfigurationError(f"{path}: the API token file is not a regular file")
        if info.st_mode & 0o077:
            raise ConfigurationError(
                f"{path}: the API token file is open to group or others "
                f"(mode {stat.S_IMODE(info.st_mode):04o}); run: chmod 600 {path}"
            )
        token = handle.read(4096).decode("ascii", errors="replace").strip()
    if not _TOKEN_FORM.match(token):
        raise ConfigurationError(f"{path}: the API token file holds no usable token")
    return token
