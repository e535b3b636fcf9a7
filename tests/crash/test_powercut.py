"""Cut the power of a real till process at random moments while it issues receipts.

A SIGKILL leaves the operating system's page cache intact: whatever the process wrote
reaches the disk later, synced or not. A power cut keeps only what was synced. This test
models that with ``powercut_shim.c``, preloaded into the till process: after every
successful ``fsync``/``fdatasync`` of the till database or its WAL it copies the file
aside, before the call returns to SQLite. After a SIGKILL at a random moment, the test puts
those copies in place of the files (the ``-shm`` index goes, as after a reboot), so the
database holds exactly what was synced, and then checks what the SIGKILL test checks
(tests/crash/test_sigkill.py: every acknowledged receipt present byte for byte, numbers
1..n, chain, signatures, counter, register row, journal hash chain; the DEP verifies at
the end). A receipt committed but not yet acknowledged may be lost; that is allowed.

Half of the cuts lose every unsynced write (whole files rolled back to their last sync);
the other half keep a random part of them, sector by sector in any order (torn writes,
which SQLite's WAL checksums must catch). Directory entries are assumed durable (the
files exist before the first round). A negative control runs the same rounds with the commits at
``synchronous=NORMAL``: there the model loses acknowledged receipts at once, which shows
the test can fail.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from crash.test_sigkill import Verified, check_database, kill_child, verify_final_dep

from agent.signing import create_software_unit
from storage.db import DB_FILE, open_till_db
from zygote import Zygote

CHILD = Path(__file__).resolve().parent / "child.py"
SHIM_SOURCE = Path(__file__).resolve().parent / "powercut_shim.c"
CUTS = 200
SEED = int(os.environ.get("CRASH_SEED", "20261202"))
_SYNCED = (DB_FILE, f"{DB_FILE}-wal")  # what the shim copies aside
_VOLATILE = (f"{DB_FILE}-shm", f"{DB_FILE}-journal")  # never kept across a cut here
_SECTOR = 512
TORN_SHARE = 0.5  # cuts where some unsynced writes reach the disk (see cut_power)


@pytest.fixture(scope="module")
def shim(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The preload library, built from its C source with the machine's compiler."""
    compiler = shutil.which("gcc") or shutil.which("cc")
    if compiler is None:  # pragma: no cover - every CI machine has gcc
        pytest.skip("the power-cut test builds a small C library: apt-get install gcc")
    library = tmp_path_factory.mktemp("shim") / "powercut.so"
    flags = ["-O2", "-Wall", "-Werror", "-shared", "-fPIC"]
    subprocess.run([compiler, *flags, "-o", str(library), str(SHIM_SOURCE), "-ldl"], check=True)
    return library


def cut_power(data_dir: Path, kept: Path, torn: random.Random | None = None) -> None:
    """Leave the data directory as a power cut would: each file as of its last sync.

    With ``torn``, some of what was written after the last sync reached the disk anyway,
    in any order: each 512-byte sector that differs keeps its new contents with even odds,
    and the file keeps its synced or its new length (sectors are written whole, as SQLite
    assumes by default).
    """
    for name in _SYNCED:
        synced = (kept / name).read_bytes() if (kept / name).exists() else None
        written = (data_dir / name).read_bytes() if (data_dir / name).exists() else None
        if torn is not None and written is not None:
            synced = _torn(synced or b"", written, torn)
        if synced is None:  # never synced: its contents never reached the disk
            (data_dir / name).unlink(missing_ok=True)
        else:
            (data_dir / name).write_bytes(synced)
    for name in _VOLATILE:
        (data_dir / name).unlink(missing_ok=True)


def _torn(synced: bytes, written: bytes, rng: random.Random) -> bytes:
    size = rng.choice((len(synced), len(written)))
    disk = bytearray(synced[:size].ljust(size, b"\0"))
    for start in range(0, min(size, len(written)), _SECTOR):
        new = written[start : start + _SECTOR]
        if new != disk[start : start + len(new)] and rng.random() < 0.5:
            disk[start : start + len(new)] = new
    return bytes(disk)


def keep_as_synced(data_dir: Path, kept: Path) -> None:
    """After a clean close (the test's checks), the files on disk are the synced ones."""
    for name in _SYNCED:
        if (data_dir / name).exists():
            shutil.copyfile(data_dir / name, kept / name)
        else:
            (kept / name).unlink(missing_ok=True)


class Till:
    """A data directory, its synced copies and a zygote whose children run the shim."""

    def __init__(self, tmp_path: Path, shim: Path, env: dict[str, str] | None = None) -> None:
        self.key_dir, self.data_dir = tmp_path / "keys", tmp_path / "data"
        self.kept = tmp_path / "synced"
        self.kept.mkdir()
        create_software_unit(self.key_dir, name="crash")
        open_till_db(self.data_dir).close()  # created and migrated before the first cut
        keep_as_synced(self.data_dir, self.kept)
        preload = {
            "LD_PRELOAD": str(shim),
            "POWERCUT_SHADOW": str(self.kept),
            "POWERCUT_WATCH": DB_FILE,
        }
        self.zygote = Zygote(CHILD, env=preload | (env or {}))

    def round(
        self, rng: random.Random, round_no: int, registered: bool
    ) -> tuple[list[tuple[int, str]], str]:
        """Start a child, SIGKILL it at a random moment, leave what a power cut would."""
        proc = self.zygote.spawn(
            [str(self.data_dir), str(self.key_dir), f"{SEED}-{round_no}"],
            cwd=self.data_dir.parent,
        )
        assert proc.stdin is not None
        proc.stdin.close()  # the child starts at once (no --wait)
        acks, how = kill_child(proc, rng, round_no, registered)
        torn = rng.random() < TORN_SHARE
        cut_power(self.data_dir, self.kept, random.Random(rng.random()) if torn else None)
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
            keep_as_synced(till.data_dir, till.kept)
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
            keep_as_synced(till.data_dir, till.kept)
    finally:
        till.close()
    assert "acknowledged receipts lost" in failure, failure or "10 cuts lost no ACKed receipt"
