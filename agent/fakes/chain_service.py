"""A fake remote chain service (fiskaly SIGN AT style): a real HTTP server on 127.0.0.1.

It signs JWS signing inputs with its own ECDSA P-256 key (deterministic, RFC 6979) and
keeps every receipt it signed, so a client can ask later whether it has one. Its
certificate is self-signed (open system, ZDA ``AT1``) and plainly marked as not certified.

HTTP API. Every request needs ``Authorization: Bearer <token>`` (else 401); bodies are
JSON unless said otherwise; an error body is ``{"error": "<code>", "message": "..."}``::

    PUT /v1/registers/{register}/receipts/{client_id}
        body  {"signing_input": "<JWS signing input, ASCII>"}
        200   {"client_id": "...", "signature": "<base64url R||S, no padding>",
               "sequence": <the service's own running number in this register>}
        409   {"error": "client-id-conflict"}: client_id holds another signing input
        400   {"error": "bad-body"}
    GET /v1/registers/{register}/receipts/{client_id}
        200   the body the PUT that stored the receipt answered with
        404   {"error": "receipt-not-found"}
    GET /v1/health        200 {"status": "ok"}
    GET /v1/certificate   200 the certificate, PEM (``application/x-pem-file``)
    other paths           404 {"error": "no-such-route"}; a GET/PUT on the wrong path 405,
                          other methods 501

A PUT is idempotent: the same client_id with the same input gets the stored answer again.

Modes (:attr:`ChainServiceFake.mode`; switch from any thread while it runs). The
misbehaving modes apply to every request, GET included:

* ``up``: answers as above.
* ``down``: 503 to every request; nothing is stored (a known failure).
* ``unreachable``: stops listening and drops open connections, so clients get "connection
  refused"; any other mode listens again on the same port.
* ``lose_response``: handles the request (a PUT is stored and signed), then sends nothing:
  it holds the connection for :attr:`~ChainServiceFake.hold` seconds and closes it.
* ``lose_request``: reads the request, stores nothing, then behaves as ``lose_response``.
* ``lose_put_response``: a PUT as in ``lose_response``; every other request as in ``up``
  (the service answers lookups, but the answer to a new receipt is lost on the way).
* ``slow``: handles the request (a PUT is stored at once) and answers after
  :attr:`~ChainServiceFake.delay` seconds.

Standalone, for demos: ``python -m agent.fakes.chain_service --port 8099 --token T`` prints
the URL, then takes mode names from stdin, one per line, until stdin ends and Ctrl-C.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hmac
import json
import logging
import re
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, cast, get_args

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from agent.signing.software import SoftwareUnit, create_software_unit

__all__ = ["MODES", "ChainServiceFake", "Mode", "main"]

Mode = Literal[
    "up", "down", "unreachable", "lose_response", "lose_request", "lose_put_response", "slow"
]
MODES: tuple[Mode, ...] = get_args(Mode)

_log = logging.getLogger(__name__)
_NAME = "chain-fake"
_RECEIPT_PATH = re.compile(r"/v1/registers/([^/]+)/receipts/([^/]+)")
_MAX_BODY = 64 * 1024
_JSON = "application/json"


@dataclass(frozen=True, slots=True)
class _Answer:
    status: int
    body: bytes
    content_type: str = _JSON


def _error(status: int, code: str, message: str) -> _Answer:
    return _Answer(status, json.dumps({"error": code, "message": message}).encode())


@dataclass(frozen=True, slots=True)
class _Receipt:
    signing_input: str
    answer: _Answer


class _Server(ThreadingHTTPServer):
    """One listening socket; it knows its open connections so it can drop them."""

    # non-daemon handler threads: server_close() joins them, so every socket is closed
    # by the time the fake has stopped
    daemon_threads = False

    def __init__(self, port: int, fake: ChainServiceFake) -> None:
        self.fake = fake
        self.closing = threading.Event()  # wakes handlers that hold or delay an answer
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(("127.0.0.1", port), _Handler)

    def process_request(
        self, request: socket.socket | tuple[bytes, socket.socket], client_address: Any
    ) -> None:
        if isinstance(request, socket.socket):
            with self._connections_lock:
                self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: socket.socket | tuple[bytes, socket.socket]) -> None:
        if isinstance(request, socket.socket):
            with self._connections_lock:
                self._connections.discard(request)
        super().shutdown_request(request)

    def drop_connections(self) -> None:
        """Wake every handler blocked on its connection; each one then closes it."""
        with self._connections_lock:
            for connection in self._connections:
                with contextlib.suppress(OSError):
                    connection.shutdown(socket.SHUT_RDWR)

    def handle_error(
        self, request: socket.socket | tuple[bytes, socket.socket], client_address: Any
    ) -> None:
        _log.debug("connection from %s failed", client_address, exc_info=True)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as a real service would
    server: _Server

    def do_GET(self) -> None:
        self._serve("GET")

    def do_PUT(self) -> None:
        self._serve("PUT")

    def log_message(self, format: str, *args: Any) -> None:
        _log.debug("%s " + format, self.address_string(), *args)

    def _serve(self, method: str) -> None:
        answer = self._answer(method)
        if answer is None:
            self._hang()
        else:
            self._send(answer)

    def _answer(self, method: str) -> _Answer | None:
        """What to send in the current mode; ``None`` to send nothing."""
        fake = self.server.fake
        mode = fake._count_request()
        body = self._read_body()
        if body is None:
            return _error(413, "bad-length", f"Content-Length must be 0..{_MAX_BODY}")
        refused = self._refused(mode)
        if refused is not None or mode == "lose_request":
            return refused
        answer = fake._route(method, self.path, body)
        lost = mode == "lose_response" or (mode == "lose_put_response" and method == "PUT")
        if lost or (mode == "slow" and self.server.closing.wait(fake.delay)):
            return None  # (a slow answer is lost too when the fake stops meanwhile)
        return answer

    def _refused(self, mode: Mode) -> _Answer | None:
        if mode == "down":
            return _error(503, "down", "the service is down (simulated)")
        if not self.server.fake._authorized(self.headers.get("Authorization", "")):
            return _error(401, "unauthorized", "a valid bearer token is required")
        return None

    def _read_body(self) -> bytes | None:
        try:
            length = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            length = -1
        if not 0 <= length <= _MAX_BODY:
            self.close_connection = True  # the rest of the stream cannot be framed
            return None
        return self.rfile.read(length)

    def _hang(self) -> None:
        """Answer nothing: hold the connection, then close it without a response."""
        self.server.closing.wait(self.server.fake.hold)
        self.close_connection = True

    def _send(self, answer: _Answer) -> None:
        self.send_response(answer.status)
        self.send_header("Content-Type", answer.content_type)
        self.send_header("Content-Length", str(len(answer.body)))
        if answer.status == 401:
            self.send_header("WWW-Authenticate", "Bearer")
        self.end_headers()
        self.wfile.write(answer.body)
        match = _RECEIPT_PATH.fullmatch(self.path)
        if match is not None and self.command == "PUT":
            self.server.fake._note_answer(match.group(2))


class ChainServiceFake:
    """The fake service; use it as a context manager, or :meth:`start` and :meth:`stop`.

    Args:
        token: the bearer token clients must send.
        port: the port to listen on; 0 picks a free one, kept across ``unreachable``.
        key_dir: where the key and certificate live (created there when missing, so the
            identity survives restarts); ``None`` makes a fresh pair for this object.
        delay: seconds a ``slow`` answer takes.
        hold: seconds a lost answer holds its connection before it is closed (0: at once).
    """

    def __init__(
        self,
        token: str,
        *,
        port: int = 0,
        key_dir: Path | None = None,
        delay: float = 5.0,
        hold: float = 10.0,
    ) -> None:
        self.token = token
        self.delay = delay
        self.hold = hold
        self._signer = _load_or_create_signer(key_dir)
        der = self._signer.identity.certificate_der
        assert der is not None  # an open-system unit always has one
        self.certificate = x509.load_der_x509_certificate(der)
        self._port = port
        self._mode: Mode = "up"
        self._running = False
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._listen_lock = threading.Lock()  # serialises start, stop and mode changes
        self._lock = threading.Lock()  # receipts and counters
        self._receipts: dict[tuple[str, str], _Receipt] = {}
        self._sequences: dict[str, int] = {}
        self._requests = 0
        self._once: dict[int, Mode] = {}  # request number -> its mode (see handle_once)
        self._answered: dict[str, float] = {}  # client_id -> monotonic time of its last answer

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> ChainServiceFake:
        """Start serving (unless the mode is ``unreachable``); returns ``self``."""
        with self._listen_lock:
            self._running = True
            if self._mode != "unreachable":
                self._listen()
        return self

    def stop(self) -> None:
        """Stop listening, drop every connection and wait for the handlers to end."""
        with self._listen_lock:
            self._running = False
            self._unlisten()

    def __enter__(self) -> ChainServiceFake:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._port}"

    @property
    def certificate_pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    @property
    def mode(self) -> Mode:
        return self._mode

    @mode.setter
    def mode(self, mode: Mode) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; modes: {', '.join(MODES)}")
        with self._listen_lock:
            self._mode = mode
            if mode == "unreachable":
                self._unlisten()
            elif self._running and self._server is None:
                self._listen()

    def handle_once(self, request: int, mode: Mode) -> None:
        """Handle request number ``request`` (as :attr:`requests_seen` counts them, the
        first is 1) in ``mode`` whatever :attr:`mode` is then; the others as :attr:`mode`.
        ``unreachable`` is no mode for one request (nothing would be read to count)."""
        if mode not in MODES or mode == "unreachable":
            raise ValueError(f"no mode for one request: {mode!r}")
        with self._lock:
            self._once[request] = mode

    def drop_connections(self) -> None:
        """Close every open connection without an answer (a network cut); the mode stays."""
        with self._listen_lock:
            if self._server is not None:
                self._server.drop_connections()

    @property
    def requests_seen(self) -> int:
        """Requests read so far, in every mode (connections refused are not requests)."""
        with self._lock:
            return self._requests

    @property
    def receipts_stored(self) -> int:
        with self._lock:
            return len(self._receipts)

    def signing_inputs(self, register: str) -> list[str]:
        """The signing inputs the service holds for ``register``, in its own sequence."""
        with self._lock:
            held = [
                (json.loads(r.answer.body)["sequence"], r.signing_input)
                for (reg, _), r in self._receipts.items()
                if reg == register
            ]
        return [signing_input for _, signing_input in sorted(held)]

    def _listen(self) -> None:
        if self._server is not None:
            return
        server = _Server(self._port, self)
        self._port = server.server_address[1]
        thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, name=_NAME, daemon=True
        )
        thread.start()
        self._server, self._thread = server, thread

    def _unlisten(self) -> None:
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        self._server = self._thread = None
        server.shutdown()
        # refuse new connections before the open ones end: a client that reconnects at once
        # must meet "connection refused", not a listening socket about to close
        server.socket.close()
        server.closing.set()
        server.drop_connections()
        server.server_close()  # closes the listening socket, joins the handlers
        thread.join()

    # -- requests (called from the handler threads) ----------------------------------------

    def answered_at(self, client_id: str) -> float | None:
        """When (``time.monotonic()``) the last answer to a PUT of ``client_id`` was sent."""
        with self._lock:
            return self._answered.get(client_id)

    def _note_answer(self, client_id: str) -> None:
        with self._lock:
            self._answered[client_id] = time.monotonic()

    def _count_request(self) -> Mode:
        """Count one request and return the mode it is handled in."""
        with self._lock:
            self._requests += 1
            return self._once.pop(self._requests, self._mode)

    def _authorized(self, header: str) -> bool:
        scheme, _, token = header.partition(" ")
        expected = self.token.encode()
        return scheme.lower() == "bearer" and hmac.compare_digest(token.encode(), expected)

    def _route(self, method: str, path: str, body: bytes) -> _Answer:
        """The answer of the service in mode ``up`` (a PUT stores the receipt)."""
        simple = {"/v1/health": self._health, "/v1/certificate": self._certificate}
        match = _RECEIPT_PATH.fullmatch(path)
        if path in simple or match:
            allowed = ("PUT", "GET") if match else ("GET",)
            if method not in allowed:
                return _error(405, "method-not-allowed", f"use {' or '.join(allowed)}")
        if path in simple:
            return simple[path]()
        if match is None:
            return _error(404, "no-such-route", f"no route {path}")
        register, client_id = match.groups()
        if method == "GET":
            return self._lookup(register, client_id)
        return self._store(register, client_id, body)

    def _health(self) -> _Answer:
        return _Answer(200, b'{"status": "ok"}')

    def _certificate(self) -> _Answer:
        return _Answer(200, self.certificate_pem, "application/x-pem-file")

    def _lookup(self, register: str, client_id: str) -> _Answer:
        with self._lock:
            held = self._receipts.get((register, client_id))
        if held is None:
            return _error(404, "receipt-not-found", f"no receipt {client_id} in {register}")
        return held.answer

    def _store(self, register: str, client_id: str, body: bytes) -> _Answer:
        try:
            signing_input = json.loads(body)["signing_input"]
            data = signing_input.encode("ascii")
        except (ValueError, KeyError, TypeError, AttributeError):
            return _error(400, "bad-body", 'the body must be {"signing_input": "<ASCII>"}')
        with self._lock:
            held = self._receipts.get((register, client_id))
            if held is not None:
                if held.signing_input == signing_input:
                    return held.answer
                return _error(409, "client-id-conflict", f"{client_id} holds another input")
            sequence = self._sequences.get(register, 0) + 1
            signature = self._signer.sign(data, deadline=time.monotonic() + 1.0)
            answer = _Answer(200, _receipt_body(client_id, signature, sequence))
            self._receipts[register, client_id] = _Receipt(signing_input, answer)
            self._sequences[register] = sequence
        return answer


def _receipt_body(client_id: str, signature: bytes, sequence: int) -> bytes:
    encoded = base64.urlsafe_b64encode(signature).decode("ascii").rstrip("=")
    return json.dumps({"client_id": client_id, "signature": encoded, "sequence": sequence}).encode()


def _load_or_create_signer(key_dir: Path | None) -> SoftwareUnit:
    if key_dir is None:
        with tempfile.TemporaryDirectory(prefix=f"{_NAME}-") as tmp:
            return _load_or_create_signer(Path(tmp))
    key_file, cert_file = key_dir / f"{_NAME}.key.pem", key_dir / f"{_NAME}.cert.pem"
    if not key_file.exists():
        create_software_unit(key_dir, name=_NAME)
    return SoftwareUnit.from_files(_NAME, key_file, zda="AT1", certificate_file=cert_file)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the fake until Ctrl-C or SIGTERM; stdin lines switch the mode."""
    parser = argparse.ArgumentParser(
        prog="python -m agent.fakes.chain_service",
        description="A fake chain service on 127.0.0.1 for demos (NOT a signature unit).",
    )
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--token", required=True, help="the bearer token clients must send")
    parser.add_argument("--key-dir", type=Path, help="keep the key here across restarts")
    parser.add_argument("--delay", type=float, default=5.0, help="seconds a slow answer takes")
    parser.add_argument("--hold", type=float, default=10.0, help="seconds a lost answer holds")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    fake = ChainServiceFake(
        args.token, port=args.port, key_dir=args.key_dir, delay=args.delay, hold=args.hold
    )
    with fake, contextlib.suppress(KeyboardInterrupt):
        print(fake.url, flush=True)
        for line in sys.stdin:
            word = line.strip()
            if word in MODES:
                fake.mode = cast("Mode", word)
                print(f"mode {word}", flush=True)
            elif word:
                print(f"modes: {', '.join(MODES)}", flush=True)
        signal.pause()
    return 0


if __name__ == "__main__":
    sys.exit(main())
