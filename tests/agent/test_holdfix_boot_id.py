"""The boot's id tells the holds journaled in this boot from another boot's.

Each boot's boot clock starts near zero, so a boot clock reading alone cannot say whether a
journaled ``closing.held`` is of this boot: a new boot's clock soon passes the value an
earlier boot journaled a minute after it started.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from agent.clock import FrozenClock, SystemClock, WallJump
from agent.closings import journal_hold, journaled_holds
from agent.receipts import ReceiptService
from storage.journal import append_event

REGISTER = "KASSE-1"
DEC_20 = dt.datetime(2026, 12, 20, 9, 0, tzinfo=dt.UTC)
YEAR_END = dt.datetime(2026, 12, 31, 22, 59, 30, tzinfo=dt.UTC)  # 23:59:30 in Vienna


class TestTheClocks:
    def test_the_system_clock_has_the_kernels_boot_id(self) -> None:
        """The id the kernel made at this boot, the same for every clock of it."""
        kernel = Path("/proc/sys/kernel/random/boot_id").read_text(encoding="ascii").strip()
        assert SystemClock().boot_id == SystemClock().boot_id == kernel

    def test_each_frozen_clock_is_a_boot_of_its_own(self) -> None:
        """A new FrozenClock is a new boot; its id may be set (a reboot whose boot clock
        runs on past what the boot before journaled)."""
        first, second = FrozenClock(DEC_20), FrozenClock(DEC_20)
        assert first.boot_id != second.boot_id
        first.boot_id = second.boot_id
        assert first.boot_id == second.boot_id


class TestAJournaledHold:
    def test_it_is_taken_up_only_in_its_own_boot(
        self, service: ReceiptService, clock: FrozenClock
    ) -> None:
        """The same boot clock reading, 10 minutes after the jump: the boot that journaled
        it holds, another boot does not."""
        jump = WallJump(DEC_20, YEAR_END, (YEAR_END - DEC_20).total_seconds(), clock.boottime())
        with service.db.write_connection().transaction() as conn:
            journal_hold(
                conn, REGISTER, ["2026-12"], jump, YEAR_END.isoformat(), boot_id=clock.boot_id
            )
        clock.advance(600)
        assert _holds(service, clock) == (1, True)
        clock.boot_id = "another-boot"
        assert _holds(service, clock) == (0, False)

    def test_one_journaled_without_a_boot_id_is_another_boots(
        self, service: ReceiptService, clock: FrozenClock
    ) -> None:
        """A ``closing.held`` as journaled before the boot id was (after an upgrade, its
        boot clock may look like this boot's): not taken up."""
        data = {
            "periods": ["2026-12"],
            "jump_seconds": (YEAR_END - DEC_20).total_seconds(),
            "before": DEC_20.isoformat(),
            "after": YEAR_END.isoformat(),
            "until": YEAR_END.isoformat(),
            "boot": clock.boottime(),
            "settle_seconds": 3600.0,
        }
        with service.db.write_connection().transaction() as conn:
            at = YEAR_END.isoformat()
            append_event(conn, kind="closing.held", register_id=REGISTER, at=at, data=data)
        clock.advance(600)
        assert _holds(service, clock) == (0, False)


def _holds(service: ReceiptService, clock: FrozenClock) -> tuple[int, bool]:
    """How many journaled holds a service started now takes up, and whether one refuses
    the hand-issued Jahresbeleg."""
    with service.db.read_connection() as conn:
        resumed = journaled_holds(conn, clock)
    return len(resumed), any(jump.covers(YEAR_END) for _, jump in resumed)
