"""``GET /metrics``: the Prometheus exposition of a running till service (real uvicorn on
loopback, real spool directories, the development unit switched down and up), read with a
strict parser of the text format 0.0.4 written here."""

from __future__ import annotations

import json
import math
import os
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from service.conftest import Start

from agent import __version__
from agent.api_backend import ServiceBackend
from agent.clock import FrozenClock
from agent.metrics import Exposition
from agent.receipts import ReceiptService
from agent.service import DEV_UNIT, TillService
from agent.signing.flaky import FlakyUnit, write_mode
from factories import sale

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
Labels = frozenset[tuple[str, str]]

# -- a strict parser of the text format 0.0.4 ----------------------------------------------

_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_HELP = re.compile(rf"^# HELP ({_NAME}) (.*)$")
_TYPE = re.compile(rf"^# TYPE ({_NAME}) (counter|gauge|histogram|summary|untyped)$")
_SAMPLE = re.compile(rf"^({_NAME})(?:\{{(.*)\}})? (\S+)$")
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_ESCAPES = {"\\": "\\", '"': '"', "n": "\n"}


@dataclass
class Family:
    kind: str
    help: str
    samples: dict[tuple[str, Labels], float] = field(default_factory=dict)

    def value(self, name: str | None = None, **labels: str) -> float | None:
        """The sample ``name`` (default: the family's) with exactly ``labels``, or None."""
        for (sample, have), value in self.samples.items():
            if sample == (name or sample) and have == frozenset(labels.items()):
                return value
        return None


def _unescape(text: str, escapable: str) -> str:
    out, chars = [], iter(text)
    for char in chars:
        if char == "\\":
            nxt = next(chars, "")
            assert nxt in escapable, f"bad escape \\{nxt} in {text!r}"
            out.append(_ESCAPES[nxt])
        else:
            out.append(char)
    return "".join(out)


def _labels(text: str) -> Labels:
    """``a="x",b="y"``: label names valid and unique, values escaped only as allowed."""
    pairs: dict[str, str] = {}
    at = 0
    while at < len(text):
        name = _LABEL_NAME.match(text, at)
        assert name is not None, text
        assert text[name.end() : name.end() + 2] == '="', text
        at, value = name.end() + 2, []
        while text[at] != '"':
            value.append(text[at : at + 2] if text[at] == "\\" else text[at])
            at += 2 if text[at] == "\\" else 1
        assert name.group() not in pairs, f"label {name.group()} twice"
        pairs[name.group()] = _unescape("".join(value), '\\"n')
        at += 1
        if at < len(text):
            assert text[at] == ",", text
            at += 1
    return frozenset(pairs.items())


def _belongs(sample: str, family: str, kind: str) -> bool:
    if kind == "histogram":
        return sample in (f"{family}_bucket", f"{family}_sum", f"{family}_count")
    return sample == family


def parse(text: str) -> dict[str, Family]:
    """The families of an exposition; fails on anything the format (or our stricter
    habit: HELP, then TYPE, then the family's samples) does not allow."""
    assert text.endswith("\n")
    families: dict[str, Family] = {}
    current, pending_help = None, None
    for line in text[:-1].split("\n"):
        if (match := _HELP.match(line)) is not None:
            assert match.group(1) not in families, f"{match.group(1)} twice"
            current, pending_help = match.group(1), _unescape(match.group(2), "\\n")
        elif (match := _TYPE.match(line)) is not None:
            assert match.group(1) == current, line
            assert pending_help is not None, line
            families[current] = Family(match.group(2), pending_help)
            pending_help = None
        else:
            match = _SAMPLE.match(line)
            assert match is not None, f"not a sample line: {line!r}"
            assert current in families, line
            family = families[current]
            assert _belongs(match.group(1), current, family.kind), line
            key = (match.group(1), _labels(match.group(2) or ""))
            assert key not in family.samples, f"sample twice: {line}"
            family.samples[key] = float(match.group(3))
    for name, family in families.items():
        if family.kind == "histogram":
            _check_histogram(name, family)
    return families


