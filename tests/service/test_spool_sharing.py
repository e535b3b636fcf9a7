"""The spool as the POS shares it: directory modes for a POS in the agent's group, and
answer names that no sale may take."""

from __future__ import annotations

import json
import logging
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.api_backend import ServiceBackend
from agent.clock import FrozenClock
from agent.probe import Backoff
from agent.receipts import ReceiptService
from agent.spool import POS_DIR_MODE, Spool, SpoolIngestor
from factories import sale


@pytest.fixture(name="strict_umask")
def _strict_umask() -> Iterator[None]:
    """The shipped unit's UMask=0027, which alone would leave the group read-only."""
    old = os.umask(0o027)
    yield
    os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.usefixtures("strict_umask")
def test_the_pos_side_is_created_group_writable_and_setgid(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    assert POS_DIR_MODE == 0o2770
    for directory in (spool.inbox, spool.out, spool.failed):
        assert _mode(directory) == POS_DIR_MODE, directory.name
    assert _mode(spool.work) == 0o750  # the agent's own: the umask decides


@pytest.mark.usefixtures("strict_umask")
def test_an_existing_directory_keeps_its_mode(tmp_path: Path) -> None:
    """An operator's own choice (say 0770 without setgid) is not undone at every start."""
    (tmp_path / "spool" / "in").mkdir(parents=True)
    os.chmod(tmp_path / "spool" / "in", 0o770)
    spool = Spool(tmp_path / "spool")
    assert _mode(spool.inbox) == 0o770
    assert _mode(spool.out) == POS_DIR_MODE


def test_a_sale_named_like_an_answer_cannot_replace_an_answer(
    tmp_path: Path, service: ReceiptService, clock: FrozenClock, caplog: pytest.LogCaptureFixture
) -> None:
    """``X.error.json`` kept in failed/ would be ``X.json``'s error answer: such a file is
    left in in/ and logged once, and the earlier answer stays."""
    spool = Spool(tmp_path / "spool")
    backend = ServiceBackend(service)
    ingestor = SpoolIngestor(
        spool, backend.issue_sale, clock=clock, backoff=Backoff(1.0, 60.0, jitter=0.0)
    )
    (spool.inbox / "x.json").write_text(json.dumps(sale(kind="nonsense")))
    assert ingestor.run_once() == 1
    answer = spool.error_path("x.json").read_bytes()
    assert json.loads(answer)["field"] == "kind"

    for name in ("x.error.json", "y.result.json"):
        (spool.inbox / name).write_text(json.dumps(sale(request_id=name)))
    with caplog.at_level(logging.WARNING, logger="agent.spool"):
        assert ingestor.run_once() == 0
        assert ingestor.run_once() == 0
    assert spool.error_path("x.json").read_bytes() == answer
    assert sorted(p.name for p in spool.inbox.iterdir()) == ["x.error.json", "y.result.json"]
    warned = [r.getMessage() for r in caplog.records if "an answer's name" in r.getMessage()]
    assert len(warned) == 2  # once per file, not once per scan


def test_an_answer_named_sale_already_claimed_is_finished(
    tmp_path: Path, service: ReceiptService, clock: FrozenClock
) -> None:
    """Claimed into work/ by an earlier version (then a crash): issued and answered as any
    claimed sale, not stranded in the agent's own directory."""
    spool = Spool(tmp_path / "spool")
    (spool.work / "y.result.json").write_text(json.dumps(sale(request_id="old")))
    ingestor = SpoolIngestor(
        spool, ServiceBackend(service).issue_sale, clock=clock, backoff=Backoff(1.0, 60.0)
    )
    assert ingestor.run_once() == 1
    assert list(spool.work.iterdir()) == []
    assert json.loads(spool.result_path("y.result.json").read_text())["number"] == 2


def test_an_answer_named_file_dropped_again_is_logged_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spool = Spool(tmp_path / "spool")
    dropped = spool.inbox / "x.error.json"
    with caplog.at_level(logging.WARNING, logger="agent.spool"):
        dropped.write_text("{}")
        spool.incoming()
        spool.incoming()
        dropped.unlink()
        spool.incoming()
        dropped.write_text("{}")
        spool.incoming()
    assert len([r for r in caplog.records if "an answer's name" in r.getMessage()]) == 2
