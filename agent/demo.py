"""``till-agent demo``: one business day of a till, end to end, in a few seconds.

The day runs on a temporary till database with a chain-service unit: the fake chain
service (:mod:`agent.fakes.chain_service`) on 127.0.0.1. It goes down (fallback receipts,
an outage, the Sammelbeleg that closes it), later loses a request (an ``unsigned``
receipt, remedied by Nullbeleg, Sammelbeleg, a Storno and reissue), and at closing time the DEP
and the crypto material container are exported and checked by our verifier.

Wall time is a frozen clock stepped through the day, so the receipts (numbers, dates,
texts) are the same on every run; only keys and signatures are new each time.
"""

from __future__ import annotations

import datetime as dt
import secrets
import tempfile
import time
from dataclasses import asdict, dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, Protocol

from agent.at_rksv.verify import Finding, verify_files
from agent.clock import FrozenClock
from agent.contract import ReceiptResult
from agent.errors import FiscalError, TillAgentError
from agent.export import export_container, export_dep
from agent.fakes.chain_service import ChainServiceFake
from agent.printing import render_png
from agent.receipts import ReceiptService, RegisterSetup
from agent.signing import UnitConfig, open_unit
from agent.signing.registry import UnitRegistry, store_unit
from storage.db import TillDB, open_till_db

__all__ = [
    "CONTAINER_FILE",
    "DEP_FILE",
    "REGISTER",
    "DemoResult",
    "Narrator",
    "SummaryRow",
    "run_demo",
]

REGISTER = "DEMO-1"
UNIT = "chain"
DEP_FILE = "dep-export.json"
CONTAINER_FILE = "cryptographicMaterialContainer.json"
_DAY = dt.datetime(2026, 3, 13, tzinfo=dt.timezone(dt.timedelta(hours=1)))  # a Friday, Vienna
_SIGN_TIMEOUT_S = 0.5  # short, so the lost request costs the demo half a second
Item = tuple[str, str, str, str]  # text, qty, unit price, vat class


class Narrator(Protocol):
    """Hears the day as it happens (the CLI prints it; ``--json`` passes ``None``)."""

    def step(self, at: str, text: str) -> None:
        """Something happened at local time ``at`` ("HH:MM")."""

    def receipt(self, result: ReceiptResult) -> None:
        """A receipt was issued (committed)."""


@dataclass(frozen=True, slots=True)
class SummaryRow:
    """One receipt of the day, as the summary table shows it."""

    number: int
    receipt_id: str
    time: str
    kind: str
    state: str
    amount_cents: int
    note: str


@dataclass(frozen=True, slots=True)
class DemoResult:
    """What the day left behind, and whether its DEP verifies."""

    register_id: str
    rows: tuple[SummaryRow, ...]
    verified_receipts: int
    findings: tuple[Finding, ...]
    out_dir: Path | None
    previews: tuple[Path, ...]

    @property
    def ok(self) -> bool:
        return not self.findings and self.verified_receipts == len(self.rows)

    def as_dict(self) -> dict[str, Any]:
        files = None
        if self.out_dir is not None:
            files = {"dep": str(self.out_dir / DEP_FILE)}
            files["container"] = str(self.out_dir / CONTAINER_FILE)
        return {
            "register": self.register_id,
            "ok": self.ok,
            "receipts": [asdict(row) for row in self.rows],
            "dep": {
                "receipts": self.verified_receipts,
                "findings": [asdict(f) for f in self.findings],
            },
            "files": files,
            "previews": [str(p) for p in self.previews],
        }


class _Silent:
    def step(self, at: str, text: str) -> None:
        pass

    def receipt(self, result: ReceiptResult) -> None:
        pass


def _sale(request_id: str, items: list[Item], payment: str = "cash") -> dict[str, Any]:
    lines = [{"text": t, "qty": q, "unit_price": p, "vat": v} for t, q, p, v in items]
    total = sum(Decimal(q) * Decimal(p) for _, q, p, _v in items)
    return {
        "request_id": request_id,
        "register": REGISTER,
        "kind": "standard",
        "cashier": "Anna",
        "lines": lines,
        "payments": [{"method": payment, "amount": f"{total:.2f}"}],
    }