def _check_histogram(name: str, family: Family) -> None:
    buckets = sorted(
        (float(dict(labels)["le"]), value)
        for sample, labels in family.samples
        if sample == f"{name}_bucket"
        for value in [family.samples[(sample, labels)]]
    )
    counts = [count for _, count in buckets]
    assert counts == sorted(counts), "buckets are cumulative"
    assert buckets[-1][0] == math.inf
    assert family.value(f"{name}_count") == buckets[-1][1]
    assert family.value(f"{name}_sum") is not None


# -- the running service --------------------------------------------------------------------


@pytest.fixture(name="till")
def _till(start: Start, tmp_path: Path) -> TillService:
    """The till service with its local API on a free port and a spool (fast rescans)."""
    return start(
        api={"port": 0},
        spool={"enabled": True, "dir": tmp_path / "spool", "rescan_s": 0.2},
        probe={"initial_s": 0.2, "max_s": 0.5},
    )


@pytest.fixture(name="api")
def _api(till: TillService) -> Iterator[httpx.Client]:
    """A client of the till's API with its token (the metrics need none)."""
    assert till.api is not None
    token = (till.config.data_dir / "api-token").read_text().strip()
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=till.api.url, headers=headers, timeout=10.0) as client:
        yield client


def scrape(till: TillService) -> dict[str, Family]:
    """One scrape, without a token, as Prometheus makes it."""
    assert till.api is not None
    response = httpx.get(f"{till.api.url}/metrics", timeout=10.0)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == CONTENT_TYPE
    return parse(response.text)


def until(
    till: TillService, holds: Callable[[dict[str, Family]], bool], timeout: float = 15.0
) -> dict[str, Family]:
    """Scrape until ``holds`` (scrapes within a second get the same render)."""
    deadline = time.monotonic() + timeout
    while True:
        families = scrape(till)
        if holds(families) or time.monotonic() > deadline:
            return families
        time.sleep(0.1)


def issued(families: dict[str, Family], kind: str, state: str) -> float:
    family = families["till_agent_receipts_issued_total"]
    return family.value(register="KASSE-1", kind=kind, signature_state=state) or 0.0


def gauge(families: dict[str, Family], name: str, **labels: str) -> float | None:
    return families[name].value(**labels)


def _boot_time() -> float:
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith("btime "):
            return float(line.split()[1])
    raise AssertionError("no btime in /proc/stat")


EXPOSED = {
    "till_agent_build_info": "gauge",
    "till_agent_process_start_time_seconds": "gauge",
    "till_agent_receipts_issued_total": "counter",
    "till_agent_register_info": "gauge",
    "till_agent_receipt_last_number": "gauge",
    "till_agent_outage_open": "gauge",
    "till_agent_outage_age_seconds": "gauge",
    "till_agent_outage_window_remaining_seconds": "gauge",
    "till_agent_unsigned_receipts": "gauge",
    "till_agent_special_receipts_waiting": "gauge",
    "till_agent_finanzonline_reports_due": "gauge",
    "till_agent_finanzonline_reports_overdue": "gauge",
    "till_agent_belegchecks_open": "gauge",
    "till_agent_belegchecks_overdue": "gauge",
    "till_agent_backup_overdue": "gauge",
    "till_agent_backup_failing": "gauge",
    "till_agent_unit_state": "gauge",
    "till_agent_unit_last_probe_age_seconds": "gauge",
    "till_agent_spool_files": "gauge",
    "till_agent_spool_oldest_file_age_seconds": "gauge",
    "till_agent_printer_state": "gauge",
    "till_agent_print_jobs_queued": "gauge",
    "till_agent_data_disk_free_bytes": "gauge",
    "till_agent_data_disk_size_bytes": "gauge",
    "till_agent_db_commit_duration_seconds": "histogram",
}


