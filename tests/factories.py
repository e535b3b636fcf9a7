"""Plain factory functions for tests: databases, units, services and sales, the journal,
the command line in-process, and a QR reader."""

from __future__ import annotations

import base64
import datetime as dt
import io
import json
import os
import re
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import zxingcpp
from PIL import Image
from typer.testing import CliRunner, Result

from agent.clock import FrozenClock
from agent.outages import OutageRecord, load_outages
from agent.receipts import ReceiptService
from agent.signing import UnitConfig, open_unit
from agent.signing.registry import UnitRegistry, store_unit
from storage import TillDB, open_till_db

# the conformance vectors live outside the repository, in the project's shared/ folder
# beside the checkout (CI has it there): read them through require_vectors()
VECTORS = Path(__file__).resolve().parents[1].parent / "shared" / "vectors" / "rksv"

Run = Callable[..., Result]


def load_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def require_vectors(*, module: bool = False) -> Path:
    """The vectors' directory, or the test (with ``module``, the whole module, when called
    at import) goes no further: skipped on a checkout without ../shared, failed where
    ``.ci/run`` sets TILL_TESTS_VECTORS=required, since CI must never skip them."""
    if VECTORS.is_dir():
        return VECTORS
    message = (
        f"the RKSV conformance vectors are not at {VECTORS}: "
        "put the project's shared/ folder beside the checkout (../shared)"
    )
    if os.environ.get("TILL_TESTS_VECTORS") == "required":
        pytest.fail(message)
    pytest.skip(message, allow_module_level=module)


def write_e2e_unit(directory: Path, case: str = "e2e_open") -> UnitConfig:
    """Key (and certificate) of an e2e vector as files, and the unit config for them."""
    require_vectors()
    expected = load_json(VECTORS / case / "expected.json")
    container = load_json(VECTORS / case / "cryptographicMaterialContainer.json")
    key_file = directory / f"{case}.key.pem"
    key_file.write_text(expected["privateKeyPem"])
    entry = next(iter(container["certificateOrPublicKeyMap"].values()))
    if entry["signatureDeviceType"] == "CERTIFICATE":
        cert_file = directory / f"{case}.cert.der"
        cert_file.write_bytes(base64.b64decode(entry["signatureCertificateOrPublicKey"]))
        return UnitConfig(
            id="e2e", kind="software", zda="AT1", key_file=key_file, certificate_file=cert_file
        )
    return UnitConfig(id="e2e", kind="software", zda="AT0", key_file=key_file, key_id=entry["id"])


def make_db(data_dir: Path) -> TillDB:
    return open_till_db(data_dir)


def add_unit(db: TillDB, registry: UnitRegistry, config: UnitConfig) -> None:
    unit = open_unit(config)
    with db.write_connection().transaction() as conn:
        store_unit(conn, config, unit, "2026-01-01T00:00:00+00:00")
    registry.put(unit)


def make_service(db: TillDB, registry: UnitRegistry | None = None) -> ReceiptService:
    return ReceiptService(db, registry or UnitRegistry())


# the last days on which a Monats- or Jahresbeleg may be issued by hand, for registers
# created on the test default (conftest.START, 2 March 2026): 11:00 in Vienna
CLOSING_DAYS = {
    "monthly": dt.datetime(2026, 3, 31, 9, 0, tzinfo=dt.UTC),
    "yearly": dt.datetime(2026, 12, 31, 10, 0, tzinfo=dt.UTC),
}


def to_closing_day(service: ReceiptService, kind: str) -> int:
    """Move the service's frozen clock to a day on which ``kind`` may be issued by hand
    (any other kind: the clock stays): March's last day for a Monatsbeleg, 31 December
    for the Jahresbeleg, with the months before it closed by the closing job. How many
    receipts that catch-up issued."""
    if kind not in CLOSING_DAYS:
        return 0
    assert isinstance(service.clock, FrozenClock)
    service.clock.set(CLOSING_DAYS[kind])
    return len(service.run_closings())


