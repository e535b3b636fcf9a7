"""``till-agent run`` as the shipped unit runs it: under ``RestrictSUIDSGID=yes`` and
``UMask=0027``, on a fresh data directory and on one whose spool systemd-tmpfiles made.

``RestrictSUIDSGID=yes`` is a seccomp filter that fails with EPERM every chmod (mkdir,
open) giving the setuid or setgid bit. ``tests/restrict_suid_sgid.c`` installs the same
refusals and execs the agent under them; it is built here with gcc, as tests/powercut.py
builds its shim. Without gcc or the kernel headers the tests skip, naming the packages;
``.ci/run`` sets ``TILL_TESTS_SECCOMP=required``, which makes that a failure.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import pytest

from e2e.harness import Agent, Launch, Process, launcher, write_config
from factories import sale

SHIM_SOURCE = Path(__file__).resolve().parents[1] / "restrict_suid_sgid.c"
PACKAGES = "gcc libc6-dev linux-libc-dev"
# .ci/run sets it: there a missing compiler or header fails these tests instead of skipping
REQUIRED = os.environ.get("TILL_TESTS_SECCOMP") == "required"
UNIT_UMASK = 0o027  # the shipped unit's UMask=
POS_DIRS = ("in", "out", "failed")
STARTED_TIMEOUT = 60.0
_PROBE = """
import os, sys
directory = sys.argv[1]
for mode in (0o2770, 0o770):
    try:
        os.chmod(directory, mode)
        print(f"{mode:o} ok")
    except OSError as exc:
        print(f"{mode:o} errno {exc.errno}")
