"""A data directory restored elsewhere (README, Operations: the database and ``keys/``)
keeps signing: a unit's key under ``<data_dir>/keys/`` is stored relative to the data
directory, and an old till's absolute path that is gone is looked up in ``keys/``."""

from __future__ import annotations

import json
import logging
import shutil
import sqlite3
from pathlib import Path

import pytest

from agent.signing.config import UnitConfig, placed_in, stored_in
from factories import Run, cli_run, expect, flat, sale
from storage.db import DB_FILE


@pytest.fixture(name="run")
def _run() -> Run:
    return cli_run()


def _set_up(run: Run, data_dir: Path) -> None:
    expect(run("unit", "create-software", "--id", "k1", "--data-dir", data_dir), 0)
    expect(run("init", "KASSE-1", "--unit", "k1", "--data-dir", data_dir), 0)


def _restore(old: Path, new: Path) -> None:
    """The README's backup (``.backup`` of the database plus ``keys/``) restored into
    ``new``, and the old directory gone."""
    new.mkdir(parents=True)
    source, target = sqlite3.connect(old / DB_FILE), sqlite3.connect(new / DB_FILE)
    try:
        source.backup(target)
    finally:
        source.close()
        target.close()
    shutil.copytree(old / "keys", new / "keys")
    shutil.rmtree(old)


def _issue(run: Run, data_dir: Path, tmp_path: Path, request_id: str) -> str:
    file = tmp_path / f"{request_id}.json"
    file.write_text(json.dumps(sale(request_id=request_id)), encoding="utf-8")
    result = expect(run("issue", file, "--json", "--data-dir", data_dir), 0)
    return str(json.loads(result.stdout)["signature_state"])


def _stored(data_dir: Path, unit_id: str) -> dict[str, object]:
    conn = sqlite3.connect(data_dir / DB_FILE)
    try:
        (config,) = conn.execute("SELECT config FROM units WHERE id = ?", (unit_id,)).fetchone()
    finally:
        conn.close()
    return dict(json.loads(config))


class TestRestoredElsewhere:
    def test_the_key_is_stored_relative_to_the_data_directory(
        self, run: Run, tmp_path: Path
    ) -> None:
        _set_up(run, tmp_path / "a")
        stored = _stored(tmp_path / "a", "k1")
        assert (stored["key_file"], stored["certificate_file"]) == (
            "keys/k1.key.pem",
            "keys/k1.cert.pem",
        )

    def test_a_restored_data_directory_signs(self, run: Run, tmp_path: Path) -> None:
        """No outage after the restore: the key is found in the new directory."""
        old, new = tmp_path / "a", tmp_path / "b"
        _set_up(run, old)
        assert _issue(run, old, tmp_path, "before") == "signed"
        _restore(old, new)
        assert _issue(run, new, tmp_path, "after") == "signed"

    def test_an_old_absolute_path_is_found_in_keys(
        self, run: Run, tmp_path: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A till whose database names the key by an absolute path (as before) and was
        restored elsewhere: the file of that name in ``<data_dir>/keys/`` is used, and
        the log says so."""
        old, new = tmp_path / "a", tmp_path / "b"
        _set_up(run, old)
        conn = sqlite3.connect(old / DB_FILE)
        with conn:
            conn.execute(
                "UPDATE units SET config = json_set(config, '$.key_file', ?,"
                " '$.certificate_file', ?) WHERE id = 'k1'",
                (str(old / "keys" / "k1.key.pem"), str(old / "keys" / "k1.cert.pem")),
            )
        conn.close()
        _restore(old, new)
        caplog.set_level(logging.INFO)
        assert _issue(run, new, tmp_path, "after") == "signed"
        [moved] = [r for r in caplog.records if "k1.key.pem" in r.getMessage()]
        assert moved.levelno == logging.WARNING
        assert str(new / "keys" / "k1.key.pem") in moved.getMessage()


class TestConfigCheck:
    @pytest.mark.usefixtures("no_system_config")
    def test_a_missing_key_file_of_the_registers_unit_is_refused(
        self, run: Run, tmp_path: Path
    ) -> None:
        """The unit is stored (``unit create-software``), not configured: the check
        still reads its files and names the one it cannot read."""
        data_dir = tmp_path / "data"
        _set_up(run, data_dir)
        config = tmp_path / "config.toml"
        config.write_text(
            f'data_dir = "{data_dir}"\n[backup]\ndir = "{tmp_path / "backups"}"\n',
            encoding="utf-8",
        )
        expect(run("config", "check", "--config", config), 0)
        (data_dir / "keys" / "k1.key.pem").unlink()
        refused = expect(run("config", "check", "--config", config), 3)
        message = flat(refused.stderr)
        assert "k1" in message
        assert str(data_dir / "keys" / "k1.key.pem") in message


class TestStoredForm:
    def test_a_file_outside_the_data_directory_is_stored_absolute(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A relative path (``unit add-pkcs11 --certificate cert.pem``) means the working
        directory, not the data directory: stored by its absolute path."""
        monkeypatch.chdir(tmp_path)
        config = UnitConfig(
            id="hsm",
            kind="pkcs11",
            zda="AT1",
            module=Path("libsofthsm2.so"),
            token_label="till",
            key_label="k1",
            pin="1234",
            certificate_file=Path("cert.pem"),
            key_file=tmp_path / "data" / "keys" / "k.pem",
        )
        stored = stored_in(config, tmp_path / "data")
        assert stored.certificate_file == tmp_path / "cert.pem"
        assert stored.key_file == Path("keys/k.pem")
        assert stored.module == Path("libsofthsm2.so")  # the loader searches for it
        assert placed_in(stored, tmp_path / "data") == config.model_copy(
            update={"certificate_file": tmp_path / "cert.pem"}
        )

    @pytest.mark.usefixtures("no_system_config")
    def test_a_chain_units_token_file_is_read(self, run: Run, tmp_path: Path) -> None:
        """A chain unit's service is only reachable at run time, but its token file is a
        file: one that cannot be read is named."""
        config = tmp_path / "config.toml"
        config.write_text(
            f'data_dir = "{tmp_path / "data"}"\n[backup]\ndir = "{tmp_path / "backups"}"\n'
            '[[units]]\nid = "cloud"\nkind = "chain"\nzda = "AT1"\n'
            'url = "https://sign.example.com"\ntoken_file = "chain-token"\n',
            encoding="utf-8",
        )
        refused = expect(run("config", "check", "--config", config), 3)
        assert str(tmp_path / "data" / "chain-token") in flat(refused.stderr)
        (tmp_path / "data").mkdir()
        (tmp_path / "data" / "chain-token").write_text("secret\n", encoding="utf-8")
        expect(run("config", "check", "--config", config), 0)