class TestExposition:
    def test_a_scrape_parses_strictly_and_names_every_family(self, till: TillService) -> None:
        """Text format 0.0.4 with its content type, no token needed; every family is
        there (with or without samples), prefixed, counters ending in _total."""
        families = scrape(till)
        assert {name: f.kind for name, f in families.items()} == EXPOSED
        for name, family in families.items():
            assert name.startswith("till_agent_")
            assert family.help
            assert (family.kind == "counter") == name.endswith("_total")

    def test_the_till_wide_values_are_the_till_s(self, till: TillService) -> None:
        """Version, start time, a fresh register (Startbeleg 1, unit up, no Belegcheck:
        a development register owes none), the printer disabled, the disk's free bytes."""
        families = scrape(till)
        assert gauge(families, "till_agent_build_info", version=__version__) == 1
        started = gauge(families, "till_agent_process_start_time_seconds")
        assert started is not None
        assert _boot_time() <= started <= time.time()  # this (the test's) process
        assert gauge(families, "till_agent_receipt_last_number", register="KASSE-1") == 1
        assert issued(families, "start", "signed") == 1
        assert gauge(families, "till_agent_unit_state", unit=DEV_UNIT, state="up") == 1
        assert gauge(families, "till_agent_unit_state", unit=DEV_UNIT, state="down") == 0
        assert gauge(families, "till_agent_belegchecks_open", register="KASSE-1") == 0
        assert gauge(families, "till_agent_outage_open", register="KASSE-1") == 0
        assert families["till_agent_outage_age_seconds"].samples == {}
        assert gauge(families, "till_agent_printer_state", state="disabled") == 1
        free = gauge(families, "till_agent_data_disk_free_bytes")
        size = gauge(families, "till_agent_data_disk_size_bytes")
        assert free is not None
        assert size is not None
        assert 0 < free <= size

    def test_label_values_and_help_are_escaped(self) -> None:
        """A backslash, a double quote and a newline in a label value (and in HELP) are
        written escaped and read back as they were."""
        out = Exposition()
        tricky = 'a "unit"\\ with\nnewline'
        out.family("till_agent_x", "gauge", "help with \\ and\nnewline", [({"unit": tricky}, 1.5)])
        families = parse(out.text())
        assert families["till_agent_x"].help == "help with \\ and\nnewline"
        assert families["till_agent_x"].value(unit=tricky) == 1.5
        assert out.text().count("\n") == 3  # no raw newline inside a line


class TestNoToken:
    def test_a_scrape_cannot_write_or_read_receipts(
        self, till: TillService, api: httpx.Client
    ) -> None:
        """/metrics answers GET only; the /v1 routes still need the token; the exposition
        holds no receipt content (texts, cashier, signature, amounts)."""
        assert till.api is not None
        receipt = api.post("/v1/receipts", content=json.dumps(sale(cashier="Zacharias")))
        assert receipt.status_code == 201
        with httpx.Client(base_url=till.api.url) as anonymous:
            for method in ("POST", "PUT", "DELETE"):
                assert anonymous.request(method, "/metrics").status_code == 405
            assert anonymous.get("/v1/status").status_code == 401
            text = anonymous.get("/metrics").text
        result = receipt.json()
        for secret in ("Zacharias", "Schnitzel", "16.70", "16,70", result["jws"][:40]):
            assert secret not in text
        assert "/metrics" not in httpx.get(f"{till.api.url}/openapi.json").json()["paths"]


