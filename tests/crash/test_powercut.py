"""Cut the power of a real till process at 200 random moments while it issues receipts.

(``CRASH_CUTS=N`` runs N cuts instead, ``CRASH_SEED`` changes the seed.)

Each round starts ``tests/crash/child.py`` with the power-cut shim preloaded
(tests/powercut.py: the database files keep only what was synced), SIGKILLs it at a
random moment like the SIGKILL test does, and leaves the files as a power cut would: half
of the cuts lose every unsynced write, the other half keep a random part of them, torn
sector by sector. Then it checks what the SIGKILL test checks (tests/crash/test_sigkill.py:
every acknowledged receipt present byte for byte, numbers 1..n, chain, signatures,
counter, register row, journal hash chain; the DEP verifies at the end). A receipt
committed but not yet acknowledged may be lost; its number is then issued again.

A negative control runs the same rounds with the commits at ``synchronous=NORMAL`` (no
fsync per commit): the model loses acknowledged receipts at once, so this test can fail.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import time
from pathlib import Path

import pytest

from agent.signing import create_software_unit
from crash.test_sigkill import (
    ChildOutput,
    Verified,
    check_database,
    kill_child,
    verify_final_dep,
)
from powercut import PowerCut, build_shim
from storage.db import open_till_db
from zygote import Forked, Zygote

CHILD = Path(__file__).resolve().parent / "child.py"
CUTS = int(os.environ.get("CRASH_CUTS", "200"))  # more for a soak run
SEED = int(os.environ.get("CRASH_SEED", "20261202"))
TORN_SHARE = 0.5  # cuts where some unsynced writes reach the disk anyway


@pytest.fixture(scope="module")
def shim(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_shim(tmp_path_factory.mktemp("shim"))


class Till:
    """A data directory, its synced copies and a zygote whose children run the shim."""

    def __init__(
        self, tmp_path: Path, shim: Path, env: dict[str, str] | None = None, *, new: bool = False
    ) -> None:
        """``new``: the children create the database themselves (under the shim)."""
        self.key_dir, self.data_dir = tmp_path / "keys", tmp_path / "data"
        create_software_unit(self.key_dir, name="crash")
        if not new:
            open_till_db(self.data_dir).close()  # created and migrated before the first cut
        self.power = PowerCut(shim, self.data_dir, tmp_path / "synced")
        self.power.keep()
        self.zygote = Zygote(CHILD, env=self.power.env() | (env or {}))

    def start(self, name: str) -> Forked:
        proc = self.zygote.spawn(
            [str(self.data_dir), str(self.key_dir), name], cwd=self.data_dir.parent
        )
        assert proc.stdin is not None
        proc.stdin.close()  # the child starts at once (no --wait)
        return proc

    def round(
        self, rng: random.Random, round_no: int, registered: bool
    ) -> tuple[list[tuple[int, str]], str]:
        """Start a child, SIGKILL it at a random moment, leave what a power cut would."""
        acks, how = kill_child(self.start(f"{SEED}-{round_no}"), rng, round_no, registered)
        torn = rng.random() < TORN_SHARE
        self.power.cut(random.Random(rng.random()) if torn else None)
        return acks, f"{how}, {'torn' if torn else 'clean'} cut"

    def close(self) -> None:
        self.zygote.close()


@pytest.mark.slow
def test_a_power_cut_while_issuing_never_loses_an_acknowledged_receipt(
    tmp_path: Path, shim: Path
) -> None:
    rng = random.Random(SEED)
    till = Till(tmp_path, shim)
    acked: dict[int, str] = {}
    seen = Verified()
    total_acks = 0
    started = time.monotonic()
    try:
        for round_no in range(CUTS):
            acks, how = till.round(rng, round_no, registered=bool(seen.jws))
            where = f"seed {SEED} (CRASH_SEED), power cut {round_no}, {how}"
            for number, jws in acks:
                assert acked.setdefault(number, jws) == jws, (
                    f"{where}: number {number} acknowledged twice with different receipts"
                )
            total_acks += len(acks)
            check_database(till.data_dir, acked, seen, where)  # every ACK is still there
            till.power.keep()  # the check closed the database cleanly
    finally:
        till.close()

    verify_final_dep(till.data_dir, len(seen.jws), f"seed {SEED}, after the last power cut")
    print(
        f"\npower-cut test (seed {SEED}): {CUTS} cuts, {total_acks} ACKs, "
        f"{len(seen.jws)} receipts kept, {time.monotonic() - started:.1f} s"
    )
    assert total_acks >= CUTS, f"seed {SEED}: too few receipts were issued to mean anything"


@pytest.mark.slow
def test_the_model_loses_acknowledged_receipts_when_commits_are_not_synced(
    tmp_path: Path, shim: Path
) -> None:
    """The negative control: the same rounds with ``synchronous=NORMAL`` commits (no sync
    per commit) lose acknowledged receipts, so the test above can fail."""
    rng = random.Random(SEED)
    till = Till(tmp_path, shim, env={"CRASH_SYNCHRONOUS": "NORMAL"})
    acked: dict[int, str] = {}
    seen = Verified()
    failure = ""
    try:
        for round_no in range(10):
            acks, how = till.round(rng, round_no, registered=bool(seen.jws))
            acked.update(acks)
            try:
                check_database(till.data_dir, acked, seen, f"round {round_no}, {how}")
            except AssertionError as exc:
                failure = str(exc)
                break
            till.power.keep()
    finally:
        till.close()
    assert "acknowledged receipts lost" in failure, failure or "10 cuts lost no ACKed receipt"


@pytest.mark.slow
def test_a_power_cut_just_after_the_first_receipts_of_a_new_database_keeps_them(
    tmp_path: Path, shim: Path
) -> None:
    """The till process creates its database (the file, the switch to WAL, the schema)
    and acknowledges its Startbeleg and first sales: a cut 0-5 ms after the first ACK, 20
    times on a new database each time, loses none of them. (SQLite drops a WAL whose
    database file is still empty, so the creation must be synced before the first ACK.)"""
    rng = random.Random(SEED)
    till = Till(tmp_path, shim, new=True)
    total_acks = 0
    try:
        for round_no in range(20):
            for directory in (till.data_dir, till.power.kept):
                shutil.rmtree(directory, ignore_errors=True)
            till.power.kept.mkdir()
            proc = till.start(f"{SEED}-new-{round_no}")
            output = ChildOutput(proc)
            try:
                assert output.wait_for("ACK ", 60), f"round {round_no}: no ACK"
                time.sleep(rng.uniform(0, 0.005))
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=60)
                output.drain()
            finally:
                if proc.poll() is None:  # pragma: no cover - only when a check failed
                    proc.kill()
                    proc.wait()
                for pipe in (proc.stdout, proc.stderr):
                    if pipe is not None:
                        pipe.close()
            torn = rng.random() < TORN_SHARE
            till.power.cut(random.Random(rng.random()) if torn else None)
            acked = dict(output.acks())
            total_acks += len(acked)
            where = f"seed {SEED}, new database {round_no}, {'torn' if torn else 'clean'} cut"
            check_database(till.data_dir, acked, Verified(), where)
    finally:
        till.close()
    assert total_acks >= 20
