"""The signature-unit protocol and the checks every signature passes before it is used.

A unit signs the JWS signing input of a receipt and returns the 64-byte R||S value. Every
call has a deadline (an absolute ``time.monotonic()`` instant); a unit that misses it is
treated as unavailable. :func:`sign_verified` is the only way the receipt service asks
for a signature: it enforces the deadline and verifies the result against the unit's
public key, so an invalid signature can never reach the journal.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import logging
import os
import queue
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeAlias, TypeVar, runtime_checkable

from cryptography import x509
from cryptography.exceptions import InvalidSignature as _CryptoInvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

from agent.errors import ConfigurationError, InvalidSignature, OutcomeUnknown, UnitUnavailable

__all__ = [
    "Capabilities",
    "Identity",
    "SignatureUnit",
    "call_with_deadline",
    "der_to_rs",
    "exit_past_hung_calls",
    "identity_from_certificate",
    "in_daemon_thread",
    "rs_to_der",
    "sign_verified",
    "verify_rs",
]

T = TypeVar("T")
_log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What a unit can do, so the receipt service picks the right failure handling.

    Attributes:
        keeps_chain: the unit is a remote chain service with its own receipt chain; a
            timeout after sending leaves the outcome unknown (the receipt is ``unsigned``).
        remote: the unit is reached over a network.
    """

    keeps_chain: bool = False
    remote: bool = False


@dataclass(frozen=True, slots=True)
class Identity:
    """Who signs: the ids printed in every receipt and the key to check signatures with.

    Attributes:
        unit_id: the agent's own name for the unit.
        zda: provider id of the suite, ``AT1``.. for open systems, ``AT0`` for closed ones.
        serial: field 11 of the payload: hex certificate serial, or ``Ordnungsbegriff-KeyID``.
        public_key_der: DER SubjectPublicKeyInfo of the signing key.
        certificate_der: DER certificate (open systems), else ``None``.
    """

    unit_id: str
    zda: str
    serial: str
    public_key_der: bytes
    certificate_der: bytes | None = None

    @property
    def suite(self) -> str:
        return f"R1-{self.zda}"

    @property
    def closed(self) -> bool:
        return self.zda == "AT0"

    def public_key(self) -> ec.EllipticCurvePublicKey:
        return _load_public_key(self.public_key_der)


@functools.lru_cache(maxsize=64)
def _load_public_key(der: bytes) -> ec.EllipticCurvePublicKey:
    key = serialization.load_der_public_key(der)
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise TypeError("the unit's public key is not an EC key")
    return key


@runtime_checkable
class SignatureUnit(Protocol):
    """A signature creation unit (Signaturerstellungseinheit)."""

    @property
    def identity(self) -> Identity: ...

    @property
    def capabilities(self) -> Capabilities: ...

    def sign(self, data: bytes, *, deadline: float) -> bytes:
        """Sign ``data`` (the JWS signing input) with ES256 and return R||S (64 bytes).

        Raises:
            UnitUnavailable: the unit failed or the deadline passed.
        """
        ...

    def probe(self, *, deadline: float) -> None:
        """Check that the unit answers; never signs a receipt.

        Raises:
            UnitUnavailable: the unit does not answer in time.
        """
        ...

    def close(self) -> None: ...


_SPKI = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def identity_from_certificate(
    unit_id: str, zda: str, certificate: x509.Certificate, key_public_der: bytes | None
) -> Identity:
    """The identity of an open-system unit: hex serial of its certificate.

    Raises:
        ConfigurationError: the certificate is for another key than ``key_public_der``.
    """
    cert_public = certificate.public_key().public_bytes(*_SPKI)
    if key_public_der is not None and key_public_der != cert_public:
        raise ConfigurationError(f"unit {unit_id}: the certificate does not match the key")
    der = certificate.public_bytes(serialization.Encoding.DER)
    return Identity(unit_id, zda, format(certificate.serial_number, "x"), cert_public, der)


def der_to_rs(der: bytes) -> bytes:
    """Convert a DER ECDSA-Sig-Value into the 64-byte JWS form R||S."""
    r, s = decode_dss_signature(der)
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def rs_to_der(rs: bytes) -> bytes:
    """Convert a 64-byte R||S value into DER; raises ``ValueError`` for other lengths."""
    if len(rs) != 64:
        raise ValueError(f"an ES256 signature has 64 bytes, got {len(rs)}")
    return encode_dss_signature(int.from_bytes(rs[:32], "big"), int.from_bytes(rs[32:], "big"))


_ES256 = ec.ECDSA(hashes.SHA256())


def verify_rs(public_key: ec.EllipticCurvePublicKey, data: bytes, rs: bytes) -> bool:
    """True when ``rs`` is a valid ES256 signature of ``data``."""
    try:
        public_key.verify(rs_to_der(rs), data, _ES256)
    except (_CryptoInvalidSignature, ValueError):
        return False
    return True


