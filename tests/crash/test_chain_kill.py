"""SIGKILL a real till process while its chain service signs, at random moments.

The chain fake (agent/fakes/chain_service.py, real loopback HTTP, in this process so it
outlives every child) stores each receipt at once and answers the PUT after 50 ms
(``slow``) or at once (``up``), chosen per round. Each round starts
tests/crash/chain_child.py, which stores what the killed one left, recovers and sells; the
test kills it 0-60 ms after its first ACK. The fake's answer times tell the kills with a
PUT in flight from those after the answer and before COMMIT: the run must have both.
After each restart:

* the service never holds two signing inputs under one register and number;
* every signing input the service holds is a receipt of our DEP (adopted or remedied);
* numbers are 1..max with no gap, every ACKed receipt is present unchanged;
* the DEP with its crypto container passes ``verify``.
"""

from __future__ import annotations

import hashlib
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


def _interrupted(data: Path, seen: int) -> list[str]:
    """The signing inputs of the receipts a killed process left, journaled after ``seen``."""
    db = open_till_db(data, writer=False)
    try:
        events = db_rows(db, "SELECT data FROM journal WHERE kind = 'signing.interrupted'")
        numbers = [json.loads(e["data"])["number"] for e in events[seen:]]
        sql = "SELECT jws FROM receipts WHERE register_id = ? AND number = ?"
        return [db_rows(db, sql, REGISTER, n)[0]["jws"].rsplit(".", 1)[0] for n in numbers]
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
    killed_at = 0.0
    in_flight = after_answer = seen = 0
    with ChainServiceFake(TOKEN, key_dir=tmp_path / "chain-key", delay=0.05) as chain:
        for round_no in range(ROUNDS + 1):
            chain.mode = rng.choice(("slow", "up"))
            child = zygote.spawn([str(data), chain.url, str(token_file)])
            try:
                deadline = time.monotonic() + 60
                assert _line(child, deadline) == b"READY\n", child.stderr.read().decode()
                # the child sells only once told: what the service holds and what the
                # database stored are compared while no signing is in flight
                _check(data, chain, acked)
                left = _interrupted(data, seen)
                seen += len(left)
                for signing_input in left:
                    answered = chain.answered_at(hashlib.sha256(signing_input.encode()).hexdigest())
                    after_answer += answered is not None and answered < killed_at
                    in_flight += signing_input in chain.signing_inputs(REGISTER) and (
                        answered is None or answered >= killed_at
                    )
                if round_no == ROUNDS:
                    break
                child.stdin.write(b"GO\n")
                child.stdin.close()
                first = _line(child, deadline).split()
                acked[int(first[1])] = first[2].decode()
                time.sleep(rng.uniform(0.0, 0.06))
                killed_at = time.monotonic()
                child.send_signal(signal.SIGKILL)
                child.wait(timeout=30)
                for line in child.stdout.read().splitlines():
                    _, number, jws = line.split()
                    acked[int(number)] = jws.decode()
            finally:
                child.kill()
                child.stdin.close()
                child.stdout.close()
                child.stderr.close()
    # the schedule killed processes with a PUT in flight and after the service answered
    assert in_flight > 0, (in_flight, after_answer)
    assert after_answer > 0, (in_flight, after_answer)
