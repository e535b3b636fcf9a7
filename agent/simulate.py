"""Replay an official RKSV scenario (CashBoxSimulation format) through the receipt service.

POS vendors and our tests use it to check a till against the BMF/A-SIT scenarios: a fresh
temporary register gets one software unit per ``numberOfSignatureDevices`` (each wrapped so
it fails on demand), every instruction becomes a receipt with the given number, date and
unit, and the result is written as ``dep-export.json`` and
``cryptographicMaterialContainer.json``.
"""

from __future__ import annotations

import base64
import json
import tempfile
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

from agent.at_rksv._verify_rules import RuleBroken, receipt_date_time
from agent.durable import refuse_non_regular, replace_file
from agent.errors import ConfigurationError
from agent.export import export_container, export_dep
from agent.receipts import ReceiptService, RegisterSetup
from agent.signing import UnitConfig, create_software_unit, open_unit
from agent.signing.flaky import FlakyUnit
from agent.signing.registry import UnitRegistry, store_unit
from storage.db import TillDB, open_till_db

__all__ = ["SimulationResult", "run_scenario"]

_TYPES = {
    "STANDARD_BELEG": "standard",
    "STORNO_BELEG": "storno",
    "TRAINING_BELEG": "training",
    "NULL_BELEG": "null",
}
DEP_FILE = "dep-export.json"
CONTAINER_FILE = "cryptographicMaterialContainer.json"
_TAX_KEYS = (
    "taxSetNormal",
    "taxSetErmaessigt1",
    "taxSetErmaessigt2",
    "taxSetNull",
    "taxSetBesonders",
)


@dataclass(frozen=True, slots=True)
class SimulationResult:
    receipts: int
    fallback: int
    dep_file: Path
    container_file: Path


def _cents(value: Any) -> int:
    return int((Decimal(str(value)) * 100).quantize(Decimal(1), rounding=ROUND_HALF_UP))


def _make_units(
    db: TillDB, registry: UnitRegistry, keys: Path, *, count: int, company: str, closed: bool
) -> list[FlakyUnit]:
    flaky = []
    for i in range(count):
        key_id = f"{company}-K{i}" if closed else None
        key_file, cert_file = create_software_unit(keys, name=f"unit{i}", key_id=key_id)
        config = UnitConfig(
            id=f"unit{i}",
            kind="software",
            zda="AT0" if closed else "AT1",
            key_file=key_file,
            certificate_file=cert_file,
            key_id=key_id,
        )
        unit = open_unit(config)
        with db.write_connection().transaction() as conn:
            store_unit(conn, config, unit, "1970-01-01T00:00:00+00:00")
        flaky.append(FlakyUnit(unit))
        registry.put(flaky[-1])
    return flaky


def _load(path: Path) -> dict[str, Any]:
    """The scenario in ``path``; one that cannot be read, is not UTF-8 JSON or is no JSON
    object is a ConfigurationError naming the file."""
    try:
        scenario = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigurationError(f"cannot read scenario {path}: {exc}") from exc
    except UnicodeDecodeError as exc:  # (json.loads of bytes would say less)
        raise ConfigurationError(f"cannot read scenario {path}: it is not UTF-8 text") from exc
    if not isinstance(scenario, dict):
        raise ConfigurationError(f"scenario {path}: not a JSON object")
    for key in ("cashBoxId", "base64AesKey", "numberOfSignatureDevices", "cashBoxInstructionList"):
        if key not in scenario:
            raise ConfigurationError(f"scenario {path}: missing key {key!r}")
    instructions = scenario["cashBoxInstructionList"]
    if not isinstance(instructions, list):
        raise ConfigurationError(f"scenario {path}: cashBoxInstructionList is not a list")
    for index, item in enumerate(instructions):
        _check_date(path, index, item)
    return dict(scenario)


