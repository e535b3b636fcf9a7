"""Outputs of the command line that must never be written over: the till database and its
side files, the unit keys, read-only files such as the quarterly DEP backups."""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

import pytest
from typer.testing import Result

from factories import Run, expect, flat, sale

OUTPUTS = ["dep", "crypto-container", "png"]


def _write(run: Run, till: Path, what: str, output: Path, *extra: str) -> Result:
    """Write ``output`` with ``export dep``, ``export crypto-container`` or ``receipts show
    --png``."""
    if what == "png":
        args: tuple[str | Path, ...] = ("receipts", "show", "KASSE-1", "2", "--png", output)
    else:
        args = ("export", what, "--register", "KASSE-1", "-o", output)
    return run(*args, "--data-dir", till, *extra)


def _option(what: str) -> str:
    return "--png" if what == "png" else "--output"


def _refused(result: Result, what: str, output: Path, why: str) -> None:
    message = flat(expect(result, 2).stderr)
    assert f"{_option(what)}: cannot write {output}: {why}" in message, message


def _receipts(data_dir: Path) -> int:
    with sqlite3.connect(data_dir / "till.sqlite3") as conn:
        return int(conn.execute("SELECT count(*) FROM receipts").fetchone()[0])


class TestTheTillIsNeverAnOutput:
    @pytest.mark.parametrize("what", OUTPUTS)
    @pytest.mark.parametrize("name", ["till.sqlite3", "till.sqlite3-wal", "agent.lock"])
    def test_the_database_and_its_files_are_refused(
        self, run: Run, till: Path, what: str, name: str
    ) -> None:
        """``export dep -o DATA/till.sqlite3`` exited 0 and replaced the live database with
        the export: exit 2 naming the option, and the database is as it was."""
        target = till / name
        target.touch()
        before = target.read_bytes()
        _refused(_write(run, till, what, target), what, target, "it is ")
        assert target.read_bytes() == before
        assert _receipts(till) == 2
        assert not (till / f"{name}.partial").exists()

    @pytest.mark.parametrize("what", OUTPUTS)
    def test_a_link_to_the_database_is_refused(
        self, run: Run, till: Path, tmp_path: Path, what: str
    ) -> None:
        """A symbolic link and a hard link name the database as well as its own name."""
        soft = tmp_path / "soft.json"
        soft.symlink_to(till / "till.sqlite3")
        hard = tmp_path / "hard.json"
        os.link(till / "till.sqlite3", hard)
        for link in (soft, hard):
            _refused(_write(run, till, what, link), what, link, "it is the till database")
        assert soft.is_symlink()
        assert os.path.samefile(hard, till / "till.sqlite3")
        assert _receipts(till) == 2

    @pytest.mark.parametrize("what", OUTPUTS)
    def test_the_database_through_a_linked_data_directory_is_refused(
        self, run: Run, till: Path, tmp_path: Path, what: str
    ) -> None:
        """The data directory named through a link: the database is still the database."""
        alias = tmp_path / "alias"
        alias.symlink_to(till)
        target = alias / "till.sqlite3"
        _refused(_write(run, till, what, target), what, target, "it is the till database")
        assert _receipts(till) == 2

    @pytest.mark.parametrize("what", OUTPUTS)
    @pytest.mark.parametrize("name", ["dev.key.pem", "new.json"])
    def test_the_key_directory_is_refused(self, run: Run, till: Path, what: str, name: str) -> None:
        """A unit's key, or a new file among them: nothing is written into keys/."""
        keys = till / "keys"
        before = {p.name: p.read_bytes() for p in keys.iterdir()}
        target = keys / name
        _refused(_write(run, till, what, target), what, target, "it is in the till's key directory")
        assert {p.name: p.read_bytes() for p in keys.iterdir()} == before

    @pytest.mark.parametrize("what", OUTPUTS)
    def test_a_hard_link_to_a_key_is_refused(
        self, run: Run, till: Path, tmp_path: Path, what: str
    ) -> None:
        key = till / "keys" / "dev.key.pem"
        before = key.read_bytes()
        link = tmp_path / "key-copy.pem"
        os.link(key, link)
        _refused(_write(run, till, what, link), what, link, "it is in the till's key directory")
        assert key.read_bytes() == before

    @pytest.mark.parametrize("what", OUTPUTS)
    def test_a_read_only_file_is_refused(
        self, run: Run, till: Path, tmp_path: Path, what: str
    ) -> None:
        """A quarterly DEP backup is 0444: its mode keeps it, root or not (a rename does
        not ask the file's mode)."""
        backup = tmp_path / "KASSE-1-2026-Q1.json"
        backup.write_text("the backup")
        backup.chmod(0o444)
        _refused(_write(run, till, what, backup), what, backup, "it is read-only (mode 0444)")
        assert backup.read_text() == "the backup"
        assert sorted(p.name for p in tmp_path.iterdir()) == ["KASSE-1-2026-Q1.json", "data"]

    def test_a_refusal_is_one_json_object(self, run: Run, till: Path) -> None:
        target = till / "till.sqlite3"
        result = expect(_write(run, till, "dep", target, "--json"), 2)
        body = json.loads(result.stdout)
        assert body["error"] == "ConfigurationError"
        assert body["message"].startswith(f"--output: cannot write {target}: it is the till")

    @pytest.mark.parametrize("what", OUTPUTS)
    def test_a_writable_file_is_still_replaced(
        self, run: Run, till: Path, tmp_path: Path, what: str
    ) -> None:
        output = tmp_path / "out.bin"
        output.write_text("old")
        expect(_write(run, till, what, output), 0)
        assert output.read_bytes() != b"old"


