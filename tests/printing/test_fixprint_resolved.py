"""An unsigned receipt remedied before its print: the paper says what became of it.

A lost answer of the chain service (the real fake on loopback) leaves receipt 2
``unsigned``, stored with "Signatur ungewiss: wird geklärt". When the printer was off the
whole time, or the receipt had no job yet, its original is printed after the remedy: it
must say the outcome ("Geklärt: ...") then, as a copy does, never the settled promise.
The printers are real: a TCP socket on loopback that plays the network printer (refused
while it is "off") and the file printer with its PNG preview.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from printing.conftest import FakePrinter

from agent.clock import FrozenClock
from agent.fakes.chain_service import ChainServiceFake, Mode
from agent.print_worker import PrintWorker
from agent.printing import FilePrinter, NetworkPrinter, render_escpos, render_png
from agent.receipts import ReceiptService, RegisterSetup
from agent.signing import UnitConfig
from agent.signing.registry import UnitRegistry
from factories import add_unit, sale
from storage import TillDB

REGISTER = "KASSE-1"
TOKEN = "test-token"
PROMISE = "wird geklärt".encode("cp858")
REISSUED = "Geklärt: ersetzt durch Beleg 6".encode("cp858")
ADOPTED = "Geklärt: vom Signaturdienst signiert".encode("cp858")


@pytest.fixture(name="chain")
def _chain(tmp_path: Path) -> Iterator[ChainServiceFake]:
    """A lost answer holds its connection briefly: the signing times out at 1.5 s anyway."""
    with ChainServiceFake(TOKEN, key_dir=tmp_path / "chain-key", hold=0.2) as fake:
        yield fake


@pytest.fixture(name="chain_service")
def _chain_service(
    db: TillDB, registry: UnitRegistry, clock: FrozenClock, chain: ChainServiceFake, tmp_path: Path
) -> ReceiptService:
    """Register KASSE-1 (its Startbeleg is 1) on unit ``chain``, on the fake."""
    token_file = tmp_path / "chain-token"
    token_file.write_text(TOKEN)
    unit = UnitConfig(id="chain", kind="chain", zda="AT1", url=chain.url, token_file=token_file)
    add_unit(db, registry, unit)
    service = ReceiptService(db, registry, clock=clock, sign_timeout=1.5)
    service.init_register(RegisterSetup(REGISTER, [unit.id]))
    return service


def _lose(service: ReceiptService, chain: ChainServiceFake, mode: Mode) -> None:
    """Receipt 2, a sale whose request or answer the chain service lost; then it answers."""
    chain.mode = mode
    lost = service.issue(sale(request_id="a1"))
    assert (lost.number, lost.signature_state) == (2, "unsigned")
    assert PROMISE in render_escpos(lost)
    chain.mode = "up"


def test_an_original_queued_while_the_printer_was_off_prints_the_outcome(
    chain_service: ReceiptService,
    chain: ChainServiceFake,
    free_port: int,
    fake_printer: FakePrinter,
) -> None:
    """Receipt 2's job is queued with the promise; the printer stays off until the remedy
    (Storno 5, reissue 6) is done: the original then says it was replaced and voided."""
    network = NetworkPrinter("127.0.0.1", free_port, timeout=1.0)
    worker = PrintWorker(chain_service, network, retry_s=0)
    worker.run_once()  # printing is set up: from here on every receipt is printed
    _lose(chain_service, chain, "lose_request")
    assert worker.run_once() == 0  # the job of 2 waits, the printer is off
    issued = chain_service.recover(REGISTER) or []
    assert [(r.number, r.kind) for r in issued][-2:] == [(5, "storno"), (6, "standard")]
    network.port = fake_printer.port  # switched on
    assert worker.run_once() == 5  # 2 to 6
    original = fake_printer.wait_for(5)[0]
    assert b"Beleg 2\n" in original
    assert REISSUED in original
    assert b"storniert durch Beleg 5" in original
    assert PROMISE not in original
    assert b"KOPIE" not in original
    assert original == render_escpos(chain_service.get(REGISTER, 2))


def test_a_copy_queued_before_the_remedy_prints_the_outcome(
    chain_service: ReceiptService,
    chain: ChainServiceFake,
    free_port: int,
    fake_printer: FakePrinter,
) -> None:
    """A reprint asked for while the receipt waited, and printed after its remedy: the copy
    says what is true when it prints as well."""
    network = NetworkPrinter("127.0.0.1", free_port, timeout=1.0)
    worker = PrintWorker(chain_service, network, retry_s=0)
    worker.run_once()
    _lose(chain_service, chain, "lose_response")
    assert worker.run_once() == 0  # the original's job waits, the printer is off
    assert worker.reprint(REGISTER, 2) == 1
    assert worker.run_once() == 0
    chain_service.recover(REGISTER)
    assert chain_service.get(REGISTER, 2).resolution == "adopted"
    network.port = fake_printer.port
    assert worker.run_once() == 3  # the original, the copy, then the Sammelbeleg 3
    original, copy, _ = fake_printer.wait_for(3)
    for job in (original, copy):
        assert ADOPTED in job
        assert PROMISE not in job
    assert b"KOPIE" in copy
    assert b"KOPIE" not in original


def test_an_original_whose_job_is_made_after_the_remedy_prints_the_outcome(
    chain_service: ReceiptService, chain: ChainServiceFake, tmp_path: Path
) -> None:
    """The worker was not running while 2 was lost and remedied: the job it makes for 2
    afterwards, and the preview beside it, say what happened."""
    jobs = tmp_path / "jobs"
    worker = PrintWorker(chain_service, FilePrinter(jobs))
    worker.run_once()
    _lose(chain_service, chain, "lose_request")
    chain_service.recover(REGISTER)
    assert worker.run_once() == 5
    first = sorted(jobs.glob("*.bin"))[0]
    original = first.read_bytes()
    assert b"Beleg 2\n" in original
    assert REISSUED in original
    assert PROMISE not in original
    stored = chain_service.get(REGISTER, 2)
    assert original == render_escpos(stored)
    assert first.with_suffix(".png").read_bytes() == render_png(stored)


def test_an_original_printed_before_the_remedy_keeps_its_words(
    chain_service: ReceiptService, chain: ChainServiceFake, fake_printer: FakePrinter
) -> None:
    """Printed while the receipt waited, the original says so (that was true then); only a
    later copy says the outcome."""
    worker = PrintWorker(chain_service, NetworkPrinter("127.0.0.1", fake_printer.port), retry_s=0)
    worker.run_once()
    _lose(chain_service, chain, "lose_request")
    assert worker.run_once() == 1
    chain_service.recover(REGISTER)
    assert worker.run_once() == 4
    worker.reprint(REGISTER, 2)
    assert worker.run_once() == 1
    original, *_, copy = fake_printer.wait_for(6)
    assert PROMISE in original
    assert REISSUED not in original
    assert REISSUED in copy
    assert PROMISE not in copy
