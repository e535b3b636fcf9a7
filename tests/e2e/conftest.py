"""Fixtures of the end-to-end tests: the TCP printer and ``launch`` (see e2e/harness.py)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from e2e.harness import TILL_AGENT, Agent, Launch, TcpPrinter, agent_env


@pytest.fixture(name="printer")
def _printer() -> Iterator[TcpPrinter]:
    printer = TcpPrinter()
    yield printer
    printer.close()


@pytest.fixture(name="launch")
def _launch(tmp_path: Path) -> Iterator[Launch]:
    """Start ``till-agent run [--config FILE]``; every process is killed at teardown.

    The factory takes ``config`` (a file or None), ``home`` (default ``tmp_path/home``),
    ``cwd`` (default ``tmp_path``) and ``env`` (extra variables).
    """
    started: list[Agent] = []

    def launch(
        config: Path | None = None,
        *,
        home: Path | None = None,
        cwd: Path | None = None,
        env: Mapping[str, str] | None = None,
    ) -> Agent:
        args = [str(TILL_AGENT), "run"] + ([] if config is None else ["--config", str(config)])
        environment = agent_env(home or tmp_path / "home", env)
        log = tmp_path / f"agent-{len(started)}.log"
        agent = Agent(args, environment, cwd or tmp_path, log)
        started.append(agent)
        return agent

    yield launch
    for agent in started:
        agent.close()
