"""Spool file names are the POS's: one with a newline, a carriage return, an escape
sequence or a bidi control is logged escaped, never raw (a name could forge or hide log
lines). Real spool directories, a real receipt service."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import pytest

from agent.api_backend import ServiceBackend
from agent.clock import FrozenClock
from agent.probe import Backoff
from agent.receipts import ReceiptService
from agent.spool import Spool, SpoolIngestor
from factories import sale

FORGED = "\nINFO agent.outages: outage 1 closed: register KASSE-1 (forged)"
NAMES = {
    "lf": f"lf{FORGED}.json",
    "cr": "cr\rWARNING forged.json",
    "esc": "esc\x1b[2K\x1b[1Ghidden.json",
    "rlo": "rlo\u202etxt.exe.json",
}
RAW = ("\n", "\r", "\x1b", "\u202e")


def drop(spool: Spool, name: str, document: Any) -> None:
    tmp = spool.inbox / ".drop.tmp"
    tmp.write_bytes(json.dumps(document).encode())
    os.rename(tmp, spool.inbox / name)


@pytest.fixture(name="spool")
def _spool(tmp_path: Path) -> Spool:
    return Spool(tmp_path / "spool")


@pytest.fixture(name="ingestor")
def _ingestor(spool: Spool, service: ReceiptService, clock: FrozenClock) -> SpoolIngestor:
    handler = ServiceBackend(service).issue_sale
    return SpoolIngestor(spool, handler, clock=clock, backoff=Backoff(1.0, 60.0, jitter=0.0))


def _messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "agent.spool"]


def _assert_escaped(messages: list[str]) -> None:
    for message in messages:
        assert not any(c in message for c in RAW), repr(message)


def test_names_of_rejected_and_issued_sales_are_logged_escaped(
    spool: Spool, ingestor: SpoolIngestor, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, "agent.spool")
    for label, name in NAMES.items():
        bad = sale(request_id=f"bad-{label}", payments=[{"method": "cash", "amount": "1.00"}])
        drop(spool, name, bad)
        drop(spool, "ok-" + name, sale(request_id=f"ok-{label}"))
    assert ingestor.run_once() == 2 * len(NAMES)
    messages = _messages(caplog)
    assert len([m for m in messages if "rejected" in m]) == len(NAMES)
    assert len([m for m in messages if "-> receipt" in m]) == len(NAMES)
    _assert_escaped(messages)
    assert any(repr(NAMES["lf"]) in m for m in messages)
    assert any("'rlo\\u202etxt.exe.json' rejected" in m for m in messages)
    # the answers keep the names as the POS gave them
    assert (spool.failed / NAMES["lf"].replace(".json", ".error.json")).exists()
    assert (spool.out / ("ok-" + NAMES["esc"]).replace(".json", ".result.json")).exists()


def test_refused_unread_too_long_answer_named_and_repeated_names_are_logged_escaped(
    spool: Spool, ingestor: SpoolIngestor, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, "agent.spool")
    (spool.inbox / NAMES["cr"]).mkdir()  # no regular file: refused unread
    drop(spool, "x" * 10 + FORGED + "y" * 170 + ".json", sale(request_id="r-long"))
    drop(spool, "n\x1b[31m.result.json", sale(request_id="r-answer"))  # left alone
    drop(spool, NAMES["esc"], sale(request_id="r-esc"))
    assert ingestor.run_once() == 3
    drop(spool, NAMES["esc"], sale(request_id="r-esc"))  # again: its answer is removed
    assert ingestor.run_once() == 1
    messages = _messages(caplog)
    assert any("refused unread" in m for m in messages)
    assert any("name-too-long" in m for m in messages)
    assert any("left alone" in m for m in messages)
    assert any("arrived again" in m for m in messages)
    _assert_escaped(messages)


def test_a_printable_name_is_logged_as_it_is(
    spool: Spool, ingestor: SpoolIngestor, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "agent.spool")
    drop(spool, "Kaffee für 2.json", sale(payments=[{"method": "cash", "amount": "1.00"}]))
    assert ingestor.run_once() == 1
    [message] = [m for m in _messages(caplog) if "rejected" in m]
    assert message.startswith("spool: Kaffee für 2.json rejected: payments:")