def sale(**overrides: Any) -> dict[str, Any]:
    """A valid standard sale of 12.50 (normal) + 4.20 (reduced1); override any key."""
    base: dict[str, Any] = {
        "request_id": "req-1",
        "register": "KASSE-1",
        "kind": "standard",
        "lines": [
            {"text": "Schnitzel", "qty": "1", "unit_price": "12.50", "vat": "normal"},
            {"text": "Apfelsaft", "qty": "2", "unit_price": "2.10", "vat": "reduced1"},
        ],
        "payments": [{"method": "cash", "amount": "16.70"}],
    }
    base.update(overrides)
    return base


def run_threads(threads: int, body: Callable[[int], None], timeout: float = 60) -> None:
    """Run ``body(worker)`` in ``threads`` threads released together; fail on any error or
    on a thread still running after ``timeout`` seconds (a caller that never got its answer)."""
    errors: list[BaseException] = []
    gate = threading.Barrier(threads)

    def run(worker: int) -> None:
        try:
            gate.wait()
            body(worker)
        except BaseException as exc:  # reported below: a thread cannot raise into pytest
            errors.append(exc)

    workers = [threading.Thread(target=run, args=(w,)) for w in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=timeout)
    assert not any(w.is_alive() for w in workers), "a thread is still running (deadlock?)"
    assert errors == []


def qr_codes(image: Image.Image | bytes | Path) -> list[str]:
    """The QR codes in an image (a PIL image, PNG bytes or a file), top to bottom.

    Only QR codes are looked for: read for every format, the printed text of a receipt
    now and then passes for a one-dimensional barcode ("9508").
    """
    if isinstance(image, bytes | Path):
        source = io.BytesIO(image) if isinstance(image, bytes) else image
        with Image.open(source) as opened:
            return qr_codes(opened)
    return [
        found.text for found in zxingcpp.read_barcodes(image, formats=zxingcpp.BarcodeFormat.QRCode)
    ]


def disk_full(service: ReceiptService, full: bool = True) -> None:
    """Make the till database full (no page more than it has) or give it room again.

    SQLite's own page limit fails a write with SQLITE_FULL, the error a full disk gives.
    """
    conn = service.db.write_connection()._conn
    pages = int(conn.execute("PRAGMA page_count").fetchone()[0])
    conn.execute(f"PRAGMA max_page_count = {pages if full else 1 << 30}")


def journal_events(db: TillDB, kind: str) -> list[dict[str, object]]:
    """The data of every journal event of ``kind``, oldest first (own read connection)."""
    conn = sqlite3.connect(db.path)
    try:
        rows = conn.execute("SELECT data FROM journal WHERE kind = ? ORDER BY seq", (kind,))
        return [json.loads(r[0]) for r in rows]
    finally:
        conn.close()


def cli_run() -> Run:
    """Invoke the Typer app in-process: ``run(*args, input=...)``."""
    from agent.cli import app  # the command line only for the tests that run it

    runner = CliRunner()

    def run(*args: str | Path, input: str | bytes | None = None) -> Result:
        return runner.invoke(app, [str(a) for a in args], input=input, prog_name="till-agent")

    return run


def expect(result: Result, code: int) -> Result:
    """Assert the exit code, showing everything the command printed when it differs."""
    assert result.exit_code == code, (
        f"exit {result.exit_code} != {code}\nstdout:\n{result.stdout}\n"
        f"stderr:\n{result.stderr}\nexception: {result.exception!r}"
    )
    return result


def flat(text: str) -> str:
    """The text with every run of whitespace made one space (Rich wraps at 80 columns)."""
    return " ".join(text.split())


def box_words(text: str) -> str:
    """The words of a Rich box (help screen, error), without the box: its lines may break
    anywhere."""
    return flat(re.sub("[\u2500-\u257f]", " ", text))


def db_rows(db: TillDB, sql: str, *params: Any) -> list[sqlite3.Row]:
    """Run one SQL statement on a connection of its own and return the rows."""
    conn = sqlite3.connect(db.path)
    conn.row_factory = sqlite3.Row
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def the_outage(service: ReceiptService) -> OutageRecord:
    """The one outage the till database holds (a test that opened exactly one)."""
    with service.db.read_connection() as conn:
        [outage] = load_outages(conn)
    return outage
