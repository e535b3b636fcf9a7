"""``[register] counter_bytes``: a new register gets 5 to 8 bytes, but a till whose
configuration says more (allowed before) still starts with the register it has."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.config import AgentConfig
from agent.errors import InvalidSale
from agent.service import TillService


def _service(data_dir: Path, counter_bytes: int) -> TillService:
    return TillService(
        AgentConfig.model_validate(
            {
                "data_dir": data_dir,
                "spool": {"enabled": False},
                "printer": {"kind": "none"},
                "api": {"enabled": False},
                "backup": {"enabled": False},
                "register": {"counter_bytes": counter_bytes},
            }
        )
    )


def test_an_existing_register_starts_whatever_counter_bytes_says(tmp_path: Path) -> None:
    first = _service(tmp_path / "data", 8)
    first.start()
    first.stop()
    again = _service(tmp_path / "data", 16)
    again.start()
    try:
        [register] = again.backend.status().registers
        assert register.last_number == 1
    finally:
        again.stop()


def test_a_new_register_with_16_counter_bytes_is_refused_naming_the_field(
    tmp_path: Path,
) -> None:
    service = _service(tmp_path / "data", 16)
    with pytest.raises(InvalidSale) as refused:
        service.start()
    service.stop()
    assert (refused.value.field, refused.value.rule) == ("counter_bytes", "range")
    assert "Prüftool" in refused.value.message
