"""``till-agent special KASSE-1 monthly|yearly`` while a jump of the clock settles.

The command line cannot run beside the service (the writer lock), so it learns of the hold
from the service's journal (``closing.held``, with the boot clock of the jump): within an
hour of the boot clock it refuses the closing (exit 4, rule ``clock-jump-hold``) unless
``--yes`` confirms the date, as it confirms a Schlussbeleg.
"""

from __future__ import annotations

import datetime as dt
import json

import pytest

from agent.clock import SystemClock
from agent.receipts import ReceiptService, RegisterSetup
from agent.signing import UnitConfig
from agent.signing.registry import UnitRegistry
from factories import Run, add_unit, expect, flat
from storage import TillDB

REGISTER = "KASSE-1"
DEC_20 = dt.datetime(2026, 12, 20, 9, 0, tzinfo=dt.UTC)
YEAR_END = dt.datetime(2026, 12, 31, 22, 59, 30, tzinfo=dt.UTC)  # 23:59:30 in Vienna


@pytest.mark.usefixtures("no_system_config")
def test_special_yearly_is_refused_during_the_hold_and_issued_with_yes(
    run: Run,
    db: TillDB,
    registry: UnitRegistry,
    unit_config: UnitConfig,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The service saw its clock jump from 20 December to 31 December 23:59:30 and held
    the Jahresbeleg; stopped, and the operator issues it by hand on the same boot: exit 4
    naming the rule and --yes; with --yes it is issued, signed."""
    wall = [DEC_20]  # the machine's wall clock, read by the service and the command alike
    monkeypatch.setattr(SystemClock, "now", lambda _self: wall[0])
    add_unit(db, registry, unit_config)
    service = ReceiptService(db, registry, clock=SystemClock())  # the real boot clock
    service.init_register(RegisterSetup(REGISTER, ["dev"]))
    wall[0] = YEAR_END
    assert service.run_closings() == []
    db.close()  # the service stops: the command takes the writer lock
    data_dir = str(db.path.parent)
    refused = expect(run("special", REGISTER, "yearly", "--data-dir", data_dir), 4)
    said = flat(refused.stderr)
    assert "[clock-jump-hold]" in said
    assert "--yes" in said
    body = json.loads(
        expect(run("special", REGISTER, "yearly", "--json", "--data-dir", data_dir), 4).stdout
    )
    assert body["error"] == "RegisterStateError"
    issued = run("special", REGISTER, "yearly", "--yes", "--json", "--data-dir", data_dir)
    receipt = json.loads(expect(issued, 0).stdout)
    assert (receipt["kind"], receipt["signature_state"]) == ("yearly", "signed")


@pytest.mark.usefixtures("no_system_config")
def test_special_yearly_in_another_boot_is_issued(
    run: Run,
    db: TillDB,
    registry: UnitRegistry,
    unit_config: UnitConfig,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The service held the Jahresbeleg; the machine reboots and the command runs on a
    boot clock that has passed the journaled one (here: this machine's, moments later):
    another boot id, so no process of this boot saw the jump and it is issued, signed."""
    wall = [DEC_20]
    monkeypatch.setattr(SystemClock, "now", lambda _self: wall[0])
    add_unit(db, registry, unit_config)
    service = ReceiptService(db, registry, clock=SystemClock())
    service.init_register(RegisterSetup(REGISTER, ["dev"]))
    wall[0] = YEAR_END
    assert service.run_closings() == []
    db.close()
    rebooted = property(lambda _self: "the-next-boot")
    monkeypatch.setattr(SystemClock, "boot_id", rebooted, raising=False)
    issued = run("special", REGISTER, "yearly", "--json", "--data-dir", str(db.path.parent))
    receipt = json.loads(expect(issued, 0).stdout)
    assert (receipt["kind"], receipt["signature_state"]) == ("yearly", "signed")
