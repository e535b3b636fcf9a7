"""Fixtures of the end-to-end tests: the TCP printer and ``launch`` (see e2e/harness.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from e2e.harness import Agent, Launch, TcpPrinter, launcher


@pytest.fixture(name="printer")
def _printer() -> Iterator[TcpPrinter]:
    printer = TcpPrinter()
    yield printer
    printer.shutdown()


@pytest.fixture(name="launch")
def _launch(tmp_path: Path) -> Iterator[Launch]:
    """Start ``till-agent run [--config FILE]``; every process is killed at teardown.

    The factory takes ``config`` (a file or None), ``home`` (default ``tmp_path/home``),
    ``cwd`` (default ``tmp_path``) and ``env`` (extra variables).
    """
    started: list[Agent] = []
    yield launcher(tmp_path, started)
    for agent in started:
        agent.close()
