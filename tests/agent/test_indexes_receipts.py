"""The queries run every second, per status request or inside a Storno's write transaction
read only the rare receipts they look for (the partial indexes of migration 0009), never
the history of a till that has sold for years; and an ordinary sale writes none of those
indexes, so its commit writes no page more than before."""

from __future__ import annotations

import datetime as dt
import functools
import io
import re
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event

import storage.db
from agent.api_backend import _REGISTERS, ServiceBackend
from agent.backup import _LATE_SAID
from agent.checks import _UNTRACKED, _to_adopt
from agent.clock import FrozenClock
from agent.export import export_dep
from agent.fakes.chain_service import ChainServiceFake
from agent.receipts import PROBE_TARGETS, ReceiptService, RegisterSetup
from agent.remedy import STORNOS_OF, UNRESOLVED
from agent.sale_draft import VOIDED, _voidable
from agent.signing import UnitConfig
from agent.signing.config import DEV_ZDA
from agent.signing.registry import UnitRegistry
from factories import add_unit, sale
from storage import TillDB

REGISTER = "KASSE-1"
_KINDS = ("standard", "training")
PARTIAL = ("ix_receipts_unsigned", "ix_receipts_voids", "ix_receipts_start_yearly")

# each query, the alias it gives the table it must not read whole, the partial index it
# reads it through, and its parameters
QUERIES: dict[str, tuple[str, str, str, tuple[Any, ...]]] = {
    "probe_targets": (PROBE_TARGETS, "r", "ix_receipts_unsigned", ()),
    "remedy.unresolved": (UNRESOLVED, "r", "ix_receipts_unsigned", (REGISTER, REGISTER)),
    "remedy.unresolved, all": (UNRESOLVED, "r", "ix_receipts_unsigned", (None, None)),
    "status": (_REGISTERS, "x", "ix_receipts_unsigned", ()),
    "storno voided": (VOIDED, "receipts", "ix_receipts_voids", (REGISTER, 2)),
    "remedy stornos": (STORNOS_OF, "receipts", "ix_receipts_voids", (REGISTER, 2)),
    "checks adoption": (_UNTRACKED, "x", "ix_receipts_start_yearly", (DEV_ZDA,)),
    "backup_late": (_LATE_SAID, "journal", "ix_journal_backup_late", (REGISTER, "b", 1)),
}


def _plan(conn: sqlite3.Connection, sql: str, params: tuple[Any, ...]) -> list[str]:
    return [str(row[3]) for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}", params)]


class TestPlans:
    @pytest.fixture(name="chain_hold")
    def _chain_hold(self) -> float:
        return 0.2

    @pytest.fixture(name="history")
    def _history(self, chain_service: ReceiptService, chain: ChainServiceFake) -> TillDB:
        """Sales, Stornos and training receipts on a chain unit, then a sale whose answer
        was lost: an unsigned receipt, not yet remedied."""
        service = chain_service
        for i in range(60):
            issued = service.issue(sale(request_id=f"s{i}", kind=_KINDS[i % 7 == 6]))
            if i % 10 == 3 and issued.kind == "standard":
                storno = {"request_id": f"v{i}", "register": REGISTER, "kind": "storno"}
                service.issue({**storno, "voids": issued.number})
        chain.mode = "lose_request"
        assert service.issue(sale(request_id="lost")).signature_state == "unsigned"
        return service.db

    @pytest.mark.parametrize("analyzed", [False, True], ids=["no-statistics", "analyzed"])
    def test_each_query_reads_its_partial_index(self, history: TillDB, analyzed: bool) -> None:
        """EXPLAIN QUERY PLAN of each query as the code runs it: the receipts (or the
        journal) are read through the partial index its WHERE implies, never scanned
        whole or sought by register alone, also after ANALYZE."""
        with history.write_connection().transaction() as conn:
            if analyzed:
                conn.execute("ANALYZE")
            plans = {name: _plan(conn, q[0], q[3]) for name, q in QUERIES.items()}
            unsigned = conn.execute(UNRESOLVED, (None, None)).fetchall()
        wrong = {}
        for name, (_, alias, index, _params) in QUERIES.items():
            on_table = [s for s in plans[name] if re.match(rf"(SCAN|SEARCH) {alias}\b", s)]
            used = rf"(SCAN|SEARCH) {alias} USING (COVERING )?INDEX {index}\b"
            if not on_table or not all(re.match(used, s) for s in on_table):
                wrong[name] = on_table
        assert wrong == {}, plans
        assert [row["request_id"] for row in unsigned] == ["lost"]


class _Steps:
    """Counts the SQLite VM instructions the till's pooled readers run (one call of the
    progress handler per ``EVERY`` instructions)."""

    EVERY = 10

    def __init__(self) -> None:
        self.count = 0

    def tick(self) -> int:
        self.count += 1
        return 0

    def watch(self, conn: sqlite3.Connection) -> sqlite3.Connection:
        conn.set_progress_handler(self.tick, self.EVERY)
        return conn

    def of(self, fn: Callable[[], object]) -> int:
        self.count = 0
        fn()
        return self.count * self.EVERY


