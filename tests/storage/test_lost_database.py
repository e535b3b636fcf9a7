"""Where a till lived, a missing database is restored, never made anew: `run`, `init` and
the other commands that may create it refuse when files show a till was there (the crash
review of restore: a database moved aside by a killed restore became a new KASSE-1 with a
second Startbeleg)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.errors import StorageError
from factories import Run, cli_run, expect
from storage import open_till_db
from storage.db import DB_FILE, LOCK_FILE


@pytest.fixture(name="run")
def _run(monkeypatch: pytest.MonkeyPatch) -> Run:
    for name in ("TILL_AGENT_DATA_DIR", "TILL_AGENT_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    return cli_run()


TRACES = {
    "api-token": "api-token",
    "replaced-20260302T100000Z/till.sqlite3": "replaced-20260302T100000Z/",
    f".{DB_FILE}.0123456789ab.tmp": f".{DB_FILE}.0123456789ab.tmp",
    f"{DB_FILE}-wal": f"{DB_FILE}-wal",
    "spool/out/sale-1.json": "spool/out/",
    "prints/KASSE-1-1.bin": "prints/",
    "dep-backups/KASSE-1/KASSE-1_2026-Q1.dep.json": "dep-backups/",
}


class TestLostDatabase:
    @pytest.mark.parametrize("trace", sorted(TRACES))
    def test_a_missing_database_is_not_made_anew_where_a_till_lived(
        self, run: Run, data_dir: Path, trace: str
    ) -> None:
        """No till.sqlite3, but a file that shows a till lived here: `run`, `init` and
        the other commands that may create it refuse (exit 5), naming the file, restore
        and the empty directory a new till starts in; nothing is created."""
        (data_dir / trace).parent.mkdir(parents=True, exist_ok=True)
        (data_dir / trace).write_bytes(b"x")
        with pytest.raises(StorageError) as refused:
            open_till_db(data_dir)
        assert type(refused.value).__name__ == "DatabaseMissing"
        said = str(refused.value)
        assert TRACES[trace] in said
        assert "till-agent restore BACKUP_FILE" in said
        assert "empty data directory" in said
        body = json.loads(
            expect(
                run("init", "KASSE-1", "--unit", "dev", "--data-dir", data_dir, "--json"), 5
            ).stdout
        )
        assert body["error"] == "DatabaseMissing"
        unit = ("unit", "create-software", "--id", "k1", "--data-dir", data_dir, "--json")
        expect(run(*unit), 5)
        assert not (data_dir / DB_FILE).exists()
        assert not (data_dir / "keys").exists()

    @pytest.mark.parametrize(
        "found",
        [
            [],
            [LOCK_FILE],
            ["keys/k1.key.pem"],
            ["spool/in/sale-1.json", "spool/out/", "prints/", "dep-backups/"],
        ],
    )
    def test_a_new_till_starts_where_nothing_shows_one(
        self, data_dir: Path, found: list[str]
    ) -> None:
        """A new machine: nothing, a lock file of a refused command, keys laid out
        beforehand, the POS's first sale in the spool, empty directories: created."""
        data_dir.mkdir()
        for name in found:
            path = data_dir / name
            path.parent.mkdir(parents=True, exist_ok=True)
            if not name.endswith("/"):
                path.write_bytes(b"x")
        open_till_db(data_dir).close()
        assert (data_dir / DB_FILE).exists()
