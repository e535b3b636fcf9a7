"""A till process for the SIGKILL test: issues receipts forever and acknowledges each one.

Run as ``python tests/crash/child.py DATA_DIR KEYDIR [SEED] [--wait]``. It opens (creates,
migrates) the till database in DATA_DIR, stores the software unit whose key files the test
put in KEYDIR (``crash.key.pem`` + ``crash.cert.pem``) if it is missing, initializes register
``CRASH-1`` if it is missing, and then issues sales in a loop: standard sales, now and then
a storno of the previous standard receipt, training receipts and Nullbelege.

With ``--wait`` it imports everything and then waits for one line on stdin before it
touches the database (EOF instead: exit quietly), so the test can start the next child's
interpreter while it still checks the database the previous one left behind.

Protocol on stdout, one line per ``os.write`` (atomic on a pipe, lines are < PIPE_BUF):

* ``START`` once the imports are done, just before the database is opened;
* ``ACK <number> <jws>`` after ``ReceiptService`` returned a receipt, i.e. after its
  COMMIT: this is the acknowledgement the POS would get. A receipt acknowledged here must
  survive any kill that comes after the line was written.

Nothing else is written to stdout; errors go to stderr and end the process with status 1.

``CRASH_SYNCHRONOUS=NORMAL`` in the environment weakens the receipt commits to
``synchronous=NORMAL`` (no fsync per commit): the power-cut test runs it once to show
that its model of a power cut does lose acknowledged receipts when commits are not synced.
"""

from __future__ import annotations

import os
import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # the project is not necessarily installed in the venv
    sys.path.insert(0, str(ROOT))

import storage.migrate  # noqa: E402, F401 - imported before START, like the rest
from agent.receipts import ReceiptService, RegisterSetup  # noqa: E402
from agent.signing import UnitConfig, open_unit  # noqa: E402
from agent.signing.registry import UnitRegistry, store_unit  # noqa: E402
from storage.db import open_till_db  # noqa: E402

REGISTER = "CRASH-1"
UNIT_ID = "crash-unit"
KEY_NAME = "crash"
_VATS = ("normal", "reduced1", "reduced2", "zero", "special")


def unit_config(key_dir: Path) -> UnitConfig:
    """The unit every run uses (the key files are created once by the test)."""
    return UnitConfig(
        id=UNIT_ID,
        kind="software",
        zda="AT1",
        key_file=key_dir / f"{KEY_NAME}.key.pem",
        certificate_file=key_dir / f"{KEY_NAME}.cert.pem",
    )


def emit(line: str) -> None:
    """Write one whole line to stdout with a single write (no Python-level buffering)."""
    data = (line + "\n").encode("ascii")
    while data:
        data = data[os.write(1, data) :]


def _money(cents: int) -> str:
    sign = "-" if cents < 0 else ""
    return f"{sign}{abs(cents) // 100}.{abs(cents) % 100:02d}"


def _lines(rng: random.Random) -> tuple[list[dict[str, str]], int]:
    lines, total = [], 0
    for i in range(rng.randint(1, 4)):
        qty = rng.randint(1, 3)
        price = rng.randint(1, 5000)
        lines.append(
            {
                "text": f"Artikel {i}",
                "qty": str(qty),
                "unit_price": _money(price),
                "vat": rng.choice(_VATS),
            }
        )
        total += qty * price
    return lines, total


def next_sale(rng: random.Random, request_id: str, last_standard: int | None) -> dict[str, object]:
    """A random valid sale; a storno only when there is an unvoided standard receipt."""
    roll = rng.random()
    base: dict[str, object] = {"request_id": request_id, "register": REGISTER}
    if roll < 0.12 and last_standard is not None:
        return base | {"kind": "storno", "voids": last_standard}
    if roll < 0.20:
        return base | {"kind": "null"}
    kind = "training" if roll < 0.30 else "standard"
    lines, total = _lines(rng)
    return base | {
        "kind": kind,
        "lines": lines,
        "payments": [{"method": "cash", "amount": _money(total)}],
    }


def main(argv: list[str]) -> int:
    wait = "--wait" in argv
    args = [a for a in argv[1:] if a != "--wait"]
    data_dir, key_dir = Path(args[0]), Path(args[1])
    rng = random.Random(args[2] if len(args) > 2 else None)
    if wait and not sys.stdin.buffer.readline():
        return 0  # the test no longer needs this pre-started child
    emit("START")

    db = open_till_db(data_dir)
    if weaker := os.environ.get("CRASH_SYNCHRONOUS"):  # the negative control, see above
        db.write_connection()._conn.execute(f"PRAGMA synchronous={weaker}")
    config = unit_config(key_dir)
    unit = open_unit(config)
    registry = UnitRegistry()
    registry.put(unit)
    service = ReceiptService(db, registry)
    writer = db.write_connection()
    with writer.transaction() as conn:
        if conn.execute("SELECT 1 FROM units WHERE id = ?", (UNIT_ID,)).fetchone() is None:
            store_unit(conn, config, unit, "2026-01-01T00:00:00+00:00")
        registered = conn.execute("SELECT 1 FROM registers WHERE id = ?", (REGISTER,)).fetchone()
    if registered is None:
        start = service.init_register(RegisterSetup(REGISTER, [UNIT_ID]))
        emit(f"ACK {start.number} {start.jws}")

    with writer.transaction() as conn:
        last = conn.execute(
            "SELECT last_number FROM registers WHERE id = ?", (REGISTER,)
        ).fetchone()[0]
        # the newest receipt, if it is a standard one, is not voided yet and may be voided
        row = conn.execute(
            "SELECT number, kind FROM receipts WHERE register_id = ? ORDER BY number DESC LIMIT 1",
            (REGISTER,),
        ).fetchone()
    last_standard = row[0] if row is not None and row[1] == "standard" else None

    suffix = f"{rng.getrandbits(32):08x}"
    counter = last
    while True:
        counter += 1
        result = service.issue(next_sale(rng, f"n{counter}-{suffix}", last_standard))
        if result.kind == "standard":
            last_standard = result.number
        elif result.kind == "storno":
            last_standard = None
        emit(f"ACK {result.number} {result.jws}")


if __name__ == "__main__":
    sys.exit(main(sys.argv))