class _Day:
    """The till of the day: the fake chain service, the database, the receipt service."""

    def __init__(self, work: Path, chain: ChainServiceFake, narrator: Narrator) -> None:
        self.chain = chain
        self.say = narrator
        self.clock = FrozenClock(_DAY)
        self.issued: list[ReceiptResult] = []
        token_file = work / "chain-token"
        token_file.write_text(chain.token)
        token_file.chmod(0o600)
        config = UnitConfig(id=UNIT, kind="chain", zda="AT1", url=chain.url, token_file=token_file)
        self.registry = UnitRegistry()
        unit = open_unit(config)
        self.registry.put(unit)
        try:
            self.db: TillDB = open_till_db(work / "data")
        except BaseException:
            self.registry.close()
            raise
        with self.db.write_connection().transaction() as conn:
            store_unit(conn, config, unit, self.clock.now().isoformat())
        self.service = ReceiptService(
            self.db, self.registry, clock=self.clock, sign_timeout=_SIGN_TIMEOUT_S
        )

    def close(self) -> None:
        self.registry.close()
        self.db.close()

    def at(self, hour: int, minute: int) -> str:
        """Move the wall clock to ``hour:minute`` of the day; return "HH:MM"."""
        self.clock.set(_DAY.replace(hour=hour, minute=minute).astimezone(dt.UTC))
        return f"{hour:02d}:{minute:02d}"

    def show(self, result: ReceiptResult) -> ReceiptResult:
        self.issued.append(result)
        self.say.receipt(result)
        return result

    def sell(self, request_id: str, items: list[Item]) -> ReceiptResult:
        return self.show(self.service.issue(_sale(request_id, items)))

    def probe(self, at: str) -> bool:
        """Ask the unit, as the background probe does, and journal the answer."""
        unit = self.service.unit_of(REGISTER)
        try:
            unit.probe(deadline=time.monotonic() + _SIGN_TIMEOUT_S)
        except TillAgentError as exc:
            self.service.record_probe(REGISTER, False, str(exc))
            self.say.step(at, f"probe: the unit does not answer ({type(exc).__name__})")
            return False
        self.service.record_probe(REGISTER, True, "unit answered")
        self.say.step(at, "probe: the unit answers again; recovering")
        return True

    def recover(self, at: str) -> None:
        """The unit is back: the probe finds out, the service issues what waited."""
        issued = self.service.recover(REGISTER) if self.probe(at) else None
        if issued is None:
            raise FiscalError(f"{at}: the unit should be back, but it does not sign")
        for result in issued:
            self.show(result)


def _play(day: _Day) -> None:
    """The business day, phase by phase (receipt numbers in the comments)."""
    for phase in (_morning, _unit_down, _lost_request, _evening):
        phase(day)


def _morning(day: _Day) -> None:
    at, say = day.at, day.say.step
    say(at(7, 55), f"chain service (fake) on {day.chain.url}; unit {UNIT!r} stored")
    say(at(8, 0), f"register {REGISTER} opens with its signed Startbeleg")
    day.show(day.service.init_register(RegisterSetup(REGISTER, [UNIT])))  # 1
    day.at(8, 12)
    day.sell("s-0812", [("Melange", "2", "4.20", "reduced1"), ("Croissant", "2", "2.90", "normal")])
    day.at(9, 40)
    day.sell("s-0940", [("Frühstück Wien", "1", "9.80", "reduced1")])  # 3


def _unit_down(day: _Day) -> None:
    at, say = day.at, day.say.step
    day.chain.mode = "down"
    say(at(10, 5), "the chain service goes down (HTTP 503 to every request)")
    day.sell("s-1005", [("Apfelstrudel", "1", "4.90", "normal")])  # 4: fallback
    say("10:05", "that receipt met the failure: outage 1 is open, the breaker too")
    day.probe(at(10, 20))
    day.at(10, 25)
    day.sell("s-1025", [("Verlängerter", "1", "3.90", "reduced1")])  # 5: no call to the unit
    day.chain.mode = "up"
    say(at(10, 50), "the chain service is back")
    day.recover("10:50")  # 6: the Sammelbeleg closes outage 1


def _lost_request(day: _Day) -> None:
    at, say = day.at, day.say.step
    day.at(12, 10)
    day.sell(
        "s-1210", [("Tagesmenü", "2", "11.50", "reduced1"), ("Mineral", "2", "2.80", "normal")]
    )
    day.chain.mode = "lose_request"
    say(at(13, 15), "the chain service loses a request: it was sent, no answer came")
    day.sell("s-1315", [("Gulasch", "1", "10.90", "reduced1")])  # 8: unsigned
    say("13:15", "the outcome is unknown: receipt 8 is unsigned, outage 2 is open")
    day.at(13, 30)
    day.sell("s-1330", [("Kaiserschmarrn", "1", "8.60", "reduced1")])  # 9: fallback
    day.chain.mode = "up"
    say(at(14, 0), "the chain service answers again; it does not hold receipt 8")
    day.recover("14:00")  # 10 Nullbeleg, 11 Sammelbeleg, 12 Storno of 8, 13 reissue of 8
    say("14:00", "receipt 12 voids receipt 8 (it counted), receipt 13 reissues its sale")
    say("14:00", "receipt 8 is superseded by its reissue: the sale counts once")


