"""The age ``outage list`` and ``outage show`` give an open outage is its age now.

The outage watch stores an open outage's age as of its last check (``checked_at``): only
the running service ticks it. An outage opened by ``till-agent issue`` with no service
running kept the age of its opening (0.0 hours a day later). The commands add the time
since that check (wall clock, never negative) and say the age is one "so far"; a closed
outage's age is as stored, and the stored values are not changed by reading them."""

from __future__ import annotations

import datetime as dt
import json
import re
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from factories import Run, expect, flat
from storage import DB_FILE

HOURS = 2.0
SLACK = 120.0  # seconds a slow test machine may take between the update and the command


def _stored(data_dir: Path) -> tuple[float, str]:
    with sqlite3.connect(data_dir / DB_FILE) as conn:
        age, checked = conn.execute("SELECT age_seconds, checked_at FROM outages").fetchone()
    return float(age), str(checked)


def _checked(data_dir: Path, *, hours_ago: float, age: float = 0.0) -> None:
    """The watch last checked outage 1 ``hours_ago`` (no service has run since)."""
    at = dt.datetime.now(dt.UTC) - dt.timedelta(hours=hours_ago)
    with sqlite3.connect(data_dir / DB_FILE) as conn:
        conn.execute(
            "UPDATE outages SET checked_at = ?, age_seconds = ?",
            (at.isoformat().replace("+00:00", "Z"), age),
        )


def _listed(run: Run, data_dir: Path) -> dict[str, Any]:
    [outage] = json.loads(expect(run("outage", "list", "--json", "--data-dir", data_dir), 0).stdout)
    return dict(outage)


def _shown(run: Run, data_dir: Path) -> dict[str, Any]:
    return dict(
        json.loads(expect(run("outage", "show", "1", "--json", "--data-dir", data_dir), 0).stdout)
    )


class TestOpenOutage:
    def test_the_list_adds_the_time_since_the_last_check(self, run: Run, with_outage: Path) -> None:
        """Stored: 600 s at a check two hours ago; shown: two hours more, and the table
        says the hours are so far."""
        _checked(with_outage, hours_ago=HOURS, age=600.0)
        listed = _listed(run, with_outage)
        assert listed["ended_at"] is None
        expected = 600.0 + HOURS * 3600
        assert expected <= listed["age_seconds"] < expected + SLACK
        table = flat(expect(run("outage", "list", "--data-dir", with_outage), 0).stdout)
        assert f"{expected / 3600:.1f} so far" in table, table
        assert _stored(with_outage)[0] == 600.0  # reading changes nothing

    def test_show_and_the_evidence_pack_add_it_too(
        self, run: Run, with_outage: Path, tmp_path: Path
    ) -> None:
        _checked(with_outage, hours_ago=HOURS)
        shown = _shown(run, with_outage)
        assert HOURS * 3600 <= shown["outage"]["age_seconds"] < HOURS * 3600 + SLACK
        assert shown["duration_hours"] == pytest.approx(HOURS, abs=0.05)
        text = expect(run("outage", "show", "1", "--data-dir", with_outage), 0).stdout
        assert "still open" in text
        assert re.search(r"Dauer \(hours\): +[0-9.]+ so far", text), text
        expect(run("outage", "export", "1", "-o", tmp_path / "pack", "--data-dir", with_outage), 0)
        pack = json.loads((tmp_path / "pack" / "outage-1.json").read_text(encoding="utf-8"))
        assert pack["duration_hours"] == pytest.approx(HOURS, abs=0.05)

    def test_a_check_in_the_future_adds_nothing(self, run: Run, with_outage: Path) -> None:
        """The wall clock went back since the last check: the age is never less than the
        stored one."""
        _checked(with_outage, hours_ago=-HOURS, age=600.0)
        assert _listed(run, with_outage)["age_seconds"] == 600.0
        assert _shown(run, with_outage)["outage"]["age_seconds"] == 600.0


def test_a_closed_outage_keeps_its_age(run: Run, with_outage: Path) -> None:
    """Its age was fixed when its Sammelbeleg closed it, however long ago it was checked."""
    expect(run("simulate", "unit", "up", "--data-dir", with_outage), 0)
    expect(run("outage", "recover", "KASSE-1", "--data-dir", with_outage), 0)
    _checked(with_outage, hours_ago=HOURS, age=600.0)
    with sqlite3.connect(with_outage / DB_FILE) as conn:
        assert conn.execute("SELECT ended_at IS NOT NULL FROM outages").fetchone() == (1,)
    assert _listed(run, with_outage)["age_seconds"] == 600.0
    assert _shown(run, with_outage)["duration_hours"] == pytest.approx(600 / 3600, abs=0.01)
    table = flat(expect(run("outage", "list", "--data-dir", with_outage), 0).stdout)
    assert "so far" not in table
    assert "so far" not in expect(run("outage", "show", "1", "--data-dir", with_outage), 0).stdout