"""


def _unavailable(why: str) -> NoReturn:
    message = f"{why}: apt-get install {PACKAGES}"
    if REQUIRED:
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(name="restricted", scope="module")
def _restricted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The built ``restrict_suid_sgid``, checked to refuse a setgid chmod and allow 0770."""
    compiler = shutil.which("gcc") or shutil.which("cc")
    if compiler is None:
        _unavailable("the RestrictSUIDSGID tests build a small seccomp wrapper with gcc")
    program = tmp_path_factory.mktemp("restrict") / "restrict_suid_sgid"
    built = subprocess.run(
        [compiler, "-O2", "-Wall", "-Wextra", "-Werror", "-o", str(program), str(SHIM_SOURCE)],
        capture_output=True,
        text=True,
        check=False,
    )
    if built.returncode:
        _unavailable(f"restrict_suid_sgid.c does not build: {built.stderr.strip()[-600:]}")
    probe = program.with_name("probe")
    probe.mkdir()
    ran = subprocess.run(
        [str(program), sys.executable, "-c", _PROBE, str(probe)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert ran.returncode == 0, f"the seccomp filter was not installed: {ran.stderr}"
    assert ran.stdout.split("\n")[:2] == ["2770 errno 1", "770 ok"], ran.stdout
    return program


@pytest.fixture(name="launch")
def _launch(tmp_path: Path, restricted: Path) -> Iterator[Launch]:
    """``till-agent run`` as the unit starts it: under the filter, umask 0027."""

    def spawn(args: list[str], env: dict[str, str], cwd: Path, log: int) -> Process:
        return subprocess.Popen(
            [str(restricted), *args],
            env=env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            umask=UNIT_UMASK,
        )

    started: list[Agent] = []
    yield launcher(tmp_path, started, spawn)
    for agent in started:
        agent.close()


def _config(tmp_path: Path, data_dir: Path) -> Path:
    """A development till on ``data_dir`` (the StateDirectory, 0750), its spool fast."""
    data_dir.mkdir(mode=0o750)
    settings = {
        "data_dir": data_dir,
        "development_unit": True,
        "api": {"port": 0},
        "spool": {"rescan_s": 0.2},
    }
    return write_config(tmp_path / "config.toml", settings)


def _running(agent: Agent, data_dir: Path) -> None:
    """Wait for READY, the API's address file and the end of the start; fail if it exits."""
    agent.wait_ready()
    url = agent.api_url()
    assert (data_dir / "api-address").read_text(encoding="ascii").strip() == url
    deadline = time.monotonic() + STARTED_TIMEOUT
    while "till-agent running" not in agent.output():
        assert agent.proc.poll() is None, f"till-agent exited:\n{agent.tail()}"
        assert time.monotonic() < deadline, f"the start never ended:\n{agent.tail()}"
        time.sleep(0.05)


def _modes(spool: Path) -> dict[str, str]:
    return {name: f"{stat.S_IMODE((spool / name).stat().st_mode):04o}" for name in POS_DIRS}


def _sells_through_the_spool(agent: Agent, spool: Path) -> None:
    """A sale dropped into in/ is answered with its receipt in out/."""
    tmp = spool / "in" / ".sale-1.tmp"
    tmp.write_text(json.dumps(sale(request_id="sgid-1")), encoding="utf-8")
    os.rename(tmp, spool / "in" / "sale-1.json")
    answer = spool / "out" / "sale-1.result.json"
    deadline = time.monotonic() + STARTED_TIMEOUT
    while not answer.exists():
        assert agent.proc.poll() is None, f"till-agent exited:\n{agent.tail()}"
        assert time.monotonic() < deadline, f"no answer in out/:\n{agent.tail()}"
        time.sleep(0.05)
    assert json.loads(answer.read_bytes())["register"] == "KASSE-1"


def _setgid_warnings(output: str) -> list[str]:
    return [
        line for line in output.splitlines() if re.match(r"WARNING .*without the setgid bit", line)
    ]


class TestRestrictSUIDSGID:
    def test_the_filter_refuses_what_the_unit_refuses(
        self, restricted: Path, tmp_path: Path
    ) -> None:
        """Under the wrapper a setgid mode is EPERM for chmod, mkdir and a created file,
        as under ``RestrictSUIDSGID=yes``; the same modes without the bit pass."""
        script = (
            "import os\n"
            "for call in (lambda: os.mkdir('d', 0o2770), lambda: os.mkdir('d', 0o770),"
            " lambda: os.chmod('d', 0o2770), lambda: os.chmod('d', 0o770),"
            " lambda: os.open('f', os.O_CREAT | os.O_WRONLY, 0o2640),"
            " lambda: os.open('f', os.O_CREAT | os.O_WRONLY, 0o640)):\n"
            "    try:\n        call(); print('ok')\n"
            "    except OSError as exc:\n        print(exc.errno)\n"
        )
        ran = subprocess.run(
            [str(restricted), sys.executable, "-c", script],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            check=True,
        )
        assert ran.stdout.split() == ["1", "ok", "1", "ok", "1", "ok"]

    def test_a_fresh_data_dir_starts_at_once_and_warns(
        self, launch: Launch, tmp_path: Path
    ) -> None:
        """The first start on a fresh data directory comes up (READY, api-address) instead
        of dying on the refused chmod 2770: in/, out/ and failed/ are 0770, so a POS in the
        agent's group can still drop sales and remove answers; one WARNING names them,
        what the POS loses (its sales keep its group: 'unreadable') and the fix; the
        service keeps selling."""
        data_dir = tmp_path / "data"
        agent = launch(_config(tmp_path, data_dir))
        _running(agent, data_dir)
        spool = data_dir / "spool"
        assert _modes(spool) == dict.fromkeys(POS_DIRS, "0770")
        assert stat.S_IMODE((spool / "work").stat().st_mode) == 0o750  # the agent's own
        warnings = _setgid_warnings(agent.output())
        assert len(warnings) == 1, agent.tail()
        for name in POS_DIRS:
            assert f"{spool / name} (0770)" in warnings[0]
        assert "'unreadable'" in warnings[0]
        assert "systemd/till-agent.tmpfiles.conf" in warnings[0]
        assert f"chmod 2770 {spool / 'in'} {spool / 'out'} {spool / 'failed'}" in warnings[0]
        _sells_through_the_spool(agent, spool)
        assert agent.proc.poll() is None
        assert "Traceback" not in agent.output()
        assert agent.terminate() == 0

    def test_a_spool_made_by_tmpfiles_is_kept_without_a_warning(
        self, launch: Launch, tmp_path: Path
    ) -> None:
        """in/, out/ and failed/ made 2770 beforehand (as systemd-tmpfiles does, outside
        the sandbox): nothing to do, no warning, and the modes stay 2770."""
        data_dir = tmp_path / "data"
        config = _config(tmp_path, data_dir)
        spool = data_dir / "spool"
        spool.mkdir(mode=0o750)
        (spool / "work").mkdir(mode=0o750)
        for name in POS_DIRS:
            (spool / name).mkdir()
            os.chmod(spool / name, 0o2770)
        agent = launch(config)
        _running(agent, data_dir)
        assert _setgid_warnings(agent.output()) == []
        _sells_through_the_spool(agent, spool)
        assert _modes(spool) == dict.fromkeys(POS_DIRS, "2770")
        assert agent.terminate() == 0

    def test_a_setgid_spool_root_passes_its_bit_on_without_a_warning(
        self, launch: Launch, tmp_path: Path
    ) -> None:
        """A spool directory the operator made setgid (2770), in/, out/ and failed/ not
        made yet: under the filter the agent makes them 2770, the bit inherited from the
        spool directory and never cleared by a chmod, so no WARNING."""
        data_dir = tmp_path / "data"
        config = _config(tmp_path, data_dir)
        spool = data_dir / "spool"
        spool.mkdir()
        os.chmod(spool, 0o2770)
        agent = launch(config)
        _running(agent, data_dir)
        assert _modes(spool) == dict.fromkeys(POS_DIRS, "2770")
        assert _setgid_warnings(agent.output()) == [], agent.tail()
        _sells_through_the_spool(agent, spool)
        assert agent.terminate() == 0