def _evening(day: _Day) -> None:
    at, say = day.at, day.say.step
    say(at(16, 45), "a guest returns the breakfast of receipt 3: Storno")
    storno = {**_sale("s-1645", []), "kind": "storno", "voids": 3, "payments": []}
    day.show(day.service.issue(storno))  # 14
    say(at(18, 0), "closing time: export the DEP and the crypto container, verify")


def _notes(db: TillDB) -> dict[int, list[str]]:
    """What the summary says about each receipt beyond its kind and state."""
    notes: dict[int, list[str]] = {}
    with db.engine.connect() as conn:
        outages = conn.exec_driver_sql(
            "SELECT id, first_number, last_number, sammelbeleg_number FROM outages"
            " WHERE register_id = ? ORDER BY id",
            (REGISTER,),
        ).all()
        for outage, first, last, closing in outages:
            span = range(first, last + 1) if first is not None else range(0)
            for number in span:
                verb = "opens" if number == first else "in"
                notes.setdefault(number, []).append(f"{verb} outage {outage}")
            if closing is not None:
                notes.setdefault(closing, []).append(f"Sammelbeleg closes outage {outage}")
        resolutions = conn.exec_driver_sql(
            "SELECT number, resolution, replacement_number FROM receipt_resolutions"
            " WHERE register_id = ? ORDER BY number",
            (REGISTER,),
        ).all()
        for number, resolution, replacement in resolutions:
            if replacement is None:
                notes.setdefault(number, []).append(resolution)
            else:
                notes.setdefault(number, []).append(f"{resolution} by {replacement}")
                notes.setdefault(replacement, []).append(f"reissue of {number}")
    return notes


def _summary(db: TillDB) -> tuple[SummaryRow, ...]:
    notes = _notes(db)
    query = (
        "SELECT number, receipt_id, issued_at, kind, signature_state, voids_number,"
        " amount_normal + amount_reduced1 + amount_reduced2 + amount_zero + amount_special"
        " FROM receipts WHERE register_id = ? ORDER BY number"
    )
    with db.engine.connect() as conn:
        rows = conn.exec_driver_sql(query, (REGISTER,)).all()
    summary = []
    for number, receipt_id, issued_at, kind, state, voids, amount in rows:
        extra = notes.get(number, [])
        if voids is not None:
            extra = [f"Storno of {voids}", *extra]
        if kind == "null":
            extra = ["Nullbeleg: the unit signs again", *extra]
        time_of_day = str(issued_at)[11:16]
        summary.append(
            SummaryRow(number, receipt_id, time_of_day, kind, state, amount, "; ".join(extra))
        )
    return tuple(summary)


def _export(db: TillDB, target: Path) -> None:
    target.mkdir(parents=True, exist_ok=True)
    with (target / DEP_FILE).open("w", encoding="utf-8") as handle:
        export_dep(db, REGISTER, handle)
    container = target / CONTAINER_FILE
    container.write_text(export_container(db, REGISTER), encoding="utf-8")
    container.chmod(0o600)  # it holds the AES key of the turnover counter


def _previews(issued: list[ReceiptResult], directory: Path) -> tuple[Path, ...]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for result in issued:
        path = directory / f"receipt-{result.number:03d}.png"
        path.write_bytes(render_png(result))
        written.append(path)
    return tuple(written)


def run_demo(out_dir: Path | None = None, narrator: Narrator | None = None) -> DemoResult:
    """Play the day, export and verify its DEP; keep DEP, container and previews in ``out_dir``.

    Raises:
        TillAgentError: a step of the day failed (a bug: the day is scripted).
    """
    with tempfile.TemporaryDirectory(prefix="till-demo-") as tmp:
        work = Path(tmp)
        with ChainServiceFake(
            secrets.token_urlsafe(24), key_dir=work / "chain-key", hold=1.0
        ) as fake:
            day = _Day(work, fake, narrator or _Silent())
            try:
                _play(day)
                target = out_dir if out_dir is not None else work / "export"
                _export(day.db, target)
                report = verify_files(target / DEP_FILE, target / CONTAINER_FILE)
                previews = () if out_dir is None else _previews(day.issued, out_dir / "previews")
                rows = _summary(day.db)
            finally:
                day.close()
    return DemoResult(REGISTER, rows, report.receipts, tuple(report.findings), out_dir, previews)
