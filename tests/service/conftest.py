"""Fixtures for the till service run in-process (``TillService``)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.clock import Clock
from agent.config import AgentConfig
from agent.service import TillService

Start = Callable[..., TillService]


def quiet_config(data_dir: Path, **settings: Any) -> AgentConfig:
    """A service configuration on ``data_dir`` without spool, printer or API, unless
    ``settings`` (top-level sections) say otherwise."""
    return AgentConfig.model_validate(
        {
            "data_dir": data_dir,
            "spool": {"enabled": False},
            "printer": {"kind": "none"},
            "api": {"enabled": False},
            **settings,
        }
    )


@pytest.fixture(name="start")
def _start(data_dir: Path, caplog: pytest.LogCaptureFixture) -> Iterator[Start]:
    """Start a service on ``data_dir`` (:func:`quiet_config` with the sections given, and
    a ``clock``); stopped at teardown (or at once if it fails to start)."""
    started: list[TillService] = []
    caplog.set_level(logging.INFO)

    def start(clock: Clock | None = None, **settings: Any) -> TillService:
        service = TillService(quiet_config(data_dir, **settings), clock=clock)
        try:
            service.start()
        except BaseException:
            service.stop()  # as run_until_signal does
            raise
        started.append(service)
        return service

    yield start
    for service in started:
        service.stop()
