"""Fixtures for printing: real receipts of every label, and a TCP socket that plays the printer."""

from __future__ import annotations

import itertools
import socket
import socketserver
import threading
import time
from collections.abc import Iterator

import pytest

from agent.contract import ReceiptResult
from agent.errors import OutcomeUnknown
from agent.receipts import ReceiptService
from agent.signing.flaky import FlakyUnit
from agent.signing.registry import UnitRegistry
from factories import sale

REGISTER = "KASSE-1"
# umlauts, sharp s and the euro sign on the paper; 2 x 3.10 + 5.00 = 11.20
UMLAUT_SALE = sale(
    request_id="umlaut",
    lines=[
        {"text": "Käsekrainer groß", "qty": "2", "unit_price": "3.10", "vat": "normal"},
        {"text": "Gutschein 5€ Müller", "qty": "1", "unit_price": "5.00", "vat": "zero"},
    ],
    payments=[{"method": "cash", "amount": "11.20"}],
)


class FakePrinter:
    """A raw TCP printer on 127.0.0.1: each connection is one job, read until the client
    closes. :attr:`jobs` holds the complete jobs in the order their connections were
    accepted (the order they were sent), whichever finished receiving first."""

    def __init__(self) -> None:
        self._jobs: dict[int, bytes] = {}  # accept order -> the bytes received
        self._arrived = threading.Condition()
        outer = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                chunks = []
                while chunk := self.request.recv(65536):
                    chunks.append(chunk)
                with outer._arrived:
                    outer._jobs[self.server.order_of.pop(self.request)] = b"".join(chunks)  # type: ignore[attr-defined]
                    outer._arrived.notify_all()

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            block_on_close = True

            def __init__(self) -> None:
                super().__init__(("127.0.0.1", 0), Handler)
                self.order_of: dict[object, int] = {}
                self.accepted = itertools.count()

            def process_request(self, request: object, client_address: object) -> None:
                # runs on the accepting thread, so numbers follow the accept order
                self.order_of[request] = next(self.accepted)
                super().process_request(request, client_address)  # type: ignore[arg-type]

        self._server = Server()
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def jobs(self) -> list[bytes]:
        """The jobs received so far, in the order they were sent."""
        with self._arrived:
            return [self._jobs[n] for n in sorted(self._jobs)]

    def wait_for(self, count: int, timeout: float = 5.0) -> list[bytes]:
        """The first ``count`` jobs, once all of them have arrived completely."""
        with self._arrived:
            assert self._arrived.wait_for(lambda: len(self._jobs) >= count, timeout)
            return [self._jobs[n] for n in sorted(self._jobs)][:count]

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()


class ScriptedPrinter:
    """A raw TCP printer on 127.0.0.1, one connection at a time, whose :attr:`mode` decides
    what it does with the next connection: ``read`` (everything until EOF: a job, kept in
    :attr:`jobs`; then ``paper_s`` seconds, the paper, before it closes, which is when
    :meth:`NetworkPrinter.send` returns), ``reset`` (read 200 bytes, then close with
    SO_LINGER 0: a reset) or ``close`` (close right after accepting)."""

    def __init__(self, mode: str = "read", *, paper_s: float = 0.0) -> None:
        self.mode = mode
        self.paper_s = paper_s
        self.jobs: list[bytes] = []
        self.connections = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            self.connections += 1
            with conn:
                if self.mode == "reset":
                    conn.recv(200)
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")
                elif self.mode == "read":
                    chunks = []
                    while chunk := conn.recv(65536):
                        chunks.append(chunk)
                    self.jobs.append(b"".join(chunks))
                    time.sleep(self.paper_s)

    def stop(self) -> None:
        self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        self._thread.join(5)


@pytest.fixture(name="fake_printer")
def _fake_printer() -> Iterator[FakePrinter]:
    printer = FakePrinter()
    yield printer
    printer.stop()


@pytest.fixture(name="free_port")
def _free_port() -> Iterator[int]:
    """A loopback port nobody listens on: bound (so no other process can take it) but not
    listening, so a connection is refused, for the whole test."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield int(sock.getsockname()[1])


@pytest.fixture(name="standard")
def _standard(service: ReceiptService) -> ReceiptResult:
    """A signed standard receipt whose items carry umlauts, sharp s and the euro sign."""
    return service.issue(UMLAUT_SALE)


@pytest.fixture(name="storno")
def _storno(service: ReceiptService, standard: ReceiptResult) -> ReceiptResult:
    voids = {"request_id": "sto", "register": REGISTER, "kind": "storno", "voids": standard.number}
    return service.issue(voids)


@pytest.fixture(name="training")
def _training(service: ReceiptService) -> ReceiptResult:
    return service.issue(sale(request_id="train", kind="training"))


@pytest.fixture(name="fallback")
def _fallback(service: ReceiptService, flaky: FlakyUnit) -> ReceiptResult:
    """A sale made while the signature unit is down."""
    flaky.mode = "down"
    receipt = service.issue(sale(request_id="down"))
    assert receipt.signature_state == "fallback"
    return receipt


@pytest.fixture(name="sammelbeleg")
def _sammelbeleg(
    service: ReceiptService, flaky: FlakyUnit, fallback: ReceiptResult
) -> ReceiptResult:
    """The signed Sammelbeleg that closes the outage of ``fallback``."""
    flaky.mode = "up"
    service.recover(REGISTER)
    receipt = service.get(REGISTER, fallback.number + 1)  # right after the last fallback
    assert (receipt.kind, receipt.signature_state) == ("sammelbeleg", "signed")
    return receipt


class _LostAnswer(FlakyUnit):
    """A chain service whose answer never comes: the outcome of every call is unknown."""

    def sign(self, data: bytes, *, deadline: float) -> bytes:
        raise OutcomeUnknown("the request was sent, no answer came (simulated)")


@pytest.fixture(name="issued_unsigned")
def _issued_unsigned(service: ReceiptService, registry: UnitRegistry) -> ReceiptResult:
    """A sale issued while the chain service loses its answers: stored text and all."""
    with service.db.write_connection().transaction() as conn:
        registry.put(_LostAnswer(registry.get(conn, "dev")))
    receipt = service.issue(sale(request_id="lost"))
    assert receipt.signature_state == "unsigned"
    return receipt


@pytest.fixture(name="unsigned")
def _unsigned(standard: ReceiptResult) -> ReceiptResult:
    """A receipt whose signing outcome is unknown (the service has no path to it yet)."""
    return standard.model_copy(update={"signature_state": "unsigned"})
