"""``docs/prometheus/till-agent.rules.yml``: a Prometheus rule file whose every alert uses
only metrics the agent exposes. ``promtool check rules`` passes on it (run by hand:
promtool is no test dependency); here PyYAML reads its structure."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from service.test_metrics import Family, parse

from agent.api_backend import ServiceBackend
from agent.receipts import ReceiptService

yaml = pytest.importorskip("yaml")

RULES = Path(__file__).resolve().parents[2] / "docs" / "prometheus" / "till-agent.rules.yml"
_DURATION = re.compile(r"^[0-9]+[smhd]$")
_SELECTOR = re.compile(r"\b(till_agent_[a-z0-9_]+)(?:\{([^}]*)\})?")
_MATCHER = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)\s*"[^"]*"\s*')
# the alerts DESIGN.md and the issue ask for, each by a metric its expr must use
ASKED_FOR = {
    "till silent (target down)": "up",
    "outage open": "till_agent_outage_open",
    "48-hour window within 6 h": "till_agent_outage_window_remaining_seconds",
    "FinanzOnline report due": "till_agent_finanzonline_reports_due",
    "unsigned receipts waiting": "till_agent_unsigned_receipts",
    "spool backlog stuck": "till_agent_spool_oldest_file_age_seconds",
    "data disk low": "till_agent_data_disk_free_bytes",
    "signature unit down": "till_agent_unit_state",
    "Belegcheck overdue": "till_agent_belegchecks_overdue",
    "backup overdue": "till_agent_backup_overdue",
}


@pytest.fixture(name="rules")
def _rules() -> list[dict[str, Any]]:
    document = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    assert set(document) == {"groups"}
    rules: list[dict[str, Any]] = []
    for group in document["groups"]:
        assert set(group) == {"name", "rules"}
        rules.extend(group["rules"])
    return rules


@pytest.fixture(name="exposed")
def _exposed(service: ReceiptService, tmp_path: Path) -> dict[str, Family]:
    """What GET /metrics serves (the backend renders it), with a spool."""
    (tmp_path / "spool" / "in").mkdir(parents=True)
    return parse(ServiceBackend(service, spool_dir=tmp_path / "spool").metrics())


def _names(expr: str) -> set[str]:
    return {match.group(1) for match in _SELECTOR.finditer(expr)}


class TestRuleFile:
    def test_every_rule_is_a_complete_alerting_rule(self, rules: list[dict[str, Any]]) -> None:
        """Each rule: a unique alert name, a one-line expr, an optional ``for`` duration,
        a severity label and a summary; nothing Prometheus would refuse as unknown."""
        names = [rule["alert"] for rule in rules]
        assert len(names) == len(set(names))
        for rule in rules:
            assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule
            assert isinstance(rule["expr"], str)
            assert "\n" not in rule["expr"].strip()
            assert _DURATION.match(rule.get("for", "0s")), rule
            assert rule["labels"]["severity"] in {"warning", "critical"}
            assert rule["annotations"]["summary"]

    def test_every_metric_an_expr_uses_is_exposed_with_its_labels(
        self, rules: list[dict[str, Any]], exposed: dict[str, Family]
    ) -> None:
        """Every ``till_agent_*`` name in an expr is a family the endpoint serves, and
        the labels its selectors match on are labels of that family."""
        for rule in rules:
            for match in _SELECTOR.finditer(rule["expr"]):
                name, matchers = match.group(1), match.group(2)
                assert name in exposed, f"{rule['alert']}: {name} is not exposed"
                if matchers:
                    keys = {m.group(1) for m in _MATCHER.finditer(matchers)}
                    have = {key for _, labels in exposed[name].samples for key, _ in labels}
                    assert keys <= have, f"{rule['alert']}: {name} has no label {keys - have}"

    def test_each_alert_asked_for_is_there(self, rules: list[dict[str, Any]]) -> None:
        """Outage open, window, report due, unsigned, backlog, disk, unit down,
        Belegcheck, backup and the till gone silent (``up == 0``)."""
        used: set[str] = set()
        for rule in rules:
            used |= _names(rule["expr"])
            if re.search(r"\bup\{[^}]*\}\s*==\s*0", rule["expr"]):
                used.add("up")
        assert {topic: name in used for topic, name in ASKED_FOR.items()} == dict.fromkeys(
            ASKED_FOR, True
        )
