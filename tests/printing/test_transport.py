"""Transports: the bytes reach a TCP socket that plays the printer; failures are quick and clear."""

from __future__ import annotations

import importlib.util
import os
import socket
import time
import tty
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from agent.contract import ReceiptResult
from agent.errors import ConfigurationError, PrinterError
from agent.printing import (
    FilePrinter,
    NetworkPrinter,
    SerialPrinter,
    UsbPrinter,
    render_escpos,
    render_png,
)
from agent.printing._escpos import escpos_module
from agent.printing.transport import printer_errors

if TYPE_CHECKING:  # the fixture's class, from tests/printing/conftest.py
    from conftest import FakePrinter

HAS_PYSERIAL = importlib.util.find_spec("serial") is not None
HAS_PYUSB = importlib.util.find_spec("usb") is not None


class TestNetworkPrinter:
    def test_the_printer_receives_exactly_the_rendered_bytes(
        self, fake_printer: FakePrinter, standard: ReceiptResult
    ) -> None:
        job = render_escpos(standard)
        NetworkPrinter("127.0.0.1", fake_printer.port, timeout=2).send(job)
        assert fake_printer.wait_for(1) == [job]

    def test_each_job_is_one_connection_in_order(
        self, fake_printer: FakePrinter, standard: ReceiptResult
    ) -> None:
        """An original and its reprint arrive as two complete jobs."""
        printer = NetworkPrinter("127.0.0.1", fake_printer.port, timeout=2)
        jobs = [render_escpos(standard), render_escpos(standard, copy=True)]
        for job in jobs:
            printer.send(job)
        printer.close()
        assert fake_printer.wait_for(2) == jobs

    def test_a_printer_that_is_not_listening_fails_at_once(self, free_port: int) -> None:
        printer = NetworkPrinter("127.0.0.1", free_port, timeout=1.0)
        started = time.monotonic()
        with pytest.raises(PrinterError, match=f"printer 127.0.0.1:{free_port}: .*refused"):
            printer.send(b"\x1b@")
        assert time.monotonic() - started < 1.0

    def test_a_printer_that_stops_reading_fails_within_the_timeout(self) -> None:
        """Paper out or a jam: the printer accepts the connection but reads nothing more.
        The send gives up after the timeout instead of hanging."""
        with socket.socket() as stalled:
            stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            stalled.bind(("127.0.0.1", 0))
            stalled.listen()  # never accepted: the kernel completes the handshake alone
            printer = NetworkPrinter("127.0.0.1", stalled.getsockname()[1], timeout=0.5)
            started = time.monotonic()
            with pytest.raises(PrinterError, match="timed out"):
                printer.send(b"\x00" * 64_000_000)
            assert time.monotonic() - started < 3.0


class TestFilePrinter:
    def test_jobs_become_numbered_files_with_the_exact_bytes(
        self, tmp_path: Path, standard: ReceiptResult
    ) -> None:
        """The directory is created; jobs are 000001.bin, 000002.bin; no temporary file stays."""
        out = tmp_path / "print"
        printer = FilePrinter(out)
        jobs = [render_escpos(standard), render_escpos(standard, copy=True)]
        for job in jobs:
            printer.send(job)
        assert sorted(p.name for p in out.iterdir()) == ["000001.bin", "000002.bin"]
        assert [(out / f"00000{n}.bin").read_bytes() for n in (1, 2)] == jobs

    def test_a_preview_is_written_next_to_its_job(
        self, tmp_path: Path, standard: ReceiptResult
    ) -> None:
        png = render_png(standard)
        path = FilePrinter(tmp_path).write(render_escpos(standard), png=png)
        assert path == tmp_path / "000001.bin"
        assert (tmp_path / "000001.png").read_bytes() == png

    def test_numbering_continues_after_a_restart(self, tmp_path: Path) -> None:
        FilePrinter(tmp_path).send(b"one")
        (tmp_path / "notes.bin").write_bytes(b"not a job")
        assert FilePrinter(tmp_path).write(b"two") == tmp_path / "000002.bin"
        assert (tmp_path / "000001.bin").read_bytes() == b"one"

    def test_a_directory_that_cannot_exist_is_a_printer_error(self, tmp_path: Path) -> None:
        blocker = tmp_path / "file"
        blocker.write_bytes(b"")
        with pytest.raises(PrinterError, match=f"printer {blocker}/out"):
            FilePrinter(blocker / "out").send(b"\x1b@")


