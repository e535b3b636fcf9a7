"""`unit create-software` makes a self-signed key: under the fictitious AT100 (the default)
it is a development key; under a real provider's id (AT1) it is accepted, since tests and
scenario replays use one, but a warning says it is for tests only."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from factories import Run, box_words, expect, flat

README = Path(__file__).resolve().parents[2] / "README.md"
WARNED = "a self-signed certificate under AT1, the id of a real trust service provider"


@pytest.mark.parametrize(
    ("options", "suite", "warned"),
    [
        ((), "R1-AT100", False),
        (("--zda", "AT100"), "R1-AT100", False),
        (("--zda", "AT1"), "R1-AT1", True),
        (("--zda", "AT1", "--key-id", "U:ATU12345678-K1"), "R1-AT0", False),
    ],
    ids=["default", "at100", "at1", "closed-system"],
)
def test_a_real_providers_id_on_a_self_signed_key_is_warned_of(
    run: Run, data_dir: Path, options: tuple[str, ...], suite: str, warned: bool
) -> None:
    """Exit 0 and the unit stored in every case; only AT1 without --key-id warns (on
    stderr: --json output stays one object), saying it is for tests only."""
    made = expect(run("unit", "create-software", *options, "--json", "--data-dir", data_dir), 0)
    assert json.loads(made.stdout)["suite"] == suite
    said = flat(made.stderr)
    assert (WARNED in said) is warned, said
    if warned:
        assert said.startswith("warning: unit dev has a self-signed certificate")
        assert "for tests only" in said


def test_the_readme_shows_the_development_provider() -> None:
    """The README's row of `unit create-software` shows --zda AT100, not a real provider."""
    text = README.read_text(encoding="utf-8")
    [row] = [line for line in text.splitlines() if line.startswith("| `unit create-software")]
    assert re.search(r"\[--zda AT100\]", row)
    assert "[--zda AT1]" not in row


def test_the_help_names_the_fictitious_default(run: Run) -> None:
    shown = box_words(expect(run("unit", "create-software", "--help"), 0).stdout)
    assert "AT100, fictitious, for development" in shown
    assert "for tests only" in shown