# -- a till.sqlite3 without the till's schema: empty, or another program's database ---------

READERS = [
    ("receipts", "list", "--register", "K"),
    ("receipts", "show", "K", "1"),
    ("export", "dep", "--register", "K", "-o", "{out}"),
    ("export", "crypto-container", "--register", "K", "-o", "{out}"),
    ("outage", "list"),
    ("checks", "list"),
    ("backup", "list"),
    ("unit", "list"),
]


def _empty_database(directory: Path, *, schema: bool) -> Path:
    """``directory/till.sqlite3``: a 0-byte file, or (``schema``) an SQLite file with a
    table of another program and no alembic_version."""
    directory.mkdir()
    database = directory / "till.sqlite3"
    database.touch()
    if schema:
        with sqlite3.connect(database) as conn:
            conn.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT)")
            conn.execute("INSERT INTO customers (name) VALUES ('Anna')")
        conn.close()
    return database


class TestADatabaseWithoutTheTillSchema:
    @pytest.mark.parametrize("command", READERS, ids=lambda c: " ".join(c[:2]))
    def test_a_reader_on_an_empty_file_says_there_is_no_till_database(
        self, run: Run, tmp_path: Path, command: tuple[str, ...]
    ) -> None:
        """``mkdir g; : > g/till.sqlite3; till-agent receipts list ...`` was a traceback
        (no such table: receipts): exit 6, as for a directory without the file, saying
        how to make one; the file stays empty and nothing else is made."""
        data = tmp_path / "g"
        database = _empty_database(data, schema=False)
        args = [a.format(out=tmp_path / "out.json") for a in command]
        result = expect(run(*args, "--data-dir", data), 6)
        message = flat(result.stderr)
        assert f"no till database in {data} yet" in message
        assert "run `till-agent init` first" in message
        assert database.stat().st_size == 0
        assert sorted(p.name for p in data.iterdir()) == ["till.sqlite3"]
        assert not (tmp_path / "out.json").exists()

    @pytest.mark.parametrize("command", READERS, ids=lambda c: " ".join(c[:2]))
    def test_a_reader_on_another_programs_database_is_refused(
        self, run: Run, tmp_path: Path, command: tuple[str, ...]
    ) -> None:
        data = tmp_path / "g"
        database = _empty_database(data, schema=True)
        before = database.read_bytes()
        args = [a.format(out=tmp_path / "out.json") for a in command]
        result = expect(run(*args, "--data-dir", data, "--json"), 5)
        body = json.loads(result.stdout)
        assert body["error"] == "StorageError"
        assert body["message"].startswith(f"{database} is not a till database")
        assert database.read_bytes() == before

    def test_issue_leaves_another_programs_database_as_it_is(
        self, run: Run, tmp_path: Path, sale_json: str
    ) -> None:
        """``issue`` migrated a foreign SQLite file into a till database (and then said the
        register was unknown): it is refused, exit 5, and not changed (no WAL either)."""
        data = tmp_path / "g"
        database = _empty_database(data, schema=True)
        before = database.read_bytes()
        result = expect(run("issue", "-", "--data-dir", data, input=sale_json), 5)
        assert "is not a till database" in flat(result.stderr)
        assert database.read_bytes() == before
        with sqlite3.connect(database) as conn:
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
            assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
        conn.close()
        assert tables == {"customers"}

    @pytest.mark.parametrize("create", [True, False], ids=["unit create", "init"])
    def test_a_writer_refuses_another_programs_database(
        self, run: Run, tmp_path: Path, create: bool
    ) -> None:
        data = tmp_path / "g"
        database = _empty_database(data, schema=True)
        before = database.read_bytes()
        args = ["unit", "create-software"] if create else ["init", "KASSE-1", "--unit", "dev"]
        expect(run(*args, "--data-dir", data), 5)
        assert database.read_bytes() == before

    def test_an_empty_file_may_still_become_the_till_database(
        self, run: Run, tmp_path: Path
    ) -> None:
        """An empty file is no one's data: ``unit create-software`` and ``init`` make it
        the till database (``issue`` does not: like a missing one, exit 6)."""
        data = tmp_path / "g"
        _empty_database(data, schema=False)
        expect(run("unit", "create-software", "--data-dir", data), 0)
        expect(run("init", "KASSE-1", "--unit", "dev", "--data-dir", data), 0)
        listed = expect(run("receipts", "list", "--register", "KASSE-1", "--data-dir", data), 0)
        assert "start" in listed.stdout

    def test_issue_on_an_empty_file_is_not_found(
        self, run: Run, tmp_path: Path, sale_json: str
    ) -> None:
        data = tmp_path / "g"
        database = _empty_database(data, schema=False)
        result = expect(run("issue", "-", "--data-dir", data, input=sale_json), 6)
        assert f"no till database in {data} yet" in flat(result.stderr)
        assert database.stat().st_size == 0


