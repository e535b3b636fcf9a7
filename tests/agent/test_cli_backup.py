"""``till-agent backup list`` and ``backup run`` on a real till database.

The register is created on 2026-03-02 (a frozen clock); the command runs on the machine's
clock, so at least 2026-Q1 to 2026-Q3 have ended."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import UNIT, WriteConfig
from typer.testing import Result

from agent.receipts import ReceiptService, RegisterSetup
from factories import Run, box_words, expect, flat, journal_events
from storage import TillDB

pytestmark = pytest.mark.usefixtures("no_system_config")

ENDED = ["2026-Q1", "2026-Q2", "2026-Q3"]


@pytest.fixture(name="config")
def _config(service: ReceiptService, write_config: WriteConfig, tmp_path: Path) -> Path:
    """A configuration naming the till's data directory (closed again: the commands need
    it to themselves) and a backup directory beside it."""
    service.db.close()
    return write_config(
        f'data_dir = "{service.db.path.parent}"\n[backup]\ndir = "{tmp_path / "backups"}"\n'
    )


def _json(result: Result) -> Any:
    return json.loads(expect(result, 0).stdout)


class TestBackupRun:
    def test_writes_the_ended_quarters_once_and_list_shows_them(
        self, run: Run, config: Path, data_dir: Path, tmp_path: Path, db: TillDB
    ) -> None:
        """Every ended quarter oldest first, each file hashed as recorded; a second run has
        nothing to do; ``backup list`` shows the records."""
        written = _json(run("backup", "run", "--config", config, "--json"))
        assert [r["quarter"] for r in written][:3] == ENDED
        first = written[0]
        path = tmp_path / "backups" / "KASSE-1" / "KASSE-1_2026-Q1.dep.json"
        assert first["path"] == str(path)
        assert first["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
        assert (first["register"], first["receipts"], first["last_number"]) == ("KASSE-1", 1, 1)
        assert _json(run("backup", "run", "--config", config, "--json")) == []
        again = expect(run("backup", "run", "--config", config), 0)
        assert "no backup is due" in again.stdout
        listed = _json(run("backup", "list", "--data-dir", data_dir, "--json"))
        assert listed == written
        table = box_words(expect(run("backup", "list", "--data-dir", data_dir), 0).stdout)
        assert f"KASSE-1 2026-Q1 1 1 {first['written_at'][:19]} {first['sha256']}" in table
        assert len(journal_events(db, "dep.backup")) == len(written)
        container = tmp_path / "container.json"
        expect(
            run(
                "export",
                "crypto-container",
                "--register",
                "KASSE-1",
                "-o",
                container,
                "--data-dir",
                data_dir,
            ),
            0,
        )
        for record in written:  # each file verifies on its own
            expect(run("verify", record["path"], container), 0)

    def test_one_quarter_and_again(self, run: Run, config: Path) -> None:
        """--quarter writes that quarter; asked again it shows the recorded backup."""
        [record] = _json(run("backup", "run", "--quarter", "2026-Q2", "--config", config, "--json"))
        assert record["quarter"] == "2026-Q2"
        again = expect(run("backup", "run", "--quarter", "2026-Q2", "--config", config), 0)
        assert "KASSE-1 2026-Q2 was backed up already" in flat(again.stdout)

    @pytest.mark.parametrize(
        ("quarter", "rule", "words"),
        [
            ("2999-Q1", "quarter-not-ended", "2999-Q1 has not ended"),
            ("2025-Q4", "quarter-before-register", "receipts from 2026-03-02 on"),
            ("2026-13", "quarter-form", "write it as YYYY-Qn"),
        ],
    )
    def test_a_quarter_that_cannot_be_backed_up_is_exit_3_naming_option_and_rule(
        self, run: Run, config: Path, tmp_path: Path, quarter: str, rule: str, words: str
    ) -> None:
        """Nothing is written; the error names --quarter and the rule."""
        result = run("backup", "run", "--quarter", quarter, "--config", config, "--json")
        body = json.loads(expect(result, 3).stdout)
        assert (body["field"], body["rule"]) == ("--quarter", rule)
        assert words in body["message"]
        assert not (tmp_path / "backups").exists()
        text = expect(run("backup", "run", "--quarter", quarter, "--config", config), 3)
        assert f"[{rule}]" in flat(text.stderr)
        assert words in flat(text.stderr)

    def test_an_unknown_register_is_exit_6(self, run: Run, config: Path, data_dir: Path) -> None:
        expect(run("backup", "run", "--register", "NOPE", "--config", config), 6)
        expect(run("backup", "list", "--register", "NOPE", "--data-dir", data_dir), 6)

    def test_refused_while_another_process_holds_the_data_directory(
        self, run: Run, config: Path, open_db: Callable[..., TillDB], data_dir: Path
    ) -> None:
        """Like the other writing commands: exit 5 while `run` (here: a writer) holds it."""
        open_db(data_dir)
        result = expect(run("backup", "run", "--config", config), 5)
        assert "another till-agent process is writing" in flat(result.stderr)

    def test_a_backup_directory_that_cannot_be_made_is_exit_2(
        self, run: Run, config: Path, tmp_path: Path
    ) -> None:
        """An output that cannot be written: exit 2 naming the path and the cause."""
        (tmp_path / "backups").write_text("a file in the way")
        result = expect(run("backup", "run", "--config", config), 2)
        message = flat(result.stderr)
        assert f"cannot write {tmp_path / 'backups'}" in message
        assert "not a directory" in message


class TestOneRegisterFails:
    @pytest.fixture(name="config")
    def _two_registers(self, service: ReceiptService, request: pytest.FixtureRequest) -> Path:
        """The till with a second register, KASSE-2, and the configuration for both."""
        service.init_register(RegisterSetup("KASSE-2", [UNIT]))
        path: Path = request.getfixturevalue("config")
        return path

    @pytest.fixture(name="in_the_way")
    def _in_the_way(self, tmp_path: Path) -> Path:
        """A file where KASSE-1's backup directory would be: its backups fail."""
        (tmp_path / "backups").mkdir()
        path = tmp_path / "backups" / "KASSE-1"
        path.write_text("a file in the way")
        return path

    def test_the_backups_written_are_shown_before_the_failure(
        self, run: Run, config: Path, in_the_way: Path, data_dir: Path
    ) -> None:
        """KASSE-2's backups are written and shown (stdout) although KASSE-1's failed;
        then the failure (stderr) with its exit code 2."""
        result = expect(run("backup", "run", "--config", config), 2)
        shown = box_words(result.stdout)
        for quarter in ENDED:
            assert f"KASSE-2 {quarter} 1 1" in shown
        assert "KASSE-1" not in shown
        assert f"register KASSE-1: the DEP backup of 2026-Q1 failed: cannot write {in_the_way}" in (
            flat(result.stderr)
        )
        listed = _json(run("backup", "list", "--data-dir", data_dir, "--json"))
        assert {r["register"] for r in listed} == {"KASSE-2"}

    def test_json_names_the_backups_written_in_the_error(
        self, run: Run, config: Path, in_the_way: Path
    ) -> None:
        """--json: one error object (exit 2) whose ``written`` lists KASSE-2's backups."""
        body = json.loads(expect(run("backup", "run", "--config", config, "--json"), 2).stdout)
        assert body["error"] == "BackupFailed"
        assert "register KASSE-1" in body["message"]
        assert [r["register"] for r in body["written"]] == ["KASSE-2"] * len(body["written"])
        assert [r["quarter"] for r in body["written"]][:3] == ENDED


class TestBackupList:
    def test_no_backups_yet(self, run: Run, config: Path, data_dir: Path) -> None:
        assert _json(run("backup", "list", "--data-dir", data_dir, "--json")) == []
        assert "no backups" in expect(run("backup", "list", "--data-dir", data_dir), 0).stdout
