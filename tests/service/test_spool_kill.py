"""SIGKILL the spool ingestor mid-stream, again and again: no sale lost or answered twice.

Each round drops a batch of sale files into ``in/`` (good ones, bad ones and repeats of
earlier request_ids), starts ``spool_child.py`` (forked from one interpreter that imported it once,
tests/zygote.py) and kills it with SIGKILL at a random
moment: before it is ready, while it claims, issues or answers. A last child runs until
the spool is empty. Then every sale file must have exactly one answer, every result must
be the receipt stored for its request_id, and the receipt numbers must have no gap.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.signing import create_software_unit
from agent.spool import Spool
from zygote import Forked, Zygote

CHILD = Path(__file__).resolve().parent / "spool_child.py"
ROUNDS = 30
BATCH = 20
EARLY_SHARE = 0.1  # rounds killed before the child is ready
MAX_DELAY_WHILE_STARTING = 0.15  # a forked child is ready about 0.1 s after its fork
MAX_DELAY_AFTER_READY = 0.08  # a batch takes longer: most kills land mid-stream
SEED = int(os.environ.get("CRASH_SEED", "20261121"))


def drop(spool: Spool, name: str, document: dict[str, Any]) -> None:
    tmp = spool.inbox / f".{name}.tmp"
    with open(tmp, "wb") as file:
        file.write(json.dumps(document).encode())
        file.flush()
        os.fsync(file.fileno())
    os.rename(tmp, spool.inbox / name)


def a_sale(rng: random.Random, n: int) -> dict[str, Any]:
    """A valid sale, now and then a repeat of an earlier request_id or a bad sale."""
    request_id = f"r-{rng.randrange(n)}" if n and rng.random() < 0.1 else f"r-{n}"
    cents = rng.randint(1, 9999)
    amount = f"{cents // 100}.{cents % 100:02d}"
    sale: dict[str, Any] = {
        "request_id": request_id,
        "register": "SPOOL-1",
        "kind": "standard",
        "lines": [{"text": "Kaffee", "qty": "1", "unit_price": amount, "vat": "reduced1"}],
        "payments": [{"method": "cash", "amount": amount}],
    }
    if rng.random() < 0.1:
        sale["payments"] = [{"method": "cash", "amount": "0.01"}] if cents != 1 else []
    return sale


def run_child(zygote: Zygote, args: list[str], rng: random.Random) -> None:
    """Start a child and SIGKILL it: mostly just after READY, sometimes while it starts
    (opening the database, recovering what a killed predecessor left in ``work/``)."""
    proc = zygote.spawn(args)
    try:
        if rng.random() < EARLY_SHARE:
            time.sleep(rng.uniform(0.0, MAX_DELAY_WHILE_STARTING))
        else:
            wait_ready(proc)
            time.sleep(rng.uniform(0.0, MAX_DELAY_AFTER_READY))
    finally:
        proc.kill()
        stderr = finish(proc)
    assert proc.returncode == -signal.SIGKILL, stderr.decode()[-2000:]


def finish(proc: Forked) -> bytes:
    """Wait for a killed child and close its pipes; its stderr."""
    proc.stdin.close()
    proc.stdout.close()
    stderr = proc.stderr.read()
    proc.stderr.close()
    proc.wait(timeout=30)
    return stderr


def wait_ready(proc: Forked) -> None:
    assert proc.stdout.readline() == b"READY\n"


@pytest.fixture(name="zygote")
def _zygote() -> Iterator[Zygote]:
    """Children forked from one interpreter that imported the till code once."""
    with Zygote(CHILD) as zygote:
        yield zygote


@pytest.mark.slow
def test_every_sale_gets_exactly_one_answer_through_kills(tmp_path: Path, zygote: Zygote) -> None:
    """30 SIGKILLs over 600 sale files; ``CRASH_SEED`` replaces the seed of the schedule."""
    rng = random.Random(SEED)
    key_dir = tmp_path / "keys"
    create_software_unit(key_dir, name="spool")
    data_dir, spool_dir = tmp_path / "data", tmp_path / "spool"
    spool = Spool(spool_dir)
    args = [str(data_dir), str(key_dir), str(spool_dir)]
    dropped: dict[str, dict[str, Any]] = {}
    mid_stream = 0
    for _round in range(ROUNDS):
        for _sale in range(BATCH):
            n = len(dropped)
            name = f"{n:05d}.json"
            dropped[name] = a_sale(rng, n)
            drop(spool, name, dropped[name])
        run_child(zygote, args, rng)
        mid_stream += any(spool.inbox.glob("*.json")) or any(spool.work.glob("*.json"))
    # the last run: until the spool is empty
    proc = zygote.spawn(args)
    try:
        wait_ready(proc)
        deadline = time.monotonic() + 60
        while any(spool.inbox.glob("*.json")) or any(spool.work.glob("*.json")):
            assert time.monotonic() < deadline, "the spool was not emptied"
            time.sleep(0.05)
    finally:
        proc.kill()
        finish(proc)
    assert mid_stream >= ROUNDS // 4, f"only {mid_stream} kills landed mid-stream (seed {SEED})"
    check(spool, dropped, data_dir)


def check(spool: Spool, dropped: dict[str, dict[str, Any]], data_dir: Path) -> None:
    conn = sqlite3.connect(data_dir / "till.sqlite3")
    try:
        receipts = {
            row[0]: (row[1], row[2])
            for row in conn.execute(
                "SELECT request_id, number, jws FROM receipts WHERE register_id = 'SPOOL-1'"
                " AND request_id IS NOT NULL"
            )
        }
        numbers = [r[0] for r in conn.execute("SELECT number FROM receipts ORDER BY number")]
    finally:
        conn.close()
    assert numbers == list(range(1, len(numbers) + 1))
    answered_ok = set()
    for name, sale in dropped.items():
        result, error = spool.result_path(name), spool.error_path(name)
        assert result.exists() != error.exists(), (
            f"{name}: one answer, not {result.exists()}/{error.exists()}"
        )
        if result.exists():
            answer = json.loads(result.read_text())
            number, jws = receipts[sale["request_id"]]
            assert (answer["number"], answer["jws"]) == (number, jws), name
            answered_ok.add(sale["request_id"])
        else:
            assert (spool.failed / name).exists(), f"{name}: the failed sale was lost"
            assert json.loads(error.read_text())["rule"] in {
                "sum-matches-lines",
                "min-items",
                "request-id-reused",
            }
    assert set(receipts) == answered_ok  # no receipt without an answer
    assert len(numbers) == len(receipts) + 1  # and the Startbeleg
    leftovers = [
        p.name
        for d in (spool.inbox, spool.work, spool.out, spool.failed)
        for p in d.iterdir()
        if p.name.endswith(".tmp")
    ]
    assert leftovers == []