class TestValuesMove:
    def test_a_receipt_moves_its_counter_the_last_number_and_the_commits(
        self, till: TillService, api: httpx.Client
    ) -> None:
        """A sale through the API: issued_total{standard, signed} +1, the last number 2,
        and one more durable commit in the histogram."""
        before = scrape(till)
        commits = "till_agent_db_commit_duration_seconds"
        assert api.post("/v1/receipts", content=json.dumps(sale())).status_code == 201
        after = until(till, lambda f: issued(f, "standard", "signed") == 1)
        assert issued(after, "standard", "signed") == 1
        assert gauge(after, "till_agent_receipt_last_number", register="KASSE-1") == 2
        count_before = before[commits].value(f"{commits}_count") or 0
        assert (after[commits].value(f"{commits}_count") or 0) > count_before

    def test_an_outage_opens_ages_and_closes(self, till: TillService, api: httpx.Client) -> None:
        """The unit down: a fallback receipt, the outage open with its age and the rest of
        its 48 hours, the unit down and probed, the Sammelbeleg waiting; the unit up
        again: the probe's Sammelbeleg closes it."""
        write_mode(till.config.data_dir / "simulate" / f"{DEV_UNIT}.mode", "down")
        receipt = api.post("/v1/receipts", content=json.dumps(sale()))
        assert receipt.json()["signature_state"] == "fallback"
        probe = "till_agent_unit_last_probe_age_seconds"
        families = until(till, lambda f: gauge(f, probe, unit=DEV_UNIT) is not None)
        assert issued(families, "standard", "fallback") == 1
        assert gauge(families, "till_agent_outage_open", register="KASSE-1") == 1
        age = gauge(families, "till_agent_outage_age_seconds", register="KASSE-1")
        left = gauge(families, "till_agent_outage_window_remaining_seconds", register="KASSE-1")
        assert age is not None
        assert left is not None
        assert 0 <= age < 60
        assert left == pytest.approx(48 * 3600 - age)
        assert gauge(families, "till_agent_unit_state", unit=DEV_UNIT, state="down") == 1
        assert 0 <= (gauge(families, probe, unit=DEV_UNIT) or -1) < 30
        assert gauge(families, "till_agent_special_receipts_waiting", register="KASSE-1") == 1
        write_mode(till.config.data_dir / "simulate" / f"{DEV_UNIT}.mode", "up")
        families = until(
            till, lambda f: gauge(f, "till_agent_outage_open", register="KASSE-1") == 0
        )
        assert gauge(families, "till_agent_outage_open", register="KASSE-1") == 0
        assert issued(families, "sammelbeleg", "signed") == 1
        assert families["till_agent_outage_age_seconds"].samples == {}
        assert gauge(families, "till_agent_unit_state", unit=DEV_UNIT, state="up") == 1

    def test_the_spool_backlog_counts_waiting_sales_and_their_age(
        self, till: TillService, tmp_path: Path
    ) -> None:
        """With the ingestion stopped, sales in in/ and work/ are counted and the oldest's
        age shown; temporary files and answers' names left in in/ are not sales."""
        assert till.spool is not None
        till.spool.stop()
        spool = tmp_path / "spool"
        now = time.time()
        for path, age in (
            (spool / "in" / "a.json", 300),
            (spool / "in" / "b.json", 10),
            (spool / "in" / ".c.json.tmp", 900),
            (spool / "in" / "d.result.json", 900),
            (spool / "work" / "e.json", 60),
        ):
            path.write_text(json.dumps(sale(request_id=path.stem)))
            os.utime(path, (now - age, now - age))
        families = until(till, lambda f: gauge(f, "till_agent_spool_files", dir="in") == 2)
        assert gauge(families, "till_agent_spool_files", dir="in") == 2
        assert gauge(families, "till_agent_spool_files", dir="work") == 1
        oldest = gauge(families, "till_agent_spool_oldest_file_age_seconds")
        assert oldest is not None
        assert 300 <= oldest < 330


class TestBackend:
    """The same exposition straight from the backend, on a frozen clock."""

    def test_the_window_left_follows_the_outage_s_age(
        self, service: ReceiptService, flaky: FlakyUnit, clock: FrozenClock
    ) -> None:
        """46 hours into an outage, 2 hours of its window are left."""
        flaky.mode = "down"
        assert service.issue(sale()).signature_state == "fallback"
        clock.advance(46 * 3600)
        families = parse(ServiceBackend(service).metrics())
        left = gauge(families, "till_agent_outage_window_remaining_seconds", register="KASSE-1")
        assert left == pytest.approx(2 * 3600)
