"""``--json`` also holds for usage errors Typer finds before a command runs: one JSON
object on stdout and exit 2, as ``_fail`` answers; without ``--json`` Typer's usage box.
Run as a user runs it (``python -m agent``), since ``main()`` is what handles them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from agent import __version__
from agent.cli import app

USAGE_ERRORS = [
    (("verify", "missing.json"), "Missing argument 'container'"),
    (("export", "dep", "--register", "K", "--from", "2026-13-01", "-o", "x"), "'--from'"),
    (("outage", "show", "0"), "Invalid value for 'outage_id'"),
    (("issue", "--bogus"), "No such option: --bogus"),
]


def _agent(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TILL_AGENT_DATA_DIR": str(cwd / "data"), "COLUMNS": "80"}
    command = [sys.executable, "-m", "agent", *map(str, args)]
    return subprocess.run(
        command, check=False, cwd=cwd, env=env, capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize(("args", "said"), USAGE_ERRORS)
def test_a_usage_error_with_json_is_json(args: tuple[str, ...], said: str, tmp_path: Path) -> None:
    done = _agent(*args, "--json", cwd=tmp_path)
    assert (done.returncode, done.stderr) == (2, "")
    [line] = done.stdout.splitlines()
    body = json.loads(line)
    assert list(body) == ["error", "message"]
    assert body["error"] == "UsageError"
    assert said in body["message"]


@pytest.mark.parametrize(("args", "said"), USAGE_ERRORS)
def test_without_json_the_usage_box_stays(args: tuple[str, ...], said: str, tmp_path: Path) -> None:
    done = _agent(*args, cwd=tmp_path)
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr.startswith("Usage: ")
    assert "─ Error ─" in done.stderr
    assert said in done.stderr


def test_help_version_and_exit_codes_are_unchanged(tmp_path: Path) -> None:
    helped = _agent("verify", "--help", "--json", cwd=tmp_path)
    assert (helped.returncode, helped.stderr) == (0, "")
    assert helped.stdout == _agent("verify", "--help", cwd=tmp_path).stdout
    assert "Usage:" in helped.stdout
    version = _agent("--version", cwd=tmp_path)
    assert (version.returncode, version.stdout) == (0, f"till-agent {__version__}\n")
    # a command's own error keeps its code and its JSON
    missing = _agent("outage", "list", "--json", cwd=tmp_path)
    assert missing.returncode == 6
    assert json.loads(missing.stdout)["error"] == "NoDatabase"
    # and a command that succeeds is 0
    made = _agent("unit", "create-software", "--id", "dev", "--json", cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    assert json.loads(made.stdout)


@pytest.mark.parametrize("as_json", [False, True])
def test_ctrl_c_is_exit_130(as_json: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``issue -`` waits for its sale on stdin; Ctrl-C there ends it with 130, as before."""
    monkeypatch.delenv("TILL_AGENT_DATA_DIR", raising=False)
    runner = CliRunner()
    data = ["--data-dir", str(tmp_path / "data")]
    for args in (["unit", "create-software", "--id", "dev"], ["init", "KASSE-1", "--unit", "dev"]):
        assert runner.invoke(app, [*args, *data]).exit_code == 0
    env = {**os.environ, "TILL_AGENT_DATA_DIR": str(tmp_path / "data")}
    command = [sys.executable, "-m", "agent", "issue", "-", *(["--json"] if as_json else [])]
    with subprocess.Popen(
        command,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        # as a shell starts a command in the foreground: a suite started in the background
        # (`pytest ... &` without job control) ignores SIGINT, which its children inherit
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # noqa: PLW1509
    ) as proc:
        time.sleep(2.5)  # imported, the database opened: reading stdin
        assert proc.poll() is None
        proc.send_signal(signal.SIGINT)
        stdout, _ = proc.communicate(timeout=30)
    assert proc.returncode == 130
    assert stdout == b""
