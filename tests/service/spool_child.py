"""A till process for the spool SIGKILL test: ingests the spool until it is killed.

Run as ``python tests/service/spool_child.py DATA_DIR KEY_DIR SPOOL_DIR``. It opens (creates,
migrates) the till database, stores the unit and initializes register ``SPOOL-1`` if they
are missing, starts a :class:`SpoolIngestor` on SPOOL_DIR and writes ``READY`` to stdout.
Then it only waits: the test kills it with SIGKILL at a random moment.
"""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # the project is not necessarily installed in the venv
    sys.path.insert(0, str(ROOT))

from agent.api_backend import ServiceBackend  # noqa: E402
from agent.receipts import ReceiptService, RegisterSetup  # noqa: E402
from agent.signing import UnitConfig, open_unit  # noqa: E402
from agent.signing.registry import UnitRegistry, store_unit  # noqa: E402
from agent.spool import Spool, SpoolIngestor  # noqa: E402
from storage.db import open_till_db  # noqa: E402

REGISTER = "SPOOL-1"
UNIT_ID = "spool-unit"


def main(argv: list[str]) -> int:
    data_dir, key_dir, spool_dir = (Path(a) for a in argv[1:4])
    db = open_till_db(data_dir)
    config = UnitConfig(
        id=UNIT_ID,
        kind="software",
        zda="AT1",
        key_file=key_dir / "spool.key.pem",
        certificate_file=key_dir / "spool.cert.pem",
    )
    unit = open_unit(config)
    registry = UnitRegistry()
    registry.put(unit)
    service = ReceiptService(db, registry)
    with db.write_connection().transaction() as conn:
        if conn.execute("SELECT 1 FROM units WHERE id = ?", (UNIT_ID,)).fetchone() is None:
            store_unit(conn, config, unit, "2026-01-01T00:00:00+00:00")
        registered = conn.execute("SELECT 1 FROM registers WHERE id = ?", (REGISTER,)).fetchone()
    if registered is None:
        service.init_register(RegisterSetup(REGISTER, [UNIT_ID]))
    ingestor = SpoolIngestor(Spool(spool_dir), ServiceBackend(service).issue_sale, rescan_s=0.05)
    ingestor.start()
    os.write(1, b"READY\n")
    threading.Event().wait()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