@pytest.fixture(name="sale_json")
def _sale_json() -> str:
    return json.dumps(sale())


# -- simulate scenario: a file that is not UTF-8 JSON ---------------------------------------


class TestSimulateScenarioFile:
    @pytest.mark.parametrize(
        ("content", "why"),
        [
            (b"\x90\xff\xfe{not text", "it is not UTF-8 text"),
            (b"{not json", "Expecting property name"),
            (b"[1, 2]", "not a JSON object"),
            (b"5", "not a JSON object"),
        ],
        ids=["binary", "not json", "array", "number"],
    )
    def test_a_scenario_that_is_no_json_object_is_a_clean_error(
        self, run: Run, tmp_path: Path, content: bytes, why: str
    ) -> None:
        """``head -c100 /dev/urandom > bin.json; simulate scenario bin.json`` was a
        UnicodeDecodeError traceback: exit 2 naming the file, as invalid JSON was; nothing
        is written."""
        scenario = tmp_path / "bin.json"
        scenario.write_bytes(content)
        result = expect(run("simulate", "scenario", scenario, "--out", tmp_path / "out"), 2)
        message = flat(result.stderr)
        assert str(scenario) in message
        assert why in message
        assert not (tmp_path / "out").exists()
        body = json.loads(
            expect(
                run("simulate", "scenario", scenario, "--out", tmp_path / "o", "--json"), 2
            ).stdout
        )
        assert body["error"] == "ConfigurationError"


# -- verify: a file that cannot be read is a finding, exit 1 --------------------------------


