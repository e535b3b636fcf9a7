"""The version names the build: taken from git when the package is built, a fallback that
names no commit when there is no git history (pyproject.toml, agent/__init__.py).

The builds are real: pip builds the package (with the hatchling and hatch-vcs the test extra
installs, offline: no build isolation, no index) and installs it into a directory, whose
``python -m agent --version`` answers as the installed ``till-agent`` script does.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from agent import UNBUILT_VERSION

ROOT = Path(__file__).resolve().parents[2]
# until a release is tagged: N commits, then the commit's abbreviated hash
FROM_GIT = re.compile(r"0\.1\.dev(\d+)\+g([0-9a-f]{7,40})")


def _git(cwd: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return done.stdout.strip()


def _install(source: Path, target: Path) -> str:
    """Build ``source`` with pip and install it into ``target``; its ``--version``."""
    pip = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-warn-script-location"]
    # offline: tests talk to loopback only, so the build backend is the test environment's
    # (the test extra installs hatchling and hatch-vcs), not one pip fetches from an index
    pip += ["--no-build-isolation", "--no-index"]
    subprocess.run(
        [*pip, "--target", str(target), str(source)],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    # only the installed copy is importable as agent (not the checkout the tests run from)
    env = {k: v for k, v in os.environ.items() if k != "TILL_AGENT_DATA_DIR"}
    env["PYTHONPATH"] = str(target)
    done = subprocess.run(
        [sys.executable, "-m", "agent", "--version"],
        capture_output=True,
        text=True,
        check=True,
        env=env,
        cwd=target,
        timeout=120,
    )
    assert (target / "agent" / "__init__.py").exists()
    return done.stdout.removeprefix("till-agent ").strip()


@pytest.fixture(name="clone")
def _clone(tmp_path: Path) -> Path:
    """A clean clone of the checkout the tests run from, with its history, as CI has it."""
    if not (ROOT / ".git").exists():
        pytest.skip(f"{ROOT} is no git checkout: the build from git is not testable here")
    clone = tmp_path / "clone"
    _git(tmp_path, "clone", "-q", "--no-hardlinks", str(ROOT), str(clone))
    return clone


class TestBuiltFromGit:
    def test_the_version_names_the_commit_and_moves_with_it(
        self, clone: Path, tmp_path: Path
    ) -> None:
        """A build from git says which commit it is (``0.1.devN+g<hash>``, not one constant
        for every build), and the next commit's build says another one."""
        version = _install(clone, tmp_path / "first")
        named = FROM_GIT.fullmatch(version)
        assert named, version
        assert _git(clone, "rev-parse", "HEAD").startswith(named[2])
        assert int(named[1]) == int(_git(clone, "rev-list", "--count", "HEAD"))

        _git(clone, "commit", "-q", "--allow-empty", "-m", "next")
        after = FROM_GIT.fullmatch(_install(clone, tmp_path / "second"))
        assert after, "the next commit's build names no commit"
        assert _git(clone, "rev-parse", "HEAD").startswith(after[2])
        assert (int(after[1]), after[2]) != (int(named[1]), named[2])


class TestWithoutGit:
    def test_a_tree_without_git_history_gets_the_fallback(
        self, clone: Path, tmp_path: Path
    ) -> None:
        """A copy of the tree without ``.git`` (an archive) still builds and installs, as
        the fallback version, which names no commit."""
        shutil.rmtree(clone / ".git")
        assert _install(clone, tmp_path / "installed") == UNBUILT_VERSION
        assert not FROM_GIT.fullmatch(UNBUILT_VERSION)

    def test_the_fallback_is_the_one_the_build_configures(self) -> None:
        """pyproject.toml's fallback-version is agent's UNBUILT_VERSION: a build without git
        and a source tree nobody built say the same."""
        pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
        assert pyproject["tool"]["hatch"]["version"]["fallback-version"] == UNBUILT_VERSION
        assert "version" in pyproject["project"]["dynamic"]

    def test_a_source_tree_nobody_built_says_the_fallback(self, tmp_path: Path) -> None:
        """Without agent/_version.py (only a build writes it) the package imports and says
        the fallback version."""
        package = tmp_path / "agent"
        package.mkdir()
        shutil.copy(ROOT / "agent" / "__init__.py", package / "__init__.py")
        done = subprocess.run(
            [sys.executable, "-c", "import agent; print(agent.__version__)"],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "PYTHONPATH": str(tmp_path)},
            cwd=tmp_path,
            timeout=60,
        )
        assert done.stdout.strip() == UNBUILT_VERSION
