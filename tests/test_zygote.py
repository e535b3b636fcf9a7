"""The fork server of the kill tests (tests/zygote.py) gives each child a process of its own."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from zygote import Forked, Zygote

SCRIPT = """
import os, sys, time

def main(argv):
    mode = argv[1]
    if mode == "echo":
        os.write(1, f"{os.getpid()} {os.getcwd()} {os.environ.get('ZYGOTE_TEST', '-')}\\n".encode())
        os.write(1, sys.stdin.buffer.readline())
        return 3
    if mode == "hang":
        os.write(1, b"HANGING\\n")
        time.sleep(600)
    raise RuntimeError("boom")
"""


@pytest.fixture(name="zygote")
def _zygote(tmp_path: Path) -> Iterator[Zygote]:
    script = tmp_path / "script.py"
    script.write_text(SCRIPT, encoding="utf-8")
    with Zygote(script) as zygote:
        yield zygote


def test_each_child_is_its_own_process_with_the_pipes_it_was_given(
    zygote: Zygote, tmp_path: Path
) -> None:
    """argv, cwd and environment arrive; stdin and stdout are the test's; exit codes count."""
    with (
        zygote.spawn(["echo"], cwd=tmp_path, env={"ZYGOTE_TEST": "yes"}) as first,
        zygote.spawn(["echo"]) as second,
    ):
        _echo(zygote, first, second, tmp_path)


def _echo(zygote: Zygote, first: Forked, second: Forked, tmp_path: Path) -> None:
    first.stdin.write(b"hello\n")
    first.stdin.close()
    second.stdin.close()
    pid, cwd, env = first.stdout.readline().decode().split()
    assert (int(pid), cwd, env) == (first.pid, str(tmp_path), "yes")
    assert first.stdout.readline() == b"hello\n"
    assert first.wait(timeout=30) == 3
    assert second.wait(timeout=30) == 3
    assert len({first.pid, second.pid, zygote.proc.pid, os.getpid()}) == 4


def test_sigkill_ends_a_child_and_reports_the_signal(zygote: Zygote) -> None:
    with zygote.spawn(["hang"]) as child:
        assert child.stdout.readline() == b"HANGING\n"
        assert child.poll() is None
        child.kill()
        assert child.wait(timeout=30) == -signal.SIGKILL
        assert child.stdout.read() == b""  # the pipe reaches EOF with the process


def test_an_exception_is_exit_status_1_with_the_traceback_on_stderr(zygote: Zygote) -> None:
    with zygote.spawn(["boom"]) as child:
        assert child.wait(timeout=30) == 1
        assert b"RuntimeError: boom" in child.stderr.read()