_Task: TypeAlias = tuple[Callable[[], Any], concurrent.futures.Future[Any]]


class _DaemonWorkers:
    """The threads unit calls run on: daemon threads, reused when idle.

    A call may hang in a token or a driver, and a C call cannot be cancelled: its caller
    gives up at the deadline and the thread is abandoned, its result ignored. Being a
    daemon thread, it never keeps the process from exiting once the service's shutdown is
    done (the threads of a ``ThreadPoolExecutor`` are joined at exit, so one hung
    ``C_Sign`` would hold up every stop until systemd's SIGKILL). A new thread starts
    when none is idle, so a hung call holds up only its own.
    """

    def __init__(self, name: str) -> None:
        self._name = name
        self._reset()
        os.register_at_fork(after_in_child=self._reset)  # the child has none of the threads

    def _reset(self) -> None:
        self._lock = threading.Lock()
        self._tasks: queue.SimpleQueue[_Task] = queue.SimpleQueue()
        self._idle = 0  # threads waiting for a task that no submit has counted on yet
        self._started = 0

    def submit(self, fn: Callable[[], T]) -> concurrent.futures.Future[T]:
        """Run ``fn`` on an idle thread, or on a new one; its outcome in the future."""
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        with self._lock:
            if self._idle:
                self._idle -= 1
            else:
                self._started += 1
                name = f"{self._name}-{self._started}"
                threading.Thread(target=self._work, name=name, daemon=True).start()
            self._tasks.put((fn, future))
        return future

    def _work(self) -> None:
        while True:
            fn, future = self._tasks.get()
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(fn())
                except BaseException as exc:  # the caller's to handle, at result()
                    future.set_exception(exc)
            del fn, future  # an idle thread keeps nothing alive
            with self._lock:
                self._idle += 1

    def busy(self) -> int:
        """How many threads run a call now (hung ones too)."""
        with self._lock:
            return self._started - self._idle


_workers = _DaemonWorkers("unit-call")


def in_daemon_thread(fn: Callable[[], T]) -> concurrent.futures.Future[T]:
    """Run ``fn`` on a daemon thread (see :class:`_DaemonWorkers`): a call to a unit that
    may hang, which nobody waits for past a deadline and the process never waits for."""
    return _workers.submit(fn)


def exit_past_hung_calls(status: int) -> None:
    """End the process now with ``status`` if calls to a unit still run on their threads;
    else return, and the process exits as usual. Call it once the shutdown is done (the
    database closed, its lock released).

    Such a call hangs in a token's module or driver, which nothing can interrupt. The
    interpreter's own exit would unload the module (and run its destructors) under it:
    a crash (SIGSEGV, exit 139) in place of a clean stop, or a hang.
    """
    running = _workers.busy()
    if not running:
        return
    _log.warning(
        "%d call%s to a signature unit still hang%s: the process ends without waiting",
        running,
        "s" * (running > 1),
        "" if running > 1 else "s",
    )
    logging.shutdown()  # what the interpreter's exit would flush and close
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(status)


def call_with_deadline(fn: Callable[[], T], deadline: float, what: str) -> T:
    """Run ``fn`` in a worker thread and give up at ``deadline`` (monotonic seconds).

    A call that overruns keeps running in its (daemon) thread, but its result is
    discarded: this is only safe for stateless operations (local signing, probing).

    Raises:
        UnitUnavailable: the deadline passed, or ``fn`` raised.
    """
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise UnitUnavailable(f"{what}: deadline already passed")
    future = in_daemon_thread(fn)
    try:
        return future.result(timeout=remaining)
    except concurrent.futures.TimeoutError as exc:
        raise UnitUnavailable(f"{what}: no answer within the deadline") from exc
    except UnitUnavailable:
        raise
    except Exception as exc:
        raise UnitUnavailable(f"{what}: {exc}") from exc


def sign_verified(unit: SignatureUnit, data: bytes, *, timeout: float) -> bytes:
    """Ask ``unit`` for a signature within ``timeout`` seconds and verify it.

    Raises:
        UnitUnavailable: the unit failed or missed the deadline.
        InvalidSignature: the unit answered with a value that does not verify.
    """
    identity = unit.identity
    deadline = time.monotonic() + timeout
    try:
        signature = unit.sign(data, deadline=deadline)
    except (UnitUnavailable, OutcomeUnknown):
        raise
    except Exception as exc:
        raise UnitUnavailable(f"unit {identity.unit_id}: {exc}") from exc
    # a late answer of a local unit is dropped (nothing remembers it); a chain service
    # keeps what it signed, so its late but valid answer is the receipt's signature
    if time.monotonic() > deadline and not unit.capabilities.keeps_chain:
        raise UnitUnavailable(f"unit {identity.unit_id}: answered after the deadline")
    if not verify_rs(identity.public_key(), data, signature):
        raise InvalidSignature(f"unit {identity.unit_id} returned an invalid signature")
    return signature
