"""A checkout without ../shared (the README's second command on a fresh clone): the tests
that need the RKSV conformance vectors are skipped with one reason, nothing fails to
collect; where ``.ci/run`` sets TILL_TESTS_VECTORS=required their absence fails instead."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import agent
import factories
from factories import require_vectors

ROOT = Path(__file__).resolve().parents[1]
# the four modules that read the vectors at import, and two that read them in their tests
MODULES = [
    "tests/at_rksv/test_kat.py",
    "tests/at_rksv/test_verify.py",
    "tests/at_rksv/test_verify_inputs.py",
    "tests/agent/test_simulate.py",
    "tests/at_rksv/test_verify_partial.py",
    "tests/at_rksv/test_dep_stream.py",
]


@pytest.fixture(name="missing")
def _missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """VECTORS points where there are none; the flag is unset (CI sets it)."""
    where = tmp_path / "shared" / "vectors" / "rksv"
    monkeypatch.setattr(factories, "VECTORS", where)
    monkeypatch.delenv("TILL_TESTS_VECTORS", raising=False)
    return where


class TestRequireVectors:
    def test_without_the_vectors_the_test_is_skipped_naming_the_place(self, missing: Path) -> None:
        """The reason says where they were looked for and what to put there."""
        with pytest.raises(pytest.skip.Exception) as skipped:
            require_vectors()
        assert str(skipped.value) == (
            f"the RKSV conformance vectors are not at {missing}: "
            "put the project's shared/ folder beside the checkout (../shared)"
        )

    def test_required_makes_their_absence_a_failure(
        self, missing: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """TILL_TESTS_VECTORS=required (``.ci/run``): CI never skips them, in a test or at
        a module's import (a collection error)."""
        monkeypatch.setenv("TILL_TESTS_VECTORS", "required")
        with pytest.raises(pytest.fail.Exception, match=f"are not at {missing}: put"):
            require_vectors()
        with pytest.raises(pytest.fail.Exception):
            require_vectors(module=True)

    def test_any_other_value_still_skips(
        self, missing: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("TILL_TESTS_VECTORS", "1")
        with pytest.raises(pytest.skip.Exception):
            require_vectors()

    def test_present_vectors_are_returned(
        self, missing: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        missing.mkdir(parents=True)
        monkeypatch.setenv("TILL_TESTS_VECTORS", "required")
        assert require_vectors() == missing

    def test_ci_sets_the_flag(self) -> None:
        """The one check entry point exports it before the tests run."""
        script = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
        assert "export TILL_TESTS_VECTORS=required" in script
        assert script.index("TILL_TESTS_VECTORS=required") < script.index("pytest -n auto")


def test_a_checkout_without_them_collects_and_skips_with_the_reason(tmp_path: Path) -> None:
    """``pytest --collect-only`` of MODULES in a copy of tests/ with nothing beside it (the
    README's second command on a fresh clone): no collection error, the reason shown."""
    checkout = tmp_path / "till-agent"
    shutil.copytree(
        ROOT / "tests", checkout / "tests", ignore=shutil.ignore_patterns("__pycache__")
    )
    shutil.copy(ROOT / "pyproject.toml", checkout)
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "TILL_"))}
    code = str(Path(agent.__file__).resolve().parents[1])  # this repository's code, not a copy
    environ["PYTHONPATH"] = os.pathsep.join([code, environ.get("PYTHONPATH", "")])
    command = [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider"]
    done = subprocess.run(
        [*command, *MODULES],
        cwd=checkout,
        env=environ,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    summary = done.stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"\d+ tests collected in [\d.]+s", summary), summary
    where = tmp_path / "shared" / "vectors" / "rksv"
    assert f"the RKSV conformance vectors are not at {where}: put the project's" in done.stdout
    assert "SKIPPED [4] tests/factories.py" in done.stdout  # the modules that read at import
