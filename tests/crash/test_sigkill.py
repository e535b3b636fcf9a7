"""SIGKILL a real till process at 200+ random moments while it issues receipts.

Each round starts ``tests/crash/child.py`` (a process that opens the till database,
migrates it, stores the unit, initializes register CRASH-1 if needed and then issues
receipts forever, printing ``ACK <number> <jws>`` after each commit), kills it with
SIGKILL at a random moment and then, before the next round, opens the database the way a
restarted agent would and checks DESIGN.md invariants 1, 2 and 7:

* receipt numbers are exactly 1..max: no gap, no duplicate;
* every receipt acknowledged before a kill is present, byte for byte;
* receipts seen after an earlier kill are still there unchanged (append-only);
* the chain is valid (each chain field is over the previous JWS, the first over the
  Kassen-ID), every signature verifies, dates never go back;
* the register's last number, last JWS and turnover counter match the receipts, and the
  encrypted counter of each receipt decrypts to the running turnover;
* the journal's hash chain verifies and has one ``receipt.issued`` event per receipt.

Most rounds wait for the first ACK of the run and then kill after 0-40 ms, so the kill
lands mid-stream; about one in ten kills 0-60 ms after the child announced ``START``
(imports done, database about to be opened), which covers opening, WAL recovery,
migration, unit storage, register initialization and the first receipt. After the last
round the register's DEP export must pass our verifier (agent.at_rksv.verify).

Children are forked from one interpreter that imported the till code once
(tests/zygote.py): real processes with their own pids and pipes, started ahead of time
with ``--wait`` so that each opens the database only when its round begins.
``CRASH_SEED`` replaces the seed of the kill schedule (it is in every message);
``CRASH_KILLS=N`` runs N kills instead of 220 (a soak run).
"""

from __future__ import annotations

import base64
import io
import json
import os
import random
import select
import signal
import subprocess
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from sqlalchemy import func
from sqlalchemy import select as sql_select

from agent.at_rksv import (
    STORNO_MARKER,
    TRAINING_MARKER,
    chain_value,
    decrypt_counter,
    signing_input,
    split_jws,
)
from agent.at_rksv.verify import verify_dep
from agent.export import export_container, export_dep
from agent.signing import create_software_unit, verify_rs
from agent.signing.base import Identity
from storage.db import open_till_db
from storage.journal import verify_journal
from storage.models import JOURNAL, RECEIPTS, REGISTERS, UNITS
from zygote import Forked, Zygote

CHILD = Path(__file__).resolve().parent / "child.py"
REGISTER = "CRASH-1"
KILLS = int(os.environ.get("CRASH_KILLS", "220"))  # more for a soak run
SEED = int(os.environ.get("CRASH_SEED", "20261121"))
EARLY_SHARE = 0.10  # rounds killed without waiting for an ACK
MAX_DELAY_AFTER_ACK = 0.040
MAX_DELAY_AFTER_START = 0.060
PRESTART = 2  # children importing ahead of their round (a 2-core machine keeps up)
LINE_TIMEOUT = 60.0  # seconds to wait for START or the first ACK before giving up
_AMOUNTS = ("amount_normal", "amount_reduced1", "amount_reduced2", "amount_zero", "amount_special")


class ChildOutput:
    """Reads the child's stdout with ``os.read`` and splits it into complete lines.

    A trailing fragment without a newline is never treated as a line: an ACK that was not
    written completely was not acknowledged.
    """

    def __init__(self, proc: Forked) -> None:
        self.fd = proc.stdout.fileno()
        self.buffer = b""
        self.lines: list[str] = []
        self.eof = False

    def _read(self, timeout: float) -> None:
        ready, _, _ = select.select([self.fd], [], [], max(timeout, 0.0))
        if not ready:
            return
        chunk = os.read(self.fd, 1 << 16)
        if not chunk:
            self.eof = True
            return
        self.buffer += chunk
        *complete, self.buffer = self.buffer.split(b"\n")
        self.lines.extend(line.decode("ascii") for line in complete)

    def wait_for(self, prefix: str, timeout: float) -> bool:
        """Read until a line starting with ``prefix`` arrived; False on EOF or timeout."""
        deadline = time.monotonic() + timeout
        while not any(line.startswith(prefix) for line in self.lines):
            if self.eof or time.monotonic() > deadline:
                return False
            self._read(deadline - time.monotonic())
        return True

    def drain(self) -> None:
        """Read everything up to EOF (call only once the child is dead)."""
        deadline = time.monotonic() + LINE_TIMEOUT
        while not self.eof:
            assert time.monotonic() < deadline, "the dead child's stdout never reached EOF"
            self._read(deadline - time.monotonic())

    def acks(self) -> list[tuple[int, str]]:
        result = []
        for line in self.lines:
            if line.startswith("ACK "):
                _, number, jws = line.split(" ")
                result.append((int(number), jws))
        return result


