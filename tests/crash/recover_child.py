"""A till process for the recovery SIGKILL test.

``python tests/crash/recover_child.py DATA_DIR KEY_DIR outage N``: with the unit down,
issue N sales (the first opens an outage, all are fallback receipts), print ``OUTAGE``.

``python tests/crash/recover_child.py DATA_DIR KEY_DIR recover``: the unit is back but
slow (each signature takes 0.1 s, well inside the deadline); probe it, print
``PROBED``, then recover (issue the Sammelbeleg and close the outage in one
transaction) and print ``DONE <numbers>``. The test kills it somewhere after PROBED.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from agent.receipts import ReceiptService, RegisterSetup  # noqa: E402
from agent.signing import UnitConfig, open_unit  # noqa: E402
from agent.signing.flaky import FlakyUnit  # noqa: E402
from agent.signing.registry import UnitRegistry, store_unit  # noqa: E402
from storage.db import open_till_db  # noqa: E402

REGISTER = "RECOVER-1"
UNIT_ID = "crash-unit"


def emit(line: str) -> None:
    os.write(1, (line + "\n").encode("ascii"))


def main(argv: list[str]) -> int:
    data_dir, key_dir, mode = Path(argv[1]), Path(argv[2]), argv[3]
    db = open_till_db(data_dir)
    config = UnitConfig(
        id=UNIT_ID,
        kind="software",
        zda="AT1",
        key_file=key_dir / "crash.key.pem",
        certificate_file=key_dir / "crash.cert.pem",
    )
    flaky = FlakyUnit(open_unit(config), delay=0.1)
    registry = UnitRegistry()
    registry.put(flaky)
    service = ReceiptService(db, registry, sign_timeout=3.0)
    with db.write_connection().transaction() as conn:
        if conn.execute("SELECT 1 FROM units WHERE id = ?", (UNIT_ID,)).fetchone() is None:
            store_unit(conn, config, flaky, "2026-01-01T00:00:00+00:00")
        fresh = conn.execute("SELECT 1 FROM registers WHERE id = ?", (REGISTER,)).fetchone()
    if fresh is None:
        service.init_register(RegisterSetup(REGISTER, [UNIT_ID]))
    if mode == "outage":
        flaky.mode = "down"
        count = int(argv[4])
        base = service.get(REGISTER, 1).number  # any read; numbers continue
        for i in range(count):
            sale = {
                "request_id": f"o-{os.getpid()}-{i}-{base}",
                "register": REGISTER,
                "kind": "standard",
                "lines": [{"text": "Brot", "qty": "1", "unit_price": "2.80", "vat": "reduced1"}],
                "payments": [{"method": "cash", "amount": "2.80"}],
            }
            service.issue(sale)
        emit("OUTAGE")
        return 0
    flaky.mode = "slow"
    flaky.probe(deadline=service.clock.monotonic() + 3.0)
    emit("PROBED")
    issued = service.recover(REGISTER)
    emit("DONE " + " ".join(str(r.number) for r in issued or []))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
