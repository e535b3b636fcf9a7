"""A data directory restored elsewhere from a database that names its unit files by
absolute paths (an earlier version's): the files are found in ``<data_dir>/keys/``, and
the service's start stores them there, relative to the data directory (journaled), so
that the WARNING is logged once, not at every start for ever."""

from __future__ import annotations

import json
import logging
import shutil
import sqlite3
from pathlib import Path

import pytest
from service.conftest import Start

from agent.service import TillService
from factories import Run, cli_run, expect, journal_events, sale
from storage.db import DB_FILE

GONE = "does not exist"


def _restored_with_absolute_paths(old: Path, new: Path) -> None:
    """Unit k1 and register KASSE-1 made in ``old`` with absolute paths stored (as an
    earlier version stored them), backed up and restored into ``new``; ``old`` removed."""
    run: Run = cli_run()
    expect(run("unit", "create-software", "--id", "k1", "--data-dir", old), 0)
    expect(run("init", "KASSE-1", "--unit", "k1", "--data-dir", old), 0)
    conn = sqlite3.connect(old / DB_FILE)
    with conn:
        conn.execute(
            "UPDATE units SET config = json_set(config, '$.key_file', ?,"
            " '$.certificate_file', ?) WHERE id = 'k1'",
            (str(old / "keys" / "k1.key.pem"), str(old / "keys" / "k1.cert.pem")),
        )
    conn.close()
    new.mkdir(parents=True)
    source, target = sqlite3.connect(old / DB_FILE), sqlite3.connect(new / DB_FILE)
    try:
        source.backup(target)
    finally:
        source.close()
        target.close()
    shutil.copytree(old / "keys", new / "keys")
    shutil.rmtree(old)


def _stored(data_dir: Path) -> dict[str, str]:
    conn = sqlite3.connect(data_dir / DB_FILE)
    try:
        (config,) = conn.execute("SELECT config FROM units WHERE id = 'k1'").fetchone()
    finally:
        conn.close()
    return dict(json.loads(config))


def _sell(till: TillService, request_id: str) -> str:
    """A sale through the service (it opens the unit); its signature state."""
    result = till.backend.issue_sale(json.dumps(sale(request_id=request_id)).encode())
    return result.signature_state


def _gone_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno >= logging.WARNING and GONE in r.getMessage()
    ]


class TestTheRestoredPathsAreStored:
    def test_the_second_start_is_quiet(
        self, start: Start, tmp_path: Path, data_dir: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        """The first start says once per file what it found and stores it relative to the
        data directory (a ``unit.stored`` event); the second start, signing a sale, logs
        no WARNING about it, and the row names ``keys/...``."""
        _restored_with_absolute_paths(tmp_path / "old", data_dir)
        first = start()
        assert _sell(first, "first") == "signed"
        assert len(_gone_warnings(caplog)) == 2  # key and certificate, once each
        assert _stored(data_dir)["key_file"] == "keys/k1.key.pem"
        assert _stored(data_dir)["certificate_file"] == "keys/k1.cert.pem"
        [event] = [e for e in journal_events(first.db, "unit.stored") if "moved" in e]
        assert event["unit"] == "k1"
        assert event["moved"] == ["certificate_file", "key_file"]
        first.stop()
        caplog.clear()
        second = start()
        assert _sell(second, "second") == "signed"
        assert _gone_warnings(caplog) == []
        assert _stored(data_dir)["key_file"] == "keys/k1.key.pem"
        assert [e for e in journal_events(second.db, "unit.stored") if "moved" in e] == [event]

    def test_a_file_found_nowhere_stays_as_stored(
        self, start: Start, tmp_path: Path, data_dir: Path
    ) -> None:
        """A gone file that ``keys/`` does not hold either is not rewritten: the unit
        cannot be opened (an outage), and its stored path still names what is missing."""
        _restored_with_absolute_paths(tmp_path / "old", data_dir)
        (data_dir / "keys" / "k1.key.pem").unlink()
        till = start()
        assert _sell(till, "first") == "fallback"
        stored = _stored(data_dir)
        assert stored["key_file"] == str(tmp_path / "old" / "keys" / "k1.key.pem")
        assert stored["certificate_file"] == "keys/k1.cert.pem"


def test_a_configured_unit_naming_the_old_paths_starts_and_signs(
    start: Start, tmp_path: Path, data_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The configuration's ``[[units]]`` entry still names the files where they were
    before the restore (where the stored absolute paths came from): the start takes the
    files found in ``keys/``, as for the stored unit, instead of failing on the gone path,
    and says the configuration names files that do not exist."""
    _restored_with_absolute_paths(tmp_path / "old", data_dir)
    unit = {k: v for k, v in _stored(data_dir).items() if v is not None}
    till = start(units=[unit])
    assert _sell(till, "a") == "signed"
    assert _stored(data_dir)["key_file"] == "keys/k1.key.pem"
    said = [m for m in _gone_warnings(caplog) if "configuration" in m]
    assert said, _gone_warnings(caplog)
