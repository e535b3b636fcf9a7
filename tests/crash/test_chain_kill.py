"""SIGKILL a real till process while its chain service signs, at random moments.

The chain fake (agent/fakes/chain_service.py, real loopback HTTP, in this process so it
outlives every child) answers each PUT after a delay, having stored the receipt at once.
Each round starts tests/crash/chain_child.py, which stores what the killed one left,
recovers and sells; the test kills it 0-60 ms after its first ACK (mostly with a PUT in
flight, sometimes after the answer, before COMMIT). After each restart:

* the service never holds two signing inputs under one register and number;
* every signing input the service holds is a receipt of our DEP (adopted or remedied);
* numbers are 1..max with no gap, every ACKed receipt is present unchanged;
* the DEP with its crypto container passes ``verify``.
"""

from __future__ import annotations

import io
import json
import random
import select
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.at_rksv import split_jws
from agent.at_rksv.encoding import b64url_decode
from agent.at_rksv.payload import Payload
from agent.at_rksv.verify import verify_dep
from agent.export import export_container, export_dep
from agent.fakes.chain_service import ChainServiceFake
from factories import db_rows
from storage.db import open_till_db
from zygote import Zygote

CHILD = Path(__file__).resolve().parent / "chain_child.py"
REGISTER = "CHAIN-1"
TOKEN = "kill-token"
ROUNDS = 24
SEED = 8111


@pytest.fixture(name="zygote")
def _zygote() -> Iterator[Zygote]:
    with Zygote(CHILD) as zygote:
        yield zygote


def _number(signing_input: str) -> int:
    body = signing_input.split(".")[1]
    return int(Payload.parse(b64url_decode(body).decode("utf-8")).receipt_id)


def _check(data: Path, chain: ChainServiceFake, acked: dict[int, str]) -> None:
    held = chain.signing_inputs(REGISTER)
    numbers = [_number(s) for s in held]
    assert len(numbers) == len(set(numbers)), sorted(numbers)  # never two under one number
    db = open_till_db(data, writer=False)
    try:
        rows = db_rows(db, "SELECT number, jws FROM receipts WHERE register_id = ?", REGISTER)
        ours = {r["jws"].rsplit(".", 1)[0] for r in rows}
        assert set(held) <= ours
        assert sorted(r["number"] for r in rows) == list(range(1, len(rows) + 1))
        stored = {r["number"]: r["jws"] for r in rows}
        assert all(stored.get(n) == jws for n, jws in acked.items())
        buffer = io.StringIO()
        export_dep(db, REGISTER, buffer)
        report = verify_dep(
            json.loads(buffer.getvalue()), json.loads(export_container(db, REGISTER))
        )
        assert report.ok, report.findings[:5]
        assert all(split_jws(jws)[0].register_id == REGISTER for jws in stored.values())
    finally:
        db.close()


def _line(child: object, deadline: float) -> bytes:
    stdout = child.stdout  # type: ignore[attr-defined]
    ready, _, _ = select.select([stdout], [], [], max(deadline - time.monotonic(), 0))
    assert ready, "the child did not answer in time"
    return bytes(stdout.readline())


def test_sigkill_while_the_chain_service_signs_never_frees_a_number(
    tmp_path: Path, zygote: Zygote
) -> None:
    data = tmp_path / "data"
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    rng = random.Random(SEED)
    acked: dict[int, str] = {}
    with ChainServiceFake(TOKEN, key_dir=tmp_path / "chain-key", delay=0.02) as chain:
        chain.mode = "slow"
        for round_no in range(ROUNDS + 1):
            child = zygote.spawn([str(data), chain.url, str(token_file)])
            child.stdin.close()
            try:
                deadline = time.monotonic() + 60
                assert _line(child, deadline) == b"READY\n", child.stderr.read().decode()
                _check(data, chain, acked)
                if round_no == ROUNDS:
                    break
                first = _line(child, deadline).split()
                acked[int(first[1])] = first[2].decode()
                time.sleep(rng.uniform(0.0, 0.06))
                child.send_signal(signal.SIGKILL)
                child.wait(timeout=30)
                for line in child.stdout.read().splitlines():
                    _, number, jws = line.split()
                    acked[int(number)] = jws.decode()
            finally:
                child.kill()
                child.stdout.close()
                child.stderr.close()
    interrupted = db_rows_after(data)
    assert interrupted > 0  # the schedule killed some processes with a PUT in flight


def db_rows_after(data: Path) -> int:
    """How many signings a killed process left (journaled at the restart)."""
    db = open_till_db(data, writer=False)
    try:
        return len(db_rows(db, "SELECT 1 FROM journal WHERE kind = 'signing.interrupted'"))
    finally:
        db.close()
