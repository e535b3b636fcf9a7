"""A HOME this user cannot look into (a parent directory without search permission):
``default_data_dir`` raised PermissionError (``Path.is_dir`` passes EACCES on in Python
3.11) while the command line was imported, so every ``till-agent`` command, ``--help``
too, died with a traceback. It is taken as no HOME (``./till-data``); with the working
directory gone as well there is no default, and the commands say so.

Run as real processes whose permission checks hold: as root (the tests' usual user) with
CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH dropped before it starts (as
tests/agent/test_cli_system_config.py does; a switch to ``nobody`` cannot run this venv's
interpreter, which lives under root's 0700 home), so the directory of mode 0 stops it as
it stops any user.
"""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import agent
from factories import flat

PR_CAPBSET_DROP = 24
CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH = 1, 2
CHECKOUT = Path(agent.__file__).resolve().parents[1]

# no system file (this machine's /etc is not the test's), then the command line as installed
_MAIN = (
    "import sys; from pathlib import Path; import agent.config as c;"
    " c.SYSTEM_CONFIG = Path(sys.argv.pop(1)); from agent.cli import main;"
    " sys.argv[0] = 'till-agent'; main()"
)

Agent = Callable[..., subprocess.CompletedProcess[str]]


def _without_dac_override() -> None:
    """In the child before it execs: root's permission checks apply to it as to a user's."""
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH):
        if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


@pytest.fixture(name="locked_home")
def _locked_home(tmp_path: Path) -> Iterator[Path]:
    """``HOME`` inside a directory of mode 0: it cannot even be looked at."""
    home = tmp_path / "locked" / "home"
    home.mkdir(parents=True)
    home.parent.chmod(0)
    yield home
    home.parent.chmod(0o700)  # so that pytest can remove it


@pytest.fixture(name="agent")
def _agent(locked_home: Path, tmp_path: Path) -> Agent:
    """``till-agent ARGS`` with that HOME, in ``cwd`` (``gone``: a working directory that
    is removed before the command starts)."""
    root = os.geteuid() == 0
    if root:
        try:
            subprocess.run(["true"], preexec_fn=_without_dac_override, check=True)
        except subprocess.SubprocessError as exc:
            pytest.skip(f"root looks into every directory, and that cannot be dropped: {exc}")
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("TILL_AGENT_") and k not in {"XDG_DATA_HOME", "STATE_DIRECTORY"}
    }
    env |= {"HOME": str(locked_home), "COLUMNS": "200", "PYTHONPATH": str(CHECKOUT)}
    no_system_file = tmp_path / "no-etc" / "config.toml"

    def agent(*args: str, cwd: Path, gone: bool = False) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-c", _MAIN, str(no_system_file), *args]
        if gone:  # the shell enters it, removes it, then runs the command there
            cwd.mkdir()
            command = ["sh", "-c", 'cd "$0" && rmdir "$0" && exec "$@"', str(cwd), *command]
            cwd = tmp_path
        return subprocess.run(
            command,
            capture_output=True,
            text=True,
            env=env,
            cwd=cwd,
            timeout=120,
            check=False,
            preexec_fn=_without_dac_override if root else None,
        )

    return agent


def _no_traceback(done: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in done.stderr, done.stderr
    assert "PermissionError" not in done.stdout + done.stderr


class TestAHomeThatCannotBeEntered:
    def test_help_works(self, agent: Agent, tmp_path: Path) -> None:
        done = agent("--help", cwd=tmp_path)
        _no_traceback(done)
        assert done.returncode == 0, done.stderr
        assert "Usage:" in done.stdout

    def test_the_default_is_till_data_as_without_a_home(self, agent: Agent, tmp_path: Path) -> None:
        """A command on the default data directory looks in ./till-data, as it does when
        HOME is not set: no database there yet (exit 6)."""
        done = agent("outage", "list", cwd=tmp_path)
        _no_traceback(done)
        assert done.returncode == 6, done.stderr
        assert str(tmp_path / "till-data") in flat(done.stderr)

    def test_config_check_names_till_data(self, agent: Agent, tmp_path: Path) -> None:
        """``config check`` names ./till-data as the data directory it would use."""
        done = agent("config", "check", cwd=tmp_path)
        _no_traceback(done)
        assert str(tmp_path / "till-data") in flat(done.stdout + done.stderr)


class TestNoDefaultAtAll:
    @pytest.mark.parametrize("args", [("outage", "list"), ("run",)], ids=["outage-list", "run"])
    def test_the_command_says_there_is_no_data_directory(
        self, agent: Agent, tmp_path: Path, args: tuple[str, ...]
    ) -> None:
        """The working directory is gone too: exit 2 naming data_dir and the ways to set
        it, no traceback."""
        done = agent(*args, cwd=tmp_path / "gone", gone=True)
        _no_traceback(done)
        text = flat(done.stdout + done.stderr)
        assert done.returncode == 2, text
        assert "data_dir: not configured, and there is no default" in text
        assert "TILL_AGENT_DATA_DIR" in text
        assert "--data-dir" in text

    def test_help_still_works(self, agent: Agent, tmp_path: Path) -> None:
        done = agent("--help", cwd=tmp_path / "gone", gone=True)
        _no_traceback(done)
        assert done.returncode == 0, done.stderr
