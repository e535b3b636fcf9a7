"""A spool file the agent may not read (mode 000, say) is answered, not retried for ever.

The agent runs as its own user (README: till-agent), so a POS that writes a sale only it
may read leaves the agent a file it cannot open. Before the fix the PermissionError was
taken for a passing failure: the file stayed claimed in ``work/``, retried with an ERROR
and a traceback each time, backing off to a minute, with no answer for the POS, and a
later sale under the same name waited behind it for ever. Now such a file is answered
with rule ``unreadable`` (naming it and its mode) and moved to ``failed/``; an answer
that cannot be written is still retried.

Run as real processes (``spool_child.py``: a till database, a software unit, the
ingestor) whose permission checks hold: as root (the tests' usual user) started through
``setpriv`` without CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.signing import create_software_unit
from agent.spool import POS_DIR_MODE, Spool
from factories import sale

CHILD = Path(__file__).resolve().parent / "spool_child.py"
# root's permission checks apply to the command as to a user's
WITHOUT_OVERRIDE = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search", "--"]


def _drop(spool: Spool, name: str, document: dict[str, Any], mode: int = 0o640) -> None:
    """A sale written as a POS must (temp file, rename), with the file mode ``mode``."""
    tmp = spool.inbox / f".{name}.tmp"
    tmp.write_text(json.dumps(document), encoding="utf-8")
    tmp.chmod(mode)
    os.rename(tmp, spool.inbox / name)


def _wait_for(path: Path, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} did not appear within {timeout} s"
        time.sleep(0.02)


def _wait_empty(directory: Path, timeout: float = 15.0) -> None:
    """The spool writes an answer first and then releases the sale from ``work/``."""
    deadline = time.monotonic() + timeout
    while _files(directory):
        assert time.monotonic() < deadline, f"{_files(directory)} still in {directory}"
        time.sleep(0.02)


def _files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


Agent = Callable[[], subprocess.Popen[bytes]]


@pytest.fixture(name="spool")
def _spool(tmp_path: Path) -> Spool:
    return Spool(tmp_path / "spool")


@pytest.fixture(name="agent")
def _agent(tmp_path: Path, spool: Spool) -> Iterator[Agent]:
    """Start the ingestor as a process without the override; killed at teardown (its
    stderr, the log, is in ``proc.stderr``: read it after ``kill``)."""
    prefix: list[str] = []
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("root reads everything, and setpriv is not there to drop that")
        prefix = WITHOUT_OVERRIDE
        done = subprocess.run([*prefix, "true"], capture_output=True, check=False)
        if done.returncode != 0:
            pytest.skip(f"root's override cannot be dropped here: {done.stderr!r}")
    keys = tmp_path / "keys"
    create_software_unit(keys, name="spool")
    started: list[subprocess.Popen[bytes]] = []

    def agent() -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            [
                *prefix,
                sys.executable,
                str(CHILD),
                str(tmp_path / "data"),
                str(keys),
                str(spool.root),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        started.append(proc)
        assert proc.stdout is not None
        assert proc.stdout.readline() == b"READY\n", proc.stderr and proc.stderr.read()
        return proc

    yield agent
    for proc in started:
        proc.kill()
        proc.communicate(timeout=30)


def _log(proc: subprocess.Popen[bytes]) -> str:
    """Everything the killed process logged (WARNING and above: Python's last resort)."""
    proc.kill()
    _, stderr = proc.communicate(timeout=30)
    return stderr.decode("utf-8", "replace")


def test_a_sale_the_agent_may_not_read_is_answered_unreadable_and_moved_to_failed(
    spool: Spool, agent: Agent
) -> None:
    """Answered once with field, rule, the file and its mode, without a traceback; the
    sales around it are issued, and a readable sale under its name afterwards too."""
    _drop(spool, "noperm.json", sale(request_id="noperm", register="SPOOL-1"), mode=0o000)
    _drop(spool, "fine.json", sale(request_id="fine", register="SPOOL-1"))
    proc = agent()
    _wait_for(spool.error_path("noperm.json"))
    _wait_for(spool.result_path("fine.json"))
    error = json.loads(spool.error_path("noperm.json").read_text(encoding="utf-8"))
    assert (error["field"], error["rule"]) == ("(document)", "unreadable")
    assert "noperm.json" in error["message"]
    assert "mode 0000" in error["message"]
    assert "Permission denied" in error["message"]
    _wait_empty(spool.work)
    assert (spool.failed / "noperm.json").exists()  # the POS can look at it, fix it, drop it again

    _drop(spool, "noperm.json", sale(request_id="noperm", register="SPOOL-1"))
    _wait_for(spool.result_path("noperm.json"))
    assert _files(spool.failed) == []  # the earlier answer and file made way
    log = _log(proc)
    assert "Traceback" not in log, log
    assert log.count("noperm.json refused unread") == 1, log


def test_an_answer_that_cannot_be_written_is_retried_not_lost(spool: Spool, agent: Agent) -> None:
    """The till's side failing (here ``failed/`` the agent may not write to) is no fault
    of the file: it stays claimed and is answered once the answer can be written."""
    spool.failed.chmod(0o500)
    _drop(spool, "noperm.json", sale(request_id="noperm", register="SPOOL-1"), mode=0o000)
    agent()
    _wait_for(spool.work / "noperm.json")
    time.sleep(1.5)  # the first attempt and a retry (backoff 1 s)
    assert _files(spool.work) == ["noperm.json"]
    assert _files(spool.failed) == []
    spool.failed.chmod(POS_DIR_MODE)
    _wait_for(spool.error_path("noperm.json"))
    error = json.loads(spool.error_path("noperm.json").read_text(encoding="utf-8"))
    assert error["rule"] == "unreadable"
    _wait_empty(spool.work)
    assert _files(spool.failed) == ["noperm.error.json", "noperm.json"]
