"""Plain factory functions for tests: databases, units, services and sales, and a QR reader."""

from __future__ import annotations

import base64
import io
import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import zxingcpp
from PIL import Image

from agent.receipts import ReceiptService
from agent.signing import UnitConfig, open_unit
from agent.signing.registry import UnitRegistry, store_unit
from storage import TillDB, open_till_db

VECTORS = Path(__file__).resolve().parents[1].parent / "shared" / "vectors" / "rksv"


def load_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def write_e2e_unit(directory: Path, case: str = "e2e_open") -> UnitConfig:
    """Key (and certificate) of an e2e vector as files, and the unit config for them."""
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
