"""SIGKILL a real till process between the probe's success and the Sammelbeleg's commit.

Each round opens an outage (fallback receipts), then starts a recovery that is killed at
a random moment 0-250 ms after the probe succeeded: before the Sammelbeleg transaction,
inside it (the slow unit is signing) or after its commit. After every kill the database
must show the outage either still open with no Sammelbeleg, or closed by exactly one;
a restarted recovery then closes it with exactly one Sammelbeleg, never two. The DEP of
all rounds passes the verifier.
"""

from __future__ import annotations

import io
import json
import random
import signal
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.at_rksv.verify import verify_dep
from agent.export import export_container, export_dep
from agent.signing import create_software_unit
from storage.db import open_till_db
from zygote import Zygote

CHILD = Path(__file__).resolve().parent / "recover_child.py"
REGISTER = "RECOVER-1"
ROUNDS = 20
SEED = 4711


def _run(zygote: Zygote, data: Path, keys: Path, *args: str) -> str:
    child = zygote.spawn([str(data), str(keys), *args])
    child.stdin.close()
    try:
        out = child.stdout.read()
        err = child.stderr.read()
        assert child.wait(timeout=60) == 0, err.decode()
        return out.decode()
    finally:
        child.stdout.close()
        child.stderr.close()


def _kill_after_probe(zygote: Zygote, data: Path, keys: Path, delay: float) -> bool:
    """Start a recovery, SIGKILL it ``delay`` s after PROBED; True if it finished first."""
    child = zygote.spawn([str(data), str(keys), "recover"])
    child.stdin.close()
    try:
        assert child.stdout.readline() == b"PROBED\n", child.stderr.read().decode()
        time.sleep(delay)
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
        rest = child.stdout.read()
        return rest.startswith(b"DONE")
    finally:
        child.stdout.close()
        child.stderr.close()


def _state(data: Path) -> tuple[list[tuple[int, int | None, str | None]], list[int]]:
    conn = sqlite3.connect(data / "till.sqlite3")
    try:
        outages = [
            (int(i), n, e)
            for i, n, e in conn.execute(
                "SELECT id, sammelbeleg_number, ended_at FROM outages ORDER BY id"
            )
        ]
        sammel = [
            int(r[0])
            for r in conn.execute(
                "SELECT number FROM receipts WHERE kind = 'sammelbeleg' ORDER BY number"
            )
        ]
        return outages, sammel
    finally:
        conn.close()


def _check(data: Path) -> None:
    outages, sammel = _state(data)
    closed = [n for _, n, end in outages if end is not None]
    assert sorted(n for n in closed if n is not None) == sammel, (outages, sammel)
    assert sum(1 for _, _, end in outages if end is None) <= 1


@pytest.fixture(name="zygote")
def _zygote() -> Iterator[Zygote]:
    """Children forked from one interpreter that imported the till code once."""
    with Zygote(CHILD) as zygote:
        yield zygote


def test_sigkill_between_probe_and_sammelbeleg_never_doubles_it(
    tmp_path: Path, zygote: Zygote
) -> None:
    data, keys = tmp_path / "data", tmp_path / "keys"
    create_software_unit(keys, name="crash")
    rng = random.Random(SEED)
    finished_before_kill = 0
    for round_no in range(ROUNDS):
        assert "OUTAGE" in _run(zygote, data, keys, "outage", str(rng.randint(1, 3)))
        finished_before_kill += _kill_after_probe(zygote, data, keys, rng.uniform(0.0, 0.25))
        _check(data)
        outages, _ = _state(data)
        assert "DONE" in _run(zygote, data, keys, "recover")
        _check(data)
        outages, sammel = _state(data)
        assert len(outages) == round_no + 1
        assert all(end is not None for _, _, end in outages)
        assert len(sammel) == len(outages)  # exactly one Sammelbeleg per outage
    # the schedule must have produced kills on both sides of the commit
    assert 0 < finished_before_kill < ROUNDS
    db = open_till_db(data, writer=False)
    try:
        buffer = io.StringIO()
        export_dep(db, REGISTER, buffer)
        report = verify_dep(
            json.loads(buffer.getvalue()), json.loads(export_container(db, REGISTER))
        )
    finally:
        db.close()
    assert report.ok, report.findings[:5]
