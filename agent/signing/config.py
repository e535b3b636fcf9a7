"""How a signature unit is described in the till database and in the configuration."""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from agent.strict_values import refuse_coercion

__all__ = [
    "DEV_UNIT",
    "DEV_ZDA",
    "KEYS_DIR",
    "ORDNUNGSBEGRIFF",
    "UNIT_ID_PATTERN",
    "UNIT_ID_RULE",
    "UNIT_PATHS",
    "ZDA_OPTIONAL_KINDS",
    "UnitConfig",
    "is_unit_id",
    "missing_zda",
    "moved_files",
    "other_zda",
    "placed_in",
    "stored_in",
]

log = logging.getLogger(__name__)

# a unit id names files (keys/<id>.key.pem) and appears in logs: no '/', no '_', no spaces
UNIT_ID_PATTERN = r"^[A-Za-z0-9.:-]{1,64}$"
UNIT_ID_RULE = (
    "1-64 letters, digits, '.', ':' or '-' (not '.' or '..' alone; it names the unit's key files)"
)
_ZDA_RE = re.compile(r"^(AT0|[A-Z]{2}[1-9]\d*)$")
# the Ordnungsbegriff of a closed system (reference/rksv.md 1.3): Steuernummer, UID or GLN
ORDNUNGSBEGRIFF = r"S:\d{9}|U:ATU\d{8}|G:\d{13}"
# field 11 of a closed system as the verifier reads it, the key id required and plain
# letters and digits (ztp refuses a second '-' or other signs in it)
_KEY_ID_RE = re.compile(rf"(?:{ORDNUNGSBEGRIFF})-[A-Za-z0-9]{{1,32}}")
# the files of a unit (not a PKCS#11 module: its loader searches for it), and where the
# key files of `unit create-software` and the development unit live in the data directory
UNIT_PATHS = ("key_file", "certificate_file", "token_file")
KEYS_DIR = "keys"
# the development unit `till-agent run` creates on a first start without [[units]]
DEV_UNIT = "dev-uncertified"
# ... and its provider: the fictitious AT100 of `unit create-software`, never a real one
DEV_ZDA = "AT100"
# the kinds a configuration may give without zda: the development software unit, which
# then signs as DEV_ZDA; every other kind signs with a provider's certificate (or a closed
# system's key), and the default would sign its receipts as the test provider, unnoticed
ZDA_OPTIONAL_KINDS = frozenset({"software"})
# the providers of certificates a till may configure (reference/rksv.md 1.2)
_PROVIDERS = (("AT1", "A-Trust"), ("AT2", "GlobalTrust"), ("AT3", "PrimeSign"))


def is_unit_id(value: str) -> bool:
    """True when ``value`` may name a unit and its files (:data:`UNIT_ID_RULE`)."""
    return re.fullmatch(UNIT_ID_PATTERN, value) is not None and value not in (".", "..")


def missing_zda(kind: str) -> str:
    """Why a configured unit of ``kind`` (one outside :data:`ZDA_OPTIONAL_KINDS`) needs
    ``zda``, and the values to choose from."""
    providers = ", ".join(f'"{zda}" ({name})' for zda, name in _PROVIDERS)
    closed = "" if kind == "chain" else '; "AT0" for a closed system (with key_id)'
    return (
        f"a {kind} unit must name the trust service provider it signs for: zda is required"
        " for every unit but the development software unit (without it the unit would sign"
        f" as R1-{DEV_ZDA}, the fictitious test provider, which no registered till may use)."
        f" Set zda in its [[units]] entry: the provider of its certificate, {providers}"
        f'{closed}; "{DEV_ZDA}" only for a test token or service (its receipts are'
        " development ones)"
    )


def other_zda(config: UnitConfig, stored: str) -> str:
    """The problem of ``config`` when the till database stores its unit under provider
    ``stored``, another one: a unit's provider is part of its identity. Names the field
    (``units.<id>.zda``), the rule (``zda-stored``) and the ways on."""
    unit_id, configured = config.id, config.zda
    return (
        f"units.{unit_id}.zda: unit {unit_id} signs as R1-{stored} in the till database (its"
        f" receipts carry that suite), but zda = {configured!r} is configured: a unit's"
        " provider is part of its identity and never changes under its id, so the receipts"
        f" signed so far stay as they are. To go on with it, set zda = {stored!r}; to sign"
        f" as R1-{configured}, add the token or service as a unit with an id of its own and"
        f" zda = {configured!r}, then move its registers to it (`till-agent unit switch"
        " REGISTER NEW-UNIT`) or set up a new register on it (`till-agent init NEW-ID --unit"
        " NEW-UNIT`), and register the unit in FinanzOnline [zda-stored]"
    )