def _check_date(path: Path, index: int, item: Any) -> None:
    """Refuse instruction ``index`` unless its ``dateToUse`` is a receipt date the DEP
    verifier accepts (its own rule): checked for every instruction before the first is
    signed, since a date signed into field 4 cannot be taken back."""
    instruction = item if isinstance(item, dict) else {}
    date = instruction.get("dateToUse")
    try:  # (a missing date, or one that is no string, is refused as an empty one)
        receipt_date_time(date if isinstance(date, str) else "")
    except RuleBroken as exc:
        receipt = instruction.get("receiptIdentifier", "?")
        raise ConfigurationError(
            f"scenario {path}: cashBoxInstructionList[{index}] (receipt {receipt}):"
            f" dateToUse {date!r} is no receipt date: it must be yyyy-MM-ddTHH:mm:ss, a real"
            " date and time, local without offset (field 4, as the DEP verifier checks it)"
        ) from exc


def run_scenario(
    scenario_file: Path, out_dir: Path, *, closed: bool = False, counter_bytes: int = 8
) -> SimulationResult:
    """Replay ``scenario_file`` and write the DEP and the crypto container into ``out_dir``.

    Raises:
        ConfigurationError: the scenario file is unreadable or incomplete, an instruction's
            ``dateToUse`` is no receipt date (nothing is signed then), or the results cannot
            be written.
    """
    scenario = _load(scenario_file)
    for name in (DEP_FILE, CONTAINER_FILE):  # a device or a fifo there: refused unwritten
        try:
            refuse_non_regular(out_dir / name)
        except OSError as exc:
            raise _unwritable(out_dir / name, exc) from exc
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _unwritable(out_dir, exc) from exc
    with tempfile.TemporaryDirectory(prefix="till-sim-") as tmp:
        db = open_till_db(Path(tmp) / "data")
        try:
            return _replay(
                db,
                Path(tmp),
                scenario=scenario,
                out_dir=out_dir,
                closed=closed,
                counter_bytes=counter_bytes,
            )
        finally:
            db.close()


def _replay(
    db: TillDB,
    tmp: Path,
    *,
    scenario: dict[str, Any],
    out_dir: Path,
    closed: bool,
    counter_bytes: int,
) -> SimulationResult:
    registry = UnitRegistry()
    units = _make_units(
        db,
        registry,
        tmp / "keys",
        count=int(scenario["numberOfSignatureDevices"]),
        company=str(scenario.get("companyID", "U:ATU00000000")),
        closed=closed,
    )
    # the scenario's dates are its own: no closings of the months around the replay
    service = ReceiptService(db, registry, closings_first=False)
    register_id = str(scenario["cashBoxId"])
    setup = RegisterSetup(
        register_id,
        [u.identity.unit_id for u in units],
        counter_bytes=counter_bytes,
        aes_key=base64.b64decode(scenario["base64AesKey"]),
    )
    fallback = 0
    instructions = scenario["cashBoxInstructionList"]
    for item in instructions:
        position = int(item.get("usedSignatureDevice", 0))
        for i, unit in enumerate(units):
            unit.mode = "down" if item.get("signatureDeviceDamaged") and i == position else "up"
        args = {
            "receipt_id": item["receiptIdentifier"],
            "issued_at": item["dateToUse"],
            "unit_position": position,
        }
        if item["typeOfReceipt"] == "START_BELEG":
            result = service.init_register(setup, **args)
        else:
            kind = _TYPES[item["typeOfReceipt"]]
            outage_open = service.outages.is_open(register_id)
            if kind == "null" and outage_open and not item.get("signatureDeviceDamaged"):
                kind = "sammelbeleg"
            amounts = tuple(_cents(item["simplifiedReceipt"][k]) for k in _TAX_KEYS)
            result = service.issue_special(register_id, kind, amounts=amounts, **args)  # type: ignore[arg-type]
        fallback += result.signature_state == "fallback"
    dep_file = out_dir / DEP_FILE
    container_file = out_dir / CONTAINER_FILE
    try:
        with dep_file.open("w", encoding="utf-8") as handle:
            export_dep(db, register_id, handle)
    except OSError as exc:  # (a full disk names no file)
        raise _unwritable(Path(exc.filename) if exc.filename else out_dir, exc) from exc
    try:
        replace_file(container_file, export_container(db, register_id).encode("utf-8"))
    except OSError as exc:  # (its temporary file is no name to show)
        raise _unwritable(container_file, exc) from exc
    return SimulationResult(len(instructions), fallback, dep_file, container_file)


def _unwritable(path: Path, exc: OSError) -> ConfigurationError:
    return ConfigurationError(f"cannot write {path}: {exc.strerror or exc}")