def _escpos_errors() -> list[type[Exception]]:
    def below(cls: type[Exception]) -> Iterator[type[Exception]]:
        for sub in cls.__subclasses__():
            yield sub
            yield from below(sub)

    return list(below(escpos_module("exceptions").Error))


class TestErrorTranslation:
    @pytest.mark.parametrize("error", _escpos_errors(), ids=lambda cls: cls.__name__)
    def test_every_escpos_error_becomes_a_printer_error(self, error: type[Exception]) -> None:
        """The meta-test of STYLE 4: no escpos exception escapes the transport layer."""
        with pytest.raises(PrinterError, match="printer p: ") as caught, printer_errors("p"):
            raise error("boom")
        assert isinstance(caught.value.__cause__, error)

    @pytest.mark.parametrize(
        ("error", "message"),
        [
            (ConnectionResetError("reset"), "printer p: reset"),
            (TimeoutError(), "printer p: TimeoutError"),  # an empty message names the type
            (ValueError("No backend\n available"), "printer p: No backend available"),
        ],
    )
    def test_socket_and_library_errors_become_one_line_printer_errors(
        self, error: Exception, message: str
    ) -> None:
        with pytest.raises(PrinterError) as caught, printer_errors("p"):
            raise error
        assert str(caught.value) == message


@pytest.mark.skipif(HAS_PYUSB, reason="pyusb is installed")
def test_usb_without_pyusb_is_a_configuration_error() -> None:
    """Without the extra the printer fails when configured, naming the install command."""
    with pytest.raises(ConfigurationError, match=r"pip install 'till-agent\[usb\]'"):
        UsbPrinter(0x04B8, 0x0202)


@pytest.mark.skipif(not HAS_PYUSB, reason="needs pyusb (till-agent[usb])")
def test_a_missing_usb_printer_is_a_quick_printer_error() -> None:
    """No such device (or no libusb at all): a PrinterError, without waiting."""
    printer = UsbPrinter(0xFFFE, 0xFFFE, timeout=1.0)
    started = time.monotonic()
    with pytest.raises(PrinterError, match="printer usb fffe:fffe: "):
        printer.send(b"\x1b@")
    printer.close()
    assert time.monotonic() - started < 2.0


@pytest.mark.skipif(HAS_PYSERIAL, reason="pyserial is installed")
def test_serial_without_pyserial_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match=r"pip install 'till-agent\[serial\]'"):
        SerialPrinter("/dev/ttyS0")


@pytest.fixture(name="pty_port")
def _pty_port() -> Iterator[tuple[int, str]]:
    """A pseudo-terminal: the printer reads the master, the agent writes to the port."""
    master, port = os.openpty()
    tty.setraw(master)
    yield master, os.ttyname(port)
    os.close(master)
    os.close(port)


@pytest.mark.skipif(not HAS_PYSERIAL, reason="needs pyserial (till-agent[serial])")
class TestSerialPrinter:
    def test_a_missing_port_is_a_quick_printer_error(self, tmp_path: Path) -> None:
        started = time.monotonic()
        with pytest.raises(PrinterError, match="Unable to open serial printer"):
            SerialPrinter(str(tmp_path / "ttyNONE"), timeout=1.0).send(b"\x1b@")
        assert time.monotonic() - started < 1.0

    def test_the_job_reaches_the_port(
        self, pty_port: tuple[int, str], standard: ReceiptResult
    ) -> None:
        master, device = pty_port
        printer = SerialPrinter(device, 19200, timeout=1.0)
        job = render_escpos(standard)
        printer.send(job)
        received = b""
        while len(received) < len(job):
            received += os.read(master, 65536)
        printer.close()
        assert received == job

    def test_a_stalled_port_fails_within_the_timeout_and_reopens(
        self, pty_port: tuple[int, str]
    ) -> None:
        """Nobody reads: the write gives up after the timeout; the next job opens anew."""
        master, device = pty_port
        printer = SerialPrinter(device, timeout=0.5)
        started = time.monotonic()
        with pytest.raises(PrinterError, match="Write timeout"):
            printer.send(b"x" * 1_000_000)
        assert time.monotonic() - started < 3.0
        os.set_blocking(master, False)
        while True:  # what the stalled job left in the pipe
            try:
                os.read(master, 65536)
            except BlockingIOError:
                break
        printer.send(b"\x1b@again")
        printer.close()
        os.set_blocking(master, True)
        assert os.read(master, 100) == b"\x1b@again"
