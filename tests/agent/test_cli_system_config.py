"""A user outside group ``till-agent`` runs ``till-agent``: the system configuration
(README "Operations": ``/etc/till-agent`` 0750 root:till-agent, the file 0640) cannot even
be looked at. Every command crashed with a PermissionError traceback, ``--help`` too.

Run as a real process whose permission checks hold: as root (the tests' usual user) with
CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH dropped before it starts, so a directory of
another owner with mode 0750 stops it as it stops that user; the system file's path is
pointed at such a directory (this machine's /etc is not the test's to change)."""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from factories import Run, box_words, expect, flat

PR_CAPBSET_DROP = 24
CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH = 1, 2
NOBODY = 65534

# the system file moved to the test's directory, then the command line as installed
_MAIN = (
    "import sys; from pathlib import Path; import agent.config as c;"
    " c.SYSTEM_CONFIG = Path(sys.argv.pop(1)); from agent.cli import main;"
    " sys.argv[0] = 'till-agent'; main()"
)


def _without_dac_override() -> None:
    """In the child before it execs: root's permission checks apply to it as to a user's."""
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH):
        if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


@pytest.fixture(name="system_config")
def _system_config(tmp_path: Path) -> Path:
    """A stand-in for /etc/till-agent/config.toml with the README's modes, its directory
    owned by another user and group: this process may not look into it."""
    etc = tmp_path / "etc" / "till-agent"
    etc.mkdir(parents=True)
    config = etc / "config.toml"
    config.write_text(f'data_dir = "{tmp_path / "service-data"}"\n', encoding="utf-8")
    config.chmod(0o640)
    etc.chmod(0o750)
    if os.geteuid() == 0:
        os.chown(config, 0, NOBODY)
        os.chown(etc, NOBODY, NOBODY)
    return config


Agent = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture(name="agent")
def _agent(system_config: Path, tmp_path: Path) -> Agent:
    """``till-agent ARGS`` as a process that may not look into the system file's directory."""
    if os.geteuid() == 0:
        try:
            subprocess.run(["true"], preexec_fn=_without_dac_override, check=True)
        except subprocess.SubprocessError as exc:
            pytest.skip(f"root reads everything, and its override cannot be dropped: {exc}")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TILL_AGENT_")}
    env |= {"HOME": str(tmp_path), "COLUMNS": "200"}

    def agent(*args: str | Path) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-c", _MAIN, str(system_config), *map(str, args)]
        return subprocess.run(
            command,
            capture_output=True,
            text=True,
            env=env,
            cwd=tmp_path,
            timeout=120,
            check=False,
            preexec_fn=_without_dac_override if os.geteuid() == 0 else None,
        )

    return agent


def _no_traceback(done: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in done.stderr, done.stderr
    assert "PermissionError" not in done.stdout + done.stderr


def _names_file_and_fix(text: str, system_config: Path) -> None:
    text = box_words(text)  # an error box breaks its lines where the path's length puts them
    assert str(system_config) in text, text
    assert "permission denied" in text, text
    assert "group till-agent" in text, text
    assert "--config" in text, text


class TestUnreadableSystemConfig:
    def test_help_works(self, agent: Agent) -> None:
        """``--help`` needs no configuration."""
        done = agent("--help")
        _no_traceback(done)
        assert done.returncode == 0, done.stderr
        assert "Usage:" in done.stdout

    def test_a_command_given_its_data_directory_works(self, agent: Agent, till: Path) -> None:
        """``--data-dir`` says all a reading command needs."""
        done = agent("receipts", "list", "--register", "KASSE-1", "--data-dir", till, "--json")
        _no_traceback(done)
        assert done.returncode == 0, done.stderr
        assert sorted(r["number"] for r in json.loads(done.stdout)) == [1, 2]

    def test_verify_works(self, agent: Agent, run: Run, till: Path, tmp_path: Path) -> None:
        """``verify`` reads only the files it is given."""
        dep, container = tmp_path / "dep.json", tmp_path / "container.json"
        common = ("--register", "KASSE-1", "--data-dir", till)
        expect(run("export", "dep", *common, "-o", dep), 0)
        expect(run("export", "crypto-container", *common, "-o", container), 0)
        done = agent("verify", dep, container)
        _no_traceback(done)
        assert done.returncode == 0, done.stdout + done.stderr

    @pytest.mark.parametrize("as_json", [False, True])
    def test_a_command_that_needs_the_data_directory_names_the_file_and_the_fix(
        self, agent: Agent, system_config: Path, as_json: bool
    ) -> None:
        """Without ``--data-dir`` the configuration names it: a usage error (exit 2) that
        says why it does not load and what to do, never a guess."""
        done = agent("receipts", "list", "--register", "KASSE-1", *(["--json"] if as_json else []))
        _no_traceback(done)
        assert done.returncode == 2, done.stdout + done.stderr
        said = json.loads(done.stdout)["message"] if as_json else done.stderr
        _names_file_and_fix(said, system_config)
        assert "--data-dir" in flat(said)

    def test_run_names_the_file_and_the_fix(self, agent: Agent, system_config: Path) -> None:
        """The service without ``--config``: exit 2, a configuration error."""
        done = agent("run")
        _no_traceback(done)
        assert done.returncode == 2, done.stdout + done.stderr
        _names_file_and_fix(done.stderr, system_config)

    @pytest.mark.parametrize("as_json", [False, True])
    def test_config_check_names_the_file_and_the_fix(
        self, agent: Agent, system_config: Path, as_json: bool
    ) -> None:
        """``config check`` refuses it as a configuration it cannot accept (exit 3)."""
        done = agent("config", "check", *(["--json"] if as_json else []))
        _no_traceback(done)
        assert done.returncode == 3, done.stdout + done.stderr
        said = json.loads(done.stdout)["message"] if as_json else done.stderr
        _names_file_and_fix(said, system_config)

    def test_config_check_with_a_readable_file_works(self, agent: Agent, tmp_path: Path) -> None:
        """``--config`` naming a file this user can read is the way out."""
        mine = tmp_path / "mine.toml"
        mine.write_text(f'data_dir = "{tmp_path / "mine-data"}"\n', encoding="utf-8")
        done = agent("config", "check", "--config", mine)
        _no_traceback(done)
        assert done.returncode == 0, done.stdout + done.stderr