class TestScale:
    """The cost of each look-up on 100 and on 5,000 receipts of the register: what the
    look-ups read stays the same (a read of the history showed as 50 times as many VM
    instructions), so it is counted, not timed."""

    SMALL, LARGE = 100, 5_000

    @pytest.fixture(name="fast_db")
    def _fast_db(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, open_db: Callable[..., TillDB]
    ) -> TillDB:
        """The till database without fsync (only to build the history fast: the rows are
        the ones the service writes)."""
        fast = functools.partial(storage.db.make_engine, synchronous="OFF")
        monkeypatch.setattr(storage.db, "make_engine", fast)
        return open_db(tmp_path / "data")

    @pytest.fixture(name="steps")
    def _steps(self, fast_db: TillDB) -> Iterator[_Steps]:
        steps = _Steps()

        def on_connect(conn: sqlite3.Connection, _record: object) -> None:
            steps.watch(conn)

        event.listen(fast_db.engine, "connect", on_connect)
        fast_db.engine.dispose()  # the pooled readers reconnect, watched
        yield steps
        event.remove(fast_db.engine, "connect", on_connect)

    def _sell(self, service: ReceiptService, clock: FrozenClock, upto: int) -> int:
        """Sales every 5 minutes, every 50th voided by a Storno, until the register has
        ``upto`` receipts; the number of the last sale (not voided)."""
        last = sold = 0
        while last < upto:
            clock.advance(300)
            last = sold = service.issue(sale(request_id=f"s{last}")).number
            if sold % 50 == 0 and sold < upto - 1:
                storno = {"request_id": f"v{sold}", "register": REGISTER, "kind": "storno"}
                last = service.issue({**storno, "voids": sold}).number
        return sold

    def _costs(self, service: ReceiptService, steps: _Steps, last: int) -> dict[str, int]:
        backend = ServiceBackend(service)
        raw = steps.watch(sqlite3.connect(service.db.path))
        raw.row_factory = sqlite3.Row
        first_day = dt.date(2026, 3, 2)
        try:
            return {
                "probe_targets": steps.of(service.probe_targets),
                "unsigned": steps.of(service.unsigned),
                "status": steps.of(backend.status),
                "storno voided": steps.of(lambda: _voidable(raw, REGISTER, last)),
                "checks adoption": steps.of(lambda: _to_adopt(raw, service.clock.now())),
                "backup_late": steps.of(
                    lambda: raw.execute(_LATE_SAID, (REGISTER, "b", 1)).fetchall()
                ),
                "export of a day": steps.of(
                    lambda: export_dep(
                        service.db, REGISTER, io.StringIO(), start=first_day, end=first_day
                    )
                ),
            }
        finally:
            raw.close()

    def test_the_lookups_cost_the_same_on_50_times_the_receipts(
        self,
        fast_db: TillDB,
        steps: _Steps,
        registry: UnitRegistry,
        unit_config: UnitConfig,
        clock: FrozenClock,
    ) -> None:
        """The probe, the status, a Storno's check, the remedy's and the check watch's
        look-ups and a one-day export (its receipts are the same: the first day's) cost
        no more on 5,000 receipts than on 100, but for the export's bisection (a seek
        more per doubling of the receipts)."""
        add_unit(fast_db, registry, unit_config)
        service = ReceiptService(fast_db, registry, clock=clock)
        service.init_register(RegisterSetup(REGISTER, ["dev"]))
        small = self._costs(service, steps, self._sell(service, clock, self.SMALL))
        large = self._costs(service, steps, self._sell(service, clock, self.LARGE))
        grown = {
            name: (cost, large[name]) for name, cost in small.items() if large[name] > cost + 500
        }
        assert grown == {}, (small, large)


class TestCommitPages:
    @staticmethod
    def _written_pages(service: ReceiptService, body: dict[str, Any]) -> set[int]:
        """The pages the commit of ``body`` writes: the frames of the write-ahead log,
        emptied before."""
        path = service.db.path
        with sqlite3.connect(path) as conn:
            busy = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
            page_size = int(conn.execute("PRAGMA page_size").fetchone()[0])
        assert busy == 0
        service.issue(body)
        wal = Path(f"{path}-wal").read_bytes()
        frames = range(32, len(wal), 24 + page_size)
        return {int.from_bytes(wal[at : at + 4], "big") for at in frames}

    def test_an_ordinary_sale_writes_no_page_of_the_partial_indexes(
        self, service: ReceiptService
    ) -> None:
        """A signed sale's commit writes none of the partial indexes' pages (their entries
        are Stornos, unsigned receipts, Start- and Jahresbelege); a Storno's writes the
        Storno index, which shows the pages are told apart."""
        for i in range(20):
            service.issue(sale(request_id=f"s{i}"))
        with sqlite3.connect(service.db.path) as conn:
            roots = dict(
                conn.execute(
                    "SELECT name, rootpage FROM sqlite_master WHERE name IN (?, ?, ?)", PARTIAL
                ).fetchall()
            )
        assert sorted(roots) == sorted(PARTIAL)
        for i in range(5):
            written = self._written_pages(service, sale(request_id=f"t{i}"))
            assert written, "the sale wrote nothing?"
            assert not written & set(roots.values()), (written, roots)
        storno = {"request_id": "v", "register": REGISTER, "kind": "storno", "voids": 2}
        assert roots["ix_receipts_voids"] in self._written_pages(service, storno)