class UnitConfig(BaseModel):
    """One signature unit: its kind and what that kind needs to open it.

    ``software`` needs ``key_file`` plus ``certificate_file`` (open) or ``key_id`` (AT0).
    ``pkcs11`` needs ``module``, ``token_label``, ``pin`` and ``key_label`` plus, as above,
    a certificate or a key id.
    ``chain`` (a remote chain service) needs ``url`` and ``token_file`` (a file holding the
    bearer token); it is an open system, and ``certificate_file`` is optional: without it
    the certificate is fetched from the service when the unit is opened.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(min_length=1, max_length=64, pattern=UNIT_ID_PATTERN)
    kind: Literal["software", "pkcs11", "chain"]
    zda: str = "AT100"
    key_file: Path | None = None
    certificate_file: Path | None = None
    key_id: str | None = None
    module: Path | None = None
    token_label: str | None = None
    pin: str | None = None
    key_label: str | None = None
    url: str | None = None
    token_file: Path | None = None
    # a development unit that `till-agent simulate unit` may switch down/up at run time
    simulate: bool = False

    @field_validator("*", mode="before")
    @classmethod
    def _as_written(cls, value: Any, info: ValidationInfo) -> Any:
        return refuse_coercion(cls, value, info)

    @field_validator("zda")
    @classmethod
    def _zda_form(cls, value: str) -> str:
        if not _ZDA_RE.match(value):
            raise ValueError("zda must be AT0 (closed system) or a provider id like AT1")
        return value

    @field_validator("key_id")
    @classmethod
    def _key_id_form(cls, value: str | None) -> str | None:
        if value is None:
            return value
        if "_" in value or not value:
            raise ValueError("key_id must be non-empty and must not contain '_'")
        if not _KEY_ID_RE.fullmatch(value):
            raise ValueError(
                "key_id must be Ordnungsbegriff-KeyID (RKSV field 11 of a closed system,"
                " reference/rksv.md 1.3): S:<9-digit tax number>, U:ATU<8 digits> or"
                " G:<13-digit GLN>, '-', then letters and digits, e.g. U:ATU12345678-K1"
            )
        return value

    @field_validator("url")
    @classmethod
    def _url_form(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("url must be an https:// (or http://) URL")
        return value

    @model_validator(mode="after")
    def _kind_needs(self) -> UnitConfig:
        needs = {
            "software": ("key_file",),
            "pkcs11": ("module", "token_label", "key_label"),
            "chain": ("url", "token_file"),
        }
        missing = [name for name in needs[self.kind] if getattr(self, name) is None]
        if missing:
            raise ValueError(f"a {self.kind} unit needs {', '.join(missing)}")
        if self.kind == "chain":
            if self.zda == "AT0" or self.key_id is not None:
                raise ValueError("a chain unit is an open system: no zda AT0, no key_id")
            return self
        if (self.zda == "AT0") != (self.key_id is not None):
            raise ValueError("key_id is required for zda AT0 (closed system) and only there")
        if self.zda != "AT0" and self.certificate_file is None:
            raise ValueError("an open system unit needs certificate_file")
        return self


def stored_in(config: UnitConfig, data_dir: Path) -> UnitConfig:
    """``config`` as the till database stores it: a file inside ``data_dir`` relative to
    it, so that a data directory restored elsewhere finds its keys (see :func:`placed_in`);
    any other by its absolute path (a relative one is taken in the working directory)."""
    paths = {}
    for name in UNIT_PATHS:
        path = getattr(config, name)
        if path is not None:
            inside = _inside(path, data_dir)
            paths[name] = Path(os.path.normpath(path.absolute())) if inside is None else inside
    return config.model_copy(update=paths)


def placed_in(config: UnitConfig, data_dir: Path) -> UnitConfig:
    """A stored ``config`` with its files placed in ``data_dir``: a relative path is taken
    relative to it; an absolute one that does not exist (a data directory restored from
    another disk by an agent that stored absolute paths) is taken from
    ``<data_dir>/keys/`` when a file of that name is there (:func:`moved_files`), logged
    as a WARNING."""
    paths = {
        name: data_dir / path
        for name in UNIT_PATHS
        if (path := getattr(config, name)) is not None and not path.is_absolute()
    }
    for name, moved in moved_files(config, data_dir).items():
        log.warning(
            "unit %s: %s %s does not exist; using %s (a data directory restored from elsewhere)",
            config.id,
            name,
            getattr(config, name),
            moved,
        )
        paths[name] = moved
    return config.model_copy(update=paths)


def moved_files(config: UnitConfig, data_dir: Path) -> dict[str, Path]:
    """The files of a stored ``config`` named by an absolute path that does not exist,
    found by their name in ``<data_dir>/keys/`` instead (field name -> that file)."""
    moved = {}
    for name in UNIT_PATHS:
        path = getattr(config, name)
        if path is None or not path.is_absolute() or path.exists():
            continue
        if (found := data_dir / KEYS_DIR / path.name).is_file():
            moved[name] = found
    return moved


def _inside(path: Path, data_dir: Path) -> Path | None:
    """``path`` relative to ``data_dir`` when it is inside it (also through a symbolic
    link to the data directory or one of its folders), else None."""
    normal = Path(os.path.normpath(path.absolute()))
    for base, candidate in (
        (Path(os.path.normpath(data_dir.absolute())), normal),
        (data_dir.resolve(), normal.parent.resolve() / normal.name),
    ):
        if candidate.is_relative_to(base) and candidate != base:
            return candidate.relative_to(base)
    return None
