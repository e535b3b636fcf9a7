"""A print worker in a process of its own, for test_fixprint_notice.py: one pass.

Usage: ``notice_child.py DATA_DIR PORT then``: opens the till database in DATA_DIR, sends
the queued jobs to the network printer on 127.0.0.1:PORT (1 s timeout) in one pass of
the worker, prints ``<jobs sent> <printer state>`` and then, with ``then`` = ``hang``,
waits to be killed (SIGKILL), with ``exit`` closes the database and exits.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from agent.print_worker import PrintWorker
from agent.printing import NetworkPrinter
from agent.receipts import ReceiptService
from agent.signing.registry import UnitRegistry
from storage import open_till_db


def main() -> None:
    data_dir, port, then = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    db = open_till_db(data_dir, create=False)
    printer = NetworkPrinter("127.0.0.1", port, timeout=1.0)
    worker = PrintWorker(ReceiptService(db, UnitRegistry()), printer, retry_s=0)
    sent = worker.run_once()
    print(f"{sent} {worker.status().state}", flush=True)
    if then == "hang":
        time.sleep(600)  # until the test kills it
    db.close()


if __name__ == "__main__":
    main()
