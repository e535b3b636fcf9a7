"""``till-agent bench ingest`` end to end: a real ``till-agent run`` process, spool and API.

A benchmark is a command, never a timed test: these tests check that it runs, reports
its keys and loses no sale, not how fast it is.
"""

from __future__ import annotations

import json

from typer.testing import CliRunner

import agent.cli_demo  # noqa: F401 - registers `bench ingest` until agent/cli.py imports it
from agent.cli import app

KEYS = {
    "n",
    "clients",
    "spool_per_s",
    "spool_failed",
    "api_per_s",
    "api_p50_ms",
    "api_p99_ms",
    "api_failed",
    "service_exit",
}


class TestBenchIngest:
    def test_json_reports_both_paths_without_a_failure(self) -> None:
        """200 sales through the spool and 200 through the API, all answered, clean stop."""
        result = CliRunner().invoke(app, ["bench", "ingest", "--n", "200", "--json"])
        assert result.exit_code == 0, result.output
        data = json.loads(result.stdout)
        assert set(data) == KEYS
        assert (data["n"], data["clients"]) == (200, 4)
        assert (data["spool_failed"], data["api_failed"], data["service_exit"]) == (0, 0, 0)
        assert data["spool_per_s"] > 0
        assert data["api_per_s"] > 0
        assert 0 < data["api_p50_ms"] <= data["api_p99_ms"]

    def test_without_json_a_table_is_printed(self) -> None:
        result = CliRunner().invoke(app, ["bench", "ingest", "--n", "20", "--clients", "2"])
        assert result.exit_code == 0, result.output
        for key in ("spool_per_s", "api_per_s", "api_p99_ms"):
            assert key in result.stdout