class TestVerifyUnreadableFiles:
    @pytest.fixture(name="exported")
    def _exported(self, run: Run, till: Path, tmp_path: Path) -> tuple[Path, Path]:
        dep, container = tmp_path / "dep.json", tmp_path / "container.json"
        expect(_write(run, till, "dep", dep), 0)
        expect(_write(run, till, "crypto-container", container), 0)
        return dep, container

    @pytest.mark.parametrize("which", ["dep", "container"])
    @pytest.mark.parametrize("kind", ["missing", "directory"])
    def test_a_missing_file_or_a_directory_is_exit_1_naming_it(
        self, run: Run, exported: tuple[Path, Path], tmp_path: Path, which: str, kind: str
    ) -> None:
        """Typer's ``exists=True`` made it exit 2, where the README promises 1 for a file
        that cannot be read: a finding naming the file and the rule."""
        bad = tmp_path / "bad.json"
        if kind == "directory":
            bad.mkdir()
        dep, container = exported
        args = (bad, container) if which == "dep" else (dep, bad)
        text = flat(expect(run("verify", *args), 1).stdout)
        rule = "malformed-dep" if which == "dep" else "malformed-container"
        assert rule in text
        assert str(bad) in text
        assert "INVALID" in text
        body = json.loads(expect(run("verify", *args, "--json"), 1).stdout)
        assert body["ok"] is False
        assert [f["rule"] for f in body["findings"]] == [rule]
        assert str(bad) in body["findings"][0]["message"]


# -- special: an unknown register is not found, as everywhere else ---------------------------


class TestSpecialOnAnUnknownRegister:
    def test_an_unknown_register_is_exit_6_as_for_receipts(self, run: Run, till: Path) -> None:
        """``special NOPE null`` was exit 3 labelled InvalidSale (register-unknown) where
        ``receipts list --register NOPE`` and the others are exit 6, NotFound (the API:
        404): the same code, label and words; no number was consumed."""
        special = expect(run("special", "NOPE", "null", "--json", "--data-dir", till), 6)
        listed = run("receipts", "list", "--register", "NOPE", "--json", "--data-dir", till)
        assert json.loads(special.stdout) == json.loads(expect(listed, 6).stdout)
        assert json.loads(special.stdout) == {
            "error": "NotFound",
            "message": "register 'NOPE' is not initialized in this till database",
        }
        text = flat(expect(run("special", "NOPE", "null", "--data-dir", till), 6).stderr)
        assert "error: register 'NOPE' is not initialized in this till database" in text
        assert _receipts(till) == 2

    def test_a_bad_kind_is_a_usage_error_first(self, run: Run, till: Path) -> None:
        """The kind is a choice of the command line: exit 2, before the register is looked up."""
        result = expect(run("special", "NOPE", "weekly", "--json", "--data-dir", till), 2)
        assert "'weekly' is not one of" in flat(result.stdout + result.stderr)


# -- the words of errors ---------------------------------------------------------------------


class TestErrorWords:
    def test_a_bad_key_id_names_the_option_once(self, run: Run, data_dir: Path) -> None:
        """``--key-id: --key-id must be ...``: the option once; --json keeps its fields."""
        create = ("unit", "create-software", "--key-id", "bad", "--data-dir", data_dir)
        text = flat(expect(run(*create), 3).stderr)
        assert "error: --key-id must be Ordnungsbegriff-KeyID" in text
        assert "--key-id: --key-id" not in text
        assert text.endswith("[format]")
        body = json.loads(expect(run(*create, "--json"), 3).stdout)
        assert (body["error"], body["field"], body["rule"]) == ("InvalidSale", "--key-id", "format")
        assert body["message"].startswith("--key-id must be Ordnungsbegriff-KeyID")

    def test_another_invalid_input_still_names_its_field(self, run: Run, till: Path) -> None:
        text = flat(expect(run("special", "KASSE-1", "closing", "--data-dir", till), 3).stderr)
        assert "error: --yes: a Schlussbeleg ends the register: add --yes [confirm]" in text

    def test_outage_export_into_a_file_says_it_is_not_a_directory(
        self, run: Run, with_outage: Path, tmp_path: Path
    ) -> None:
        """``outage export -o FILE`` said "File exists": -o names a directory."""
        existing = tmp_path / "notes.txt"
        existing.write_text("mine")
        result = run("outage", "export", "1", "-o", existing, "--data-dir", with_outage)
        assert f"cannot write {existing}: not a directory" in flat(expect(result, 2).stderr)
        assert existing.read_text() == "mine"
