"""``[hub] url`` is accepted, but hub forwarding is not built yet: ``config check`` and
``run`` say that nothing is sent to it, and the shipped example does not set it."""

from __future__ import annotations

import logging
import tomllib
from pathlib import Path

import pytest
from service.conftest import quiet_config

from agent.config import load_config
from agent.service import TillService
from factories import Run, cli_run, flat

EXAMPLE = Path(__file__).resolve().parents[1] / "docs" / "config.example.toml"
HUB = "http://127.0.0.1:18099"
SAID = f"hub forwarding is not built yet: nothing is sent to {HUB}; the journal keeps every"

pytestmark = pytest.mark.usefixtures("no_system_config")


@pytest.fixture(name="run")
def _run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Run:
    """The command line in-process, on a data directory of the test's own."""
    monkeypatch.setenv("TILL_AGENT_DATA_DIR", str(tmp_path / "data"))
    return cli_run()


class TestConfigCheck:
    def test_a_hub_url_is_a_warning_not_an_error(
        self, run: Run, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Exit 0 (the till works without a hub) and one warning on stderr naming the url."""
        monkeypatch.setenv("TILL_AGENT_HUB__URL", HUB)
        checked = run("config", "check")
        assert checked.exit_code == 0, checked.output
        assert "configuration OK" in checked.stdout
        assert flat(checked.stderr).count(SAID) == 1

    def test_without_a_hub_url_nothing_is_said(self, run: Run) -> None:
        checked = run("config", "check")
        assert checked.exit_code == 0, checked.output
        assert "hub forwarding" not in flat(checked.stderr)


@pytest.mark.parametrize(("hub", "warned"), [(HUB, 1), (None, 0)], ids=["url", "no-url"])
def test_run_warns_once_at_start(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, hub: str | None, warned: int
) -> None:
    """The service logs one WARNING at start when a hub url is set, none without."""
    caplog.set_level(logging.INFO)
    service = TillService(quiet_config(tmp_path / "data", hub={"url": hub}))
    try:
        service.start()
    finally:
        service.stop()
    lines = [r for r in caplog.records if r.getMessage().startswith("hub forwarding")]
    assert [r.levelno for r in lines] == [logging.WARNING] * warned
    assert all(SAID in r.getMessage() for r in lines)


class TestTheExample:
    def test_the_example_sets_no_hub_and_says_why(self) -> None:
        """The key is there, commented out, under the same words as the warning; no comment
        claims that anything is forwarded."""
        text = EXAMPLE.read_text(encoding="utf-8")
        assert "url" not in tomllib.loads(text)["hub"]
        assert load_config(EXAMPLE, env={}).hub.url is None
        comments = flat(" ".join(line.lstrip("# ") for line in text.splitlines()))
        assert "hub forwarding is not built yet, so nothing is sent to the url" in comments
        assert "the journal keeps every event for it" in comments
        assert "forwarded" not in text