@dataclass
class Verified:
    """What earlier checks established; later checks extend it and must agree with it."""

    jws: list[str] = field(default_factory=list)  # receipt n is jws[n - 1]
    turnover: int = 0
    last_issued_at: str = ""
    public_key_der: bytes | None = None


def check_database(data_dir: Path, acked: dict[int, str], seen: Verified, where: str) -> int:
    """Open the database like a restarted agent and check everything; returns the count."""
    db = open_till_db(data_dir)  # the child is dead: take the writer lock, recover the WAL
    try:
        with db.engine.connect() as conn:
            journal_problems = verify_journal(conn)
            issued_events = conn.execute(
                sql_select(func.count())
                .select_from(JOURNAL)
                .where(JOURNAL.c.kind == "receipt.issued")
            ).scalar_one()
            reg = conn.execute(sql_select(REGISTERS).where(REGISTERS.c.id == REGISTER)).first()
            rows = conn.execute(
                sql_select(RECEIPTS).order_by(RECEIPTS.c.register_id, RECEIPTS.c.number)
            ).all()
            unit_row = conn.execute(sql_select(UNITS.c.public_key_der)).first()
    finally:
        db.close()

    assert journal_problems == [], f"{where}: journal broken: {journal_problems[:5]}"
    assert issued_events == len(rows), (
        f"{where}: {issued_events} receipt.issued events but {len(rows)} receipts"
    )
    assert all(r.register_id == REGISTER for r in rows), f"{where}: foreign register"
    numbers = [r.number for r in rows]
    assert numbers == list(range(1, len(rows) + 1)), (
        f"{where}: receipt numbers are not exactly 1..{len(rows)}: gap or duplicate "
        f"(first differences: {sorted(set(range(1, len(rows) + 1)) ^ set(numbers))[:10]})"
    )
    missing = [n for n in acked if n > len(rows)]
    assert not missing, f"{where}: acknowledged receipts lost: {missing[:10]}"
    for number, jws in acked.items():
        assert rows[number - 1].jws == jws, f"{where}: acknowledged receipt {number} changed"
    assert len(rows) >= len(seen.jws), (
        f"{where}: {len(seen.jws)} receipts were committed before, now only {len(rows)}"
    )
    for old, row in zip(seen.jws, rows, strict=False):
        assert row.jws == old, f"{where}: committed receipt {row.number} changed"

    if reg is None:
        assert not rows, f"{where}: receipts without a register"
        return 0
    if unit_row is not None and seen.public_key_der is None:
        seen.public_key_der = bytes(unit_row.public_key_der)
    assert seen.public_key_der is not None, f"{where}: register without a unit"
    public_key = Identity("crash", "AT1", "-", seen.public_key_der).public_key()
    aes_key = base64.b64decode(reg.aes_key)

    for row in rows[len(seen.jws) :]:  # only receipts not checked in an earlier round
        label = f"{where}: receipt {row.number}"
        payload, signature, _ = split_jws(row.jws)
        previous = seen.jws[-1] if seen.jws else None
        assert payload.chain == chain_value(previous, REGISTER), f"{label}: chain broken"
        assert payload.register_id == REGISTER, f"{label}: wrong Kassen-ID"
        assert payload.receipt_id == row.receipt_id, f"{label}: wrong Belegnummer"
        assert payload.issued_at >= seen.last_issued_at, f"{label}: date went back"
        assert row.signature_state == "signed", f"{label}: {row.signature_state}"
        assert verify_rs(public_key, signing_input(payload), signature), f"{label}: bad signature"
        if row.kind in ("standard", "storno"):
            seen.turnover += sum(getattr(row, c) for c in _AMOUNTS)
        assert row.turnover_cents == seen.turnover, f"{label}: turnover after it is wrong"
        if row.kind == "storno":
            assert payload.counter == STORNO_MARKER, f"{label}: storno without STO"
        elif row.kind == "training":
            assert payload.counter == TRAINING_MARKER, f"{label}: training without TRA"
        else:
            counter = decrypt_counter(aes_key, REGISTER, row.receipt_id, payload.counter)
            assert counter == seen.turnover, f"{label}: encrypted counter is {counter}"
        seen.jws.append(row.jws)
        seen.last_issued_at = payload.issued_at

    assert reg.last_number == len(rows), f"{where}: register.last_number {reg.last_number}"
    assert reg.last_jws == (rows[-1].jws if rows else None), f"{where}: register.last_jws"
    assert reg.turnover_cents == seen.turnover, (
        f"{where}: register turnover {reg.turnover_cents} != sum of receipts {seen.turnover}"
    )
    return len(rows)


def verify_final_dep(data_dir: Path, receipts: int, where: str) -> None:
    """Export the register's DEP and crypto container and run our verifier over them."""
    db = open_till_db(data_dir)
    try:
        dep = io.StringIO()
        exported = export_dep(db, REGISTER, dep)
        container = export_container(db, REGISTER)
    finally:
        db.close()
    report = verify_dep(json.loads(dep.getvalue()), json.loads(container))
    assert report.ok, f"{where}: the DEP does not verify: {report.findings[:5]}"
    assert report.receipts == exported == receipts, (
        f"{where}: DEP has {exported} receipts, verifier saw {report.receipts}, DB {receipts}"
    )


