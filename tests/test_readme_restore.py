"""README.md, Operations: the backup and restore steps work as written (the operations
review's F2, F5 and F7): the backup command makes private files, and is what `restore`
takes; the restore is `till-agent restore`, no longer a copy beside a stale -wal; the
service user's commands name the venv's till-agent, which is not on root's PATH."""

from __future__ import annotations

import os
import re
import shutil
import sqlite3
import stat
import subprocess
import textwrap
from pathlib import Path

import pytest

from factories import Run, cli_run, expect

README = Path(__file__).resolve().parents[1] / "README.md"


def _operations() -> str:
    text = README.read_text(encoding="utf-8")
    return text[text.index("## Operations") : text.index("## Development")]


def _blocks(text: str) -> list[str]:
    """The shell blocks, without the indentation of the list item they are in."""
    return [
        textwrap.dedent(b).strip() for b in re.findall(r"```sh\n(.*?)```", text, flags=re.DOTALL)
    ]


def test_runuser_names_the_venvs_till_agent() -> None:
    """F7: ``runuser -u till-agent -- till-agent ...`` fails (not on PATH)."""
    commands = re.findall(r"runuser -u\s+till-agent -- (\S+)", _operations())
    assert commands
    assert all(c in {"/opt/till-agent/venv/bin/till-agent", "sh"} for c in commands), commands


def test_restore_is_the_command_not_a_copy() -> None:
    """F2: the old steps copied the backup beside the crashed database's -wal."""
    operations = _operations()
    assert "copy the `.backup` file to `<data_dir>/till.sqlite3`" not in operations
    [restore] = [b for b in _blocks(operations) if " restore " in b]
    assert "/opt/till-agent/venv/bin/till-agent restore " in restore
    assert restore.index("systemctl stop") < restore.index(" restore ")


def test_the_backup_command_makes_private_files_that_restore_takes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """F5: run as written (another data directory and medium; as this user), under the usual
    umask 022: the directory is 0700 and every file in it 0600, and the backup restores."""
    if shutil.which("sqlite3") is None:
        pytest.skip("the README's backup uses the sqlite3 command line")
    for name in ("TILL_AGENT_DATA_DIR", "TILL_AGENT_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    run: Run = cli_run()
    data_dir, medium = tmp_path / "data", tmp_path / "medium"
    expect(run("unit", "create-software", "--id", "k1", "--data-dir", data_dir), 0)
    expect(run("init", "KASSE-1", "--unit", "k1", "--data-dir", data_dir), 0)
    (data_dir / "api-token").write_text("token\n", encoding="ascii")
    [block] = [b for b in _blocks(_operations()) if ".backup" in b]
    script = re.fullmatch(r"runuser -u till-agent -- sh -ec '(.*)'", block, flags=re.DOTALL)
    assert script is not None, block
    body = script.group(1).replace("/var/lib/till-agent", str(data_dir))
    body = body.replace("/mnt/till-backup", str(medium))
    subprocess.run(["sh", "-ec", f"umask 022; {body}"], check=True, timeout=60)

    [taken] = list((medium / "till_db").iterdir())
    assert stat.S_IMODE(taken.stat().st_mode) == 0o700
    for path in taken.rglob("*"):
        assert stat.S_IMODE(path.stat().st_mode) == (0o700 if path.is_dir() else 0o600), path
    assert {p.name for p in taken.iterdir()} == {"till.sqlite3", "api-token", "keys"}
    conn = sqlite3.connect(taken / "till.sqlite3")
    try:
        assert conn.execute("SELECT count(*) FROM receipts").fetchone() == (1,)
    finally:
        conn.close()
    new = tmp_path / "new"
    expect(run("restore", taken / "till.sqlite3", "--data-dir", new, "--yes"), 0)
    assert os.path.exists(new / "till.sqlite3")
