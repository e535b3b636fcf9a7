"""The silence each part of the service may keep before the watchdog stops pinging grows
with the timeouts it waits for: a slow printer or unit is no stall."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from agent.config import AgentConfig
from agent.service import TillService


def _limits(tmp_path: Path, **settings: Any) -> dict[str, float]:
    config = AgentConfig.model_validate(
        {
            "data_dir": tmp_path / "data",
            "printer": {"kind": "none"},
            "api": {"enabled": False},
            "backup": {"enabled": False},
            **settings,
        }
    )
    service = TillService(config)
    service.start()
    try:
        return service.watchdog.limits()
    finally:
        service.stop()


def test_the_default_limits(tmp_path: Path) -> None:
    limits = _limits(tmp_path)  # printer: 3 x 5 s + the 3 s signing it may wait behind
    assert (limits["printer"], limits["timers"], limits["spool"]) == (33.0, 30.0, 30.0)


def test_slow_printer_and_unit_timeouts_widen_the_limits(tmp_path: Path) -> None:
    """One network job takes up to 3 printer timeouts and its record may wait for the
    writer while a signing runs to its deadline; a receipt may wait for another's signing
    and then sign: 2 signing timeouts."""
    limits = _limits(tmp_path, sign_timeout_s=40.0, printer={"kind": "none", "timeout_s": 20.0})
    assert limits["printer"] == 3 * 20.0 + 40.0 + 15
    assert limits["timers"] == limits["spool"] == 2 * 40.0 + 15