class Children:
    """Child processes started ahead of time (``--wait``), ``PRESTART`` at a time.

    Each is forked from one interpreter that imported the till code once
    (tests/zygote.py): a real process with its own pid and pipes, which touches the
    database only once :meth:`next` sends it the go-ahead.
    """

    def __init__(self, data_dir: Path, key_dir: Path, total: int) -> None:
        self.data_dir, self.key_dir, self.total = data_dir, key_dir, total
        self.waiting: deque[Forked] = deque()
        self.spawned = 0
        self.zygote = Zygote(CHILD)

    def _spawn(self) -> None:
        self.waiting.append(
            self.zygote.spawn(
                [str(self.data_dir), str(self.key_dir), f"{SEED}-{self.spawned}", "--wait"],
                cwd=self.data_dir.parent,
            )
        )
        self.spawned += 1

    def next(self) -> Forked:
        """The next child, told to go: from now on it opens the database and issues."""
        while self.spawned < self.total and len(self.waiting) <= PRESTART:
            self._spawn()
        proc = self.waiting.popleft()
        proc.stdin.write(b"go\n")
        proc.stdin.close()
        return proc

    def close(self) -> None:
        """Let the children that were never told to go exit (they see EOF on stdin)."""
        while self.waiting:
            proc = self.waiting.popleft()
            for pipe in (proc.stdin, proc.stdout, proc.stderr):
                pipe.close()
            try:
                proc.wait(timeout=LINE_TIMEOUT)
            except subprocess.TimeoutExpired:  # pragma: no cover - a hung child
                proc.kill()
                proc.wait()
        self.zygote.close()


def kill_child(
    proc: Forked, rng: random.Random, round_no: int, registered: bool
) -> tuple[list[tuple[int, str]], str]:
    """Kill a started child at a random moment; return its ACKs and how it was killed."""
    # until the Startbeleg is committed, half of the rounds aim at the first open and init
    early = rng.random() < (EARLY_SHARE if registered else 0.5)
    delay = rng.uniform(0, MAX_DELAY_AFTER_START if early else MAX_DELAY_AFTER_ACK)
    how = f"{'after START' if early else 'after first ACK'} + {delay * 1000:.1f} ms"
    output = ChildOutput(proc)
    try:
        arrived = output.wait_for("START" if early else "ACK ", LINE_TIMEOUT)
        if arrived:
            time.sleep(delay)
        alive = proc.poll() is None
        if alive:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=LINE_TIMEOUT)
        output.drain()
    finally:
        if proc.poll() is None:  # pragma: no cover - only when the checks above failed
            proc.kill()
            proc.wait()
        stderr = proc.stderr.read().decode(errors="replace")
        proc.stdout.close()
        proc.stderr.close()
    trouble = (
        f"round {round_no} ({how}): the child ended or hung on its own "
        f"(status {proc.returncode}, lines {output.lines[-3:]}):\n{stderr[-3000:]}"
    )
    assert arrived, trouble
    assert alive, trouble
    assert proc.returncode == -signal.SIGKILL, f"round {round_no}: status {proc.returncode}"
    return output.acks(), how


@pytest.mark.slow
def test_sigkill_while_issuing_never_loses_or_breaks_a_receipt(tmp_path: Path) -> None:
    key_dir, data_dir = tmp_path / "keys", tmp_path / "data"
    create_software_unit(key_dir, name="crash")  # one key for every run
    rng = random.Random(SEED)
    acked: dict[int, str] = {}
    seen = Verified()
    total_acks = early_kills = 0
    started = time.monotonic()

    children = Children(data_dir, key_dir, KILLS)
    try:
        for round_no in range(KILLS):
            proc = children.next()
            acks, how = kill_child(proc, rng, round_no, registered=bool(seen.jws))
            where = f"seed {SEED} (CRASH_SEED), round {round_no}, killed {how}"
            early_kills += how.startswith("after START")
            for number, jws in acks:
                assert acked.setdefault(number, jws) == jws, (
                    f"{where}: number {number} acknowledged twice with different receipts"
                )
            total_acks += len(acks)
            check_database(data_dir, acked, seen, where)
    finally:
        children.close()

    verify_final_dep(data_dir, len(seen.jws), f"seed {SEED}, after the last kill")
    elapsed = time.monotonic() - started
    print(
        f"\nSIGKILL test (seed {SEED}): {KILLS} kills ({early_kills} before the first ACK), "
        f"{total_acks} ACKs, {len(seen.jws)} receipts in the database "
        f"({len(seen.jws) - len(acked)} committed but not acknowledged), {elapsed:.1f} s"
    )
    assert len(acked) == total_acks, f"seed {SEED}: an ACK was repeated"
    assert total_acks >= KILLS, f"seed {SEED}: too few receipts were issued to mean anything"
