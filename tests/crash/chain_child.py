"""A till process issuing receipts against a chain unit, for tests/crash/test_chain_kill.py.

``python tests/crash/chain_child.py DATA_DIR URL TOKEN_FILE``: opens the till database
(the receipt service stores any signing a killed process left), recovers what waits for
the chain service, initializes register CHAIN-1 if it has none, prints ``READY``, waits
for a line on stdin (the test looks at the database and the service meanwhile, while
nothing is in flight), then issues sales forever, printing ``ACK <number> <jws>`` after
each commit.
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
from agent.signing.registry import UnitRegistry, store_unit  # noqa: E402
from storage.db import open_till_db  # noqa: E402

REGISTER = "CHAIN-1"
UNIT_ID = "chain"


def emit(line: str) -> None:
    os.write(1, (line + "\n").encode("ascii"))


def main(argv: list[str]) -> int:
    data_dir, url, token_file = Path(argv[1]), argv[2], Path(argv[3])
    db = open_till_db(data_dir)
    registry = UnitRegistry()
    config = UnitConfig(id=UNIT_ID, kind="chain", zda="AT1", url=url, token_file=token_file)
    unit = open_unit(config)
    registry.put(unit)
    with db.write_connection().transaction() as conn:
        if conn.execute("SELECT 1 FROM units WHERE id = ?", (UNIT_ID,)).fetchone() is None:
            store_unit(conn, config, unit, "2026-01-01T00:00:00+00:00")
    service = ReceiptService(db, registry, sign_timeout=3.0)
    for register_id in service.probe_targets():
        assert service.recover(register_id) is not None
    with db.read_connection() as conn:
        fresh = conn.execute("SELECT 1 FROM registers WHERE id = ?", (REGISTER,)).fetchone()
    if fresh is None:
        service.init_register(RegisterSetup(REGISTER, [UNIT_ID]))
    emit("READY")
    if not sys.stdin.readline():  # the test is done looking (or gone: then nothing to do)
        return 0
    pid = os.getpid()
    for i in range(1_000_000):
        result = service.issue(
            {
                "request_id": f"k-{pid}-{i}",
                "register": REGISTER,
                "kind": "standard",
                "lines": [{"text": "Brot", "qty": "1", "unit_price": "2.80", "vat": "reduced1"}],
                "payments": [{"method": "cash", "amount": "2.80"}],
            }
        )
        emit(f"ACK {result.number} {result.jws}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
