"""The ``pkcs11`` unit: an ECDSA P-256 key on a PKCS#11 token (HSM, smart card, SoftHSM2).

PKCS#11 hazards this module absorbs, so that nothing above it has to know them:

* Login state belongs to the token and the process, not to a session: a second
  ``C_Login`` fails with ``USER_ALREADY_LOGGED_IN`` and any ``C_Logout`` logs out every
  session. Units (and :func:`create_pkcs11_key`) on the same token therefore share one
  logged-in session, closed when its last user closes.
* Sessions are not thread-safe: every call holds the shared session's lock.
* Tokens differ in mechanisms: the signing mechanism is chosen once, at open, from the
  token's list; hashing on the host with ``CKM_ECDSA`` is preferred (SoftHSM2 2.6 rejects
  ``CKM_ECDSA_SHA256``).
* A token may hang: every call runs through :func:`call_with_deadline`, and waiting for
  the lock ends at the same deadline.
* python-pkcs11 errors carry no message: they are translated here, once, into
  :class:`ConfigurationError` (open) or :class:`UnitUnavailable` (sign, probe).
* A session can die under us (card pulled and put back, reader or HSM restart, a session
  timeout): the call that meets it fails as unavailable, the session is dropped (no other
  unit or open is handed it again), and the next call of each unit on that token opens a
  new session and logs in again, so the probe finds the token once it is back.
* A key can go under a live session (deleted and put back, the token re-initialised):
  its handle then fails (``CKR_OBJECT_HANDLE_INVALID``). The key is looked up again by its
  label and used only if it is this unit's key (its public key and a test signature), so
  the probe, which uses the same handle as ``sign``, passes only when ``sign`` would work.
* A PIN the token refuses is never tried again by this process (:class:`PinRejected`):
  a card or HSM locks its PIN after a few wrong tries.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import threading
import time
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

import pkcs11
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from pkcs11 import Attribute, KeyType, Mechanism, MechanismFlag, ObjectClass, TokenFlag
from pkcs11 import exceptions as p11
from pkcs11.util.ec import encode_ec_public_key, encode_named_curve_parameters

from agent.errors import ConfigurationError, PinRejected, UnitUnavailable
from agent.signing.base import (
    Capabilities,
    Identity,
    call_with_deadline,
    der_to_rs,
    identity_from_certificate,
    verify_rs,
)
from agent.signing.config import UnitConfig
from agent.signing.software import load_certificate

__all__ = ["Pkcs11Unit", "create_pkcs11_key", "token_public_key"]

T = TypeVar("T")
_log = logging.getLogger(__name__)

_P256_PARAMS = encode_named_curve_parameters("secp256r1")
_OPEN_TIMEOUT = 10.0  # seconds for the calls made while opening or closing a unit
_KEY_CHECK = b"till-agent pkcs11 key check"  # signed once at open; never a receipt
_SPKI = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)

_PHRASES: dict[type[p11.PKCS11Error], str] = {
    p11.PinIncorrect: "the token rejected the PIN",
    p11.PinInvalid: "the PIN has invalid characters",
    p11.PinLenRange: "the PIN has the wrong length",
    p11.PinLocked: "the PIN is locked",
    p11.PinExpired: "the PIN has expired",
    p11.NoSuchToken: "no token with this label",
    p11.MultipleTokensReturned: "several tokens have this label",
    p11.NoSuchKey: "no key with this label",
    p11.MultipleObjectsReturned: "several keys have this label",
    p11.UserNotLoggedIn: "the session is no longer logged in",
    p11.DeviceRemoved: "the token was removed",
    p11.TokenNotPresent: "the token is not present",
    p11.SessionHandleInvalid: "the session is no longer valid",
    p11.SessionClosed: "the session was closed",
    p11.ObjectHandleInvalid: "the key's handle is no longer valid",
    p11.KeyHandleInvalid: "the key's handle is no longer valid",
    p11.GeneralError: "the PKCS#11 module reports a general error",
}
# the session (or its login) is gone: only a new session, logged in again, can go on
_SESSION_LOST: tuple[type[p11.PKCS11Error], ...] = (
    p11.SessionHandleInvalid,
    p11.SessionClosed,
    p11.DeviceRemoved,
    p11.TokenNotPresent,
    p11.TokenNotRecognised,
    p11.UserNotLoggedIn,
)
# the key object went (deleted, the token re-initialised): look it up again by its label
_KEY_LOST: tuple[type[p11.PKCS11Error], ...] = (p11.ObjectHandleInvalid, p11.KeyHandleInvalid)
# the token refused the PIN itself: trying it again only counts down its wrong tries
_PIN_REFUSED: tuple[type[p11.PKCS11Error], ...] = (
    p11.PinIncorrect,
    p11.PinLocked,
    p11.PinInvalid,
    p11.PinExpired,
    p11.PinLenRange,
)


class _SigningKey(Protocol):
    def sign(self, data: bytes, *, mechanism: Mechanism) -> bytes: ...


def _describe(exc: p11.PKCS11Error) -> str:
    phrase = next((text for cls, text in _PHRASES.items() if isinstance(exc, cls)), None)
    detail = str(exc) or type(exc).__name__
    return f"{phrase} ({type(exc).__name__})" if phrase else detail


@contextmanager
def _config_errors(what: str) -> Iterator[None]:
    """Translate python-pkcs11 errors raised while opening into ``ConfigurationError``."""
    try:
        yield
    except p11.PKCS11Error as exc:
        raise ConfigurationError(f"{what}: {_describe(exc)}") from exc


@contextmanager
def _locked(lock: threading.Lock, deadline: float, what: str) -> Iterator[None]:
    """Hold ``lock``, but give up at ``deadline``: a hung call may be holding it."""
    if not lock.acquire(timeout=max(0.0, deadline - time.monotonic())):
        raise UnitUnavailable(f"{what}: the token is busy past the deadline")
    try:
        yield
    finally:
        lock.release()


@dataclass(frozen=True, slots=True)
class _Signer:
    """How this token makes an ES256 signature (a strategy chosen at open)."""

    mechanism: Mechanism
    prehash: bool

    def sign(self, key: _SigningKey, data: bytes) -> bytes:
        message = hashlib.sha256(data).digest() if self.prehash else data
        raw = key.sign(message, mechanism=self.mechanism)
        # CKM_ECDSA answers R||S; a few tokens answer with a DER ECDSA-Sig-Value instead
        return raw if len(raw) == 64 else der_to_rs(raw)


def _choose_signer(mechanisms: Collection[Mechanism | int], what: str) -> _Signer:
    """Prefer host hashing plus ``CKM_ECDSA``, else ``CKM_ECDSA_SHA256``."""
    if Mechanism.ECDSA in mechanisms:
        return _Signer(Mechanism.ECDSA, prehash=True)
    if Mechanism.ECDSA_SHA256 in mechanisms:
        return _Signer(Mechanism.ECDSA_SHA256, prehash=False)
    raise ConfigurationError(f"{what}: the token offers neither CKM_ECDSA nor CKM_ECDSA_SHA256")


@dataclass(eq=False)
class _SharedSession:
    """The one logged-in session this process holds on one token."""

    key: tuple[str, str]
    session: Any  # pkcs11.Session
    pin: str
    lock: threading.Lock = field(default_factory=threading.Lock)
    users: int = 1
    lost: bool = False  # the session died; it is closed and no longer handed out


# Mirrors state the PKCS#11 library itself keeps per process (the login), so it is global.
_sessions: dict[tuple[str, str], _SharedSession] = {}
_sessions_lock = threading.Lock()
# What a token answered to a PIN it refused, by (module, token label, SHA-256 of the PIN):
# the configured PIN changes only with a restart, so this process never tries it again.
_refused: dict[tuple[str, str, bytes], p11.PKCS11Error] = {}
_login_locks: dict[str, threading.Lock] = {}  # per module: one login at a time


def _load_module(module: Path, what: str) -> Any:
    if not module.is_file():
        raise ConfigurationError(
            f"{what}: PKCS#11 module {module} not found (SoftHSM2: apt-get install softhsm2)"
        )
    try:
        return pkcs11.lib(str(module))
    except p11.PKCS11Error as exc:
        raise ConfigurationError(
            f"{what}: cannot load PKCS#11 module {module}: {_describe(exc)} as it started;"
            " is the token (or its reader) attached, is the module the token's PKCS#11"
            " library, and for SoftHSM2, does SOFTHSM2_CONF name a configuration whose"
            " directories.tokendir exists?"
        ) from exc


def _login(module: Path, token_label: str, pin: str, what: str) -> Any:
    """Open a session on the token and log in with ``pin``.

    Raises:
        PinRejected: the token refused ``pin``, now or earlier in this process (then it is
            not sent again).
        ConfigurationError: the module or the token cannot be used.
    """
    _check_not_refused(module, token_label, pin, what)
    lib = _load_module(module, what)
    with _config_errors(f"{what}: token {token_label!r}"):
        token = lib.get_token(token_label=token_label)
        rw = not token.flags & TokenFlag.WRITE_PROTECTED  # key generation needs R/W
        try:
            return token.open(rw=rw, user_pin=pin)
        except _PIN_REFUSED as exc:
            _refused[_refused_key(module, token_label, pin)] = exc
            raise _pin_rejected(what, token_label, exc) from exc


def _refused_key(module: Path, token_label: str, pin: str) -> tuple[str, str, bytes]:
    return (str(module), token_label, hashlib.sha256(pin.encode()).digest())


def _check_not_refused(module: Path, token_label: str, pin: str, what: str) -> None:
    """Raise ``PinRejected`` when the token refused ``pin`` earlier in this process."""
    if (refused := _refused.get(_refused_key(module, token_label, pin))) is not None:
        raise _pin_rejected(what, token_label, refused) from refused


def _pin_rejected(what: str, token_label: str, exc: p11.PKCS11Error) -> PinRejected:
    return PinRejected(
        f"{what}: token {token_label!r}: {_describe(exc)}; PIN rejected: fix the unit's `pin`"
        " and restart the service (until then it is not tried again: a token locks its PIN"
        " after a few wrong tries)"
    )


def _acquire_session(module: Path, token_label: str, pin: str, what: str) -> _SharedSession:
    """Log in to the token, or join the session this process is already logged in with.

    One login per module at a time (a second ``C_Login`` to a token would fail, and
    python-pkcs11 loads a module once only if asked one at a time), but never under
    ``_sessions_lock``: a login that hangs holds up only the next login through its module
    (for at most ``_OPEN_TIMEOUT``), not the units of other modules nor a unit leaving its
    session.
    """
    # one library object per file: a second C_Initialize of the same .so would fail
    key = (str(module.resolve()), token_label)
    # known before any wait: a login hung on another token of the module must not turn
    # a refused PIN into "has not answered" (nor hold its unit up for the timeout)
    _check_not_refused(Path(key[0]), token_label, pin, what)
    with _sessions_lock:
        login_lock = _login_locks.setdefault(key[0], threading.Lock())
    if not login_lock.acquire(timeout=_OPEN_TIMEOUT):
        raise ConfigurationError(
            f"{what}: token {token_label!r}: an earlier login through {module} has not"
            f" answered for {_OPEN_TIMEOUT:.0f} s"
        )
    try:
        with _sessions_lock:
            shared = _sessions.get(key)
            if shared is not None:
                if not hmac.compare_digest(shared.pin.encode(), pin.encode()):
                    raise ConfigurationError(
                        f"{what}: token {token_label!r} is already open in this process"
                        " with another PIN"
                    )
                shared.users += 1
                return shared
        shared = _SharedSession(key, _login(Path(key[0]), token_label, pin, what), pin)
        with _sessions_lock:
            _sessions[key] = shared
        return shared
    finally:
        login_lock.release()


def _release_session(shared: _SharedSession) -> None:
    with _sessions_lock:
        shared.users -= 1
        if shared.users > 0 or shared.lost:  # a lost session was closed when it was lost
            return
        del _sessions[shared.key]
    try:
        with _locked(shared.lock, time.monotonic() + _OPEN_TIMEOUT, "close"):
            shared.session.close()  # also logs out
    except (UnitUnavailable, p11.PKCS11Error) as exc:
        _log.warning("closing the session on token %r failed: %s", shared.key[1], exc)


def _drop_lost_session(shared: _SharedSession, exc: p11.PKCS11Error) -> None:
    """Stop handing out ``shared``, whose session died, and close it; its units reconnect.

    Call with ``shared.lock`` held. It is closed now, before any new login, because a
    logout (part of the close) ends the login of every session of the process on the token.
    """
    with _sessions_lock:
        if shared.lost:
            return
        shared.lost = True
        if _sessions.get(shared.key) is shared:
            del _sessions[shared.key]
    _log.warning("token %r: %s; the next call opens a new session", shared.key[1], _describe(exc))
    try:
        shared.session.close()
    except p11.PKCS11Error as close_exc:  # mostly gone already: nothing left to close
        _log.debug("closing the lost session failed: %s", _describe(close_exc))


def _find_private_key(session: Any, label: str) -> Any:
    return session.get_key(object_class=ObjectClass.PRIVATE_KEY, label=label)


def _find_keys(session: Any, label: str, what: str) -> tuple[Any, bytes | None]:
    """The private key and, if the token holds one, the public key as DER SPKI."""
    with _config_errors(f"{what}: key {label!r}"):
        private = _find_private_key(session, label)
        if private.key_type != KeyType.EC or private[Attribute.EC_PARAMS] != _P256_PARAMS:
            raise ConfigurationError(f"{what}: key {label!r} is not an ECDSA P-256 key")
        try:
            public = session.get_key(object_class=ObjectClass.PUBLIC_KEY, label=label)
        except p11.NoSuchKey:
            return private, None
        return private, _normalised(encode_ec_public_key(public))


def _normalised(spki: bytes) -> bytes:
    return serialization.load_der_public_key(spki).public_bytes(*_SPKI)


def _identity(
    config: UnitConfig, token_public: bytes | None, cert: x509.Certificate | None
) -> Identity:
    what = f"unit {config.id}"
    if cert is None:
        if token_public is None:
            raise ConfigurationError(f"{what}: the token has no public key {config.key_label!r}")
        assert config.key_id is not None  # UnitConfig: AT0 has a key id
        return Identity(config.id, config.zda, config.key_id, token_public)
    return identity_from_certificate(config.id, config.zda, cert, token_public)


def _required(config: UnitConfig) -> tuple[Path, str, str, str]:
    if config.pin is None:
        raise ConfigurationError(f"unit {config.id}: a pkcs11 unit needs pin")
    # the rest is checked by UnitConfig
    assert config.module is not None
    assert config.token_label is not None
    assert config.key_label is not None
    return config.module, config.token_label, config.key_label, config.pin


class Pkcs11Unit:
    """Signs with a private key that never leaves a PKCS#11 token."""

    __slots__ = (
        "_closed",
        "_identity",
        "_key",
        "_key_label",
        "_problem",
        "_renew_lock",
        "_shared",
        "_signer",
    )

    def __init__(
        self, shared: _SharedSession, key: Any, key_label: str, signer: _Signer, identity: Identity
    ) -> None:
        self._shared = shared
        self._key = key
        self._key_label = key_label
        self._signer = signer
        self._identity = identity
        self._closed = False
        self._renew_lock = threading.Lock()  # one new session or key lookup at a time
        self._problem: str | None = None  # why the last probe failed (logged once)

    @classmethod
    def from_config(cls, config: UnitConfig) -> Pkcs11Unit:
        """Log in to the token, find the key and check it by signing a fixed test string.

        Raises:
            ConfigurationError: module, token, PIN, key or certificate is unusable.
        """
        what = f"unit {config.id}"
        module, token_label, key_label, pin = _required(config)
        cert = None
        if config.zda != "AT0" and config.certificate_file is not None:
            cert = load_certificate(config.certificate_file)
        for retry in (False, True):  # once more if the session this process held had died
            shared = _acquire_session(module, token_label, pin, what)
            try:
                unit = cls._open(config, shared, key_label, cert)
                unit._check_key()
            except BaseException:
                _release_session(shared)
                if retry or not shared.lost:
                    raise
            else:
                return unit
        raise AssertionError("unreachable")  # pragma: no cover

    @classmethod
    def _open(
        cls,
        config: UnitConfig,
        shared: _SharedSession,
        key_label: str,
        cert: x509.Certificate | None,
    ) -> Pkcs11Unit:
        what = f"unit {config.id}"
        try:
            with _locked(shared.lock, time.monotonic() + _OPEN_TIMEOUT, what):
                with _config_errors(f"{what}: token {config.token_label!r}"):
                    mechanisms = shared.session.token.slot.get_mechanisms()
                signer = _choose_signer(mechanisms, what)
                key, token_public = _find_keys(shared.session, key_label, what)
        except UnitUnavailable as exc:
            raise ConfigurationError(str(exc)) from exc
        except ConfigurationError as exc:
            if isinstance(exc.__cause__, _SESSION_LOST):
                with _locked(shared.lock, time.monotonic() + _OPEN_TIMEOUT, what):
                    _drop_lost_session(shared, exc.__cause__)
            raise
        return cls(shared, key, key_label, signer, _identity(config, token_public, cert))

    @property
    def identity(self) -> Identity:
        return self._identity

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities()

    def sign(self, data: bytes, *, deadline: float) -> bytes:
        """Sign ``data`` on the token; see :meth:`SignatureUnit.sign`."""
        return self._call(lambda _, key: self._signer.sign(key, data), deadline, "sign")

    def probe(self, *, deadline: float) -> None:
        """Ask the token about the key handle ``sign`` uses, and whether its label still
        names it: fails when the token is gone or logged out, or the key is not there.

        After a lost session it logs in again first, and after a lost key it looks the key
        up again (taking only this unit's key), so it passes once ``sign`` would work. Its
        reason is logged when it differs from the last probe's, not at every probe: the
        outage's journal has every probe, the log says what changed.
        """
        try:
            held = self._call(self._holds_key, deadline, "probe")
            # the label names another object: the second call looks it up (and checks it)
            if not held and not self._call(self._holds_key, deadline, "probe"):
                raise UnitUnavailable(
                    f"unit {self._identity.unit_id} probe: key {self._key_label!r} changed"
                    " while it was looked up"
                )
        except UnitUnavailable as exc:
            self._note_problem(exc)
            raise
        self._note_problem(None)

    def close(self) -> None:
        """Leave the shared session; the last unit on the token closes it (idempotent)."""
        if self._closed:
            return
        # not while a new login is under way (it would be left open); a hung one is not waited for
        renewing = self._renew_lock.acquire(timeout=_OPEN_TIMEOUT)
        try:
            if not self._closed:
                self._closed = True
                _release_session(self._shared)
        finally:
            if renewing:
                self._renew_lock.release()

    def _check_key(self) -> None:
        """Sign a fixed string and verify it, so a mismatched key fails at start-up."""
        what = f"unit {self._identity.unit_id}"
        try:
            signature = self.sign(_KEY_CHECK, deadline=time.monotonic() + _OPEN_TIMEOUT)
        except UnitUnavailable as exc:
            raise ConfigurationError(f"{what}: test signature failed: {exc}") from exc
        if not verify_rs(self._identity.public_key(), _KEY_CHECK, signature):
            raise ConfigurationError(f"{what}: the token key does not match the public key")

    def _holds_key(self, session: Any, key: Any) -> bool:
        """Whether ``key``, the handle ``sign`` uses, is still a signing key on the token
        and the one its label names; one the label no longer names is forgotten, so the
        next call looks the key up again."""
        if not key[Attribute.SIGN]:  # C_GetAttributeValue: fails once the object is gone
            raise UnitUnavailable(
                f"unit {self._identity.unit_id} probe: key {self._key_label!r} cannot sign"
            )
        if _find_private_key(session, self._key_label).handle == key.handle:
            return True
        self._forget(key)
        return False

    def _note_problem(self, exc: UnitUnavailable | None) -> None:
        """Log why the probe failed when the reason is new, and the first probe that passes
        after failures (a rejected PIN at ERROR: nothing but the operator can fix it)."""
        reason = None if exc is None else str(exc)
        if reason == self._problem:
            return
        self._problem = reason
        if exc is None:
            _log.info("unit %s answers its probe again", self._identity.unit_id)
            return
        rejected = isinstance(exc.__cause__, PinRejected)
        _log.log(
            logging.ERROR if rejected else logging.WARNING,
            "%s%s",
            reason,
            "" if rejected else " (the probe goes on; logged again when it changes)",
        )

    def _call(self, fn: Callable[[Any, Any], T], deadline: float, operation: str) -> T:
        """Run ``fn(session, key)`` under the session's lock, by ``deadline``; once more
        if the key's object went and the key was found again under its label."""
        what = f"unit {self._identity.unit_id} {operation}"
        if self._closed:
            raise UnitUnavailable(f"{what}: the unit is closed")

        def locked() -> T:
            for again in (False, True):
                shared, key = self._current(deadline, what)
                with _locked(shared.lock, deadline, what):
                    if shared.lost:  # another unit met the loss while we waited
                        raise UnitUnavailable(f"{what}: the session was lost; try again")
                    try:
                        return fn(shared.session, key)
                    except p11.PKCS11Error as exc:
                        if isinstance(exc, _SESSION_LOST):
                            _drop_lost_session(shared, exc)
                        elif isinstance(exc, _KEY_LOST):
                            self._forget(key, exc)
                            if not again:
                                continue
                        note = _unseen(shared, exc)
                        raise UnitUnavailable(f"{what}: {_describe(exc)}{note}") from exc
            raise AssertionError("unreachable")  # pragma: no cover

        return call_with_deadline(locked, deadline, what)

    def _forget(self, key: Any, exc: p11.PKCS11Error | None = None) -> None:
        """Stop using ``key`` (its object went, or the label names another): the next call
        looks the key up again. Not under the renew lock, which is taken before the
        session's: at worst a key just found is looked up once more."""
        if self._key is not key:
            return
        self._key = None
        _log.warning(
            "unit %s: key %r %s; it is looked up again by its label (and used only if it"
            " is this unit's key)",
            self._identity.unit_id,
            self._key_label,
            "is no longer where it was" if exc is None else f"failed: {_describe(exc)}",
        )

    def _current(self, deadline: float, what: str) -> tuple[_SharedSession, Any]:
        """The session and key to use: after a lost session a new login and key lookup,
        after a lost key a new lookup, each checked to be this unit's key."""
        with _locked(self._renew_lock, deadline, what):
            if self._closed:
                raise UnitUnavailable(f"{what}: the unit is closed")
            # read once: if another call forgets it meanwhile, this call fails with it
            old, key = self._shared, self._key
            if old.lost:
                self._shared, key = self._renewed(old, deadline, what)
                self._key = key
                _release_session(old)
            elif key is None:
                key = self._checked_key(old, deadline, what)
                self._key = key
            return self._shared, key

    def _renewed(
        self, old: _SharedSession, deadline: float, what: str
    ) -> tuple[_SharedSession, Any]:
        """Log in to the token again (or join a new login) and find the key there.

        Raises:
            UnitUnavailable: the token is not back, refuses the PIN, or holds another key
                under the label.
        """
        module, token_label = old.key
        try:
            shared = _acquire_session(Path(module), token_label, old.pin, "cannot log in again")
        except ConfigurationError as exc:
            raise UnitUnavailable(f"{what}: {exc}") from exc
        try:
            key = self._checked_key(shared, deadline, what)
        except BaseException:
            _release_session(shared)
            raise
        _log.info("%s: logged in to token %r again", what, token_label)
        return shared, key

    def _checked_key(self, shared: _SharedSession, deadline: float, what: str) -> Any:
        """Find the key by its label on ``shared``'s session, if it is this unit's key: the
        token's public key under the label and a test signature must be its own.

        Raises:
            UnitUnavailable: no such key, or another key (a key that is not this unit's
                never signs for it: the unit stays failed until its own key is back).
        """
        label = self._key_label
        with _locked(shared.lock, deadline, what):
            try:
                key, public = _find_keys(shared.session, label, "looking the key up again")
                signature = self._signer.sign(key, _KEY_CHECK)
            except (ConfigurationError, p11.PKCS11Error) as exc:
                cause = exc if isinstance(exc, p11.PKCS11Error) else exc.__cause__
                if isinstance(cause, _SESSION_LOST):
                    _drop_lost_session(shared, cause)
                detail = str(exc) if isinstance(exc, ConfigurationError) else _describe(exc)
                raise UnitUnavailable(f"{what}: {detail}{_unseen(shared, cause)}") from exc
        own = self._identity
        if public not in (None, _normalised(own.public_key_der)) or not verify_rs(
            own.public_key(), _KEY_CHECK, signature
        ):
            raise UnitUnavailable(
                f"{what}: token {shared.key[1]!r} holds another key {label!r} than this"
                " unit's (not the public key its receipts carry): it stays failed until its"
                " own key is back on the token (a new key is a new unit: add it under an id"
                " of its own and register it in FinanzOnline)"
            )
        return key


def _unseen(shared: _SharedSession, exc: BaseException | None) -> str:
    """For a key or token that cannot be found: whether the module still lists the token.

    A module that fails to list its tokens after one went away (SoftHSM2 once its token
    directory was moved away and back) may not see it again before the process restarts.
    """
    if not isinstance(exc, (p11.NoSuchKey, p11.GeneralError, *_KEY_LOST)):
        return ""
    module, label = shared.key
    try:
        pkcs11.lib(module).get_token(token_label=label)
    except p11.NoSuchToken:
        return f"; the PKCS#11 module lists no token {label!r} now"
    except p11.MultipleTokensReturned:
        return ""
    except p11.PKCS11Error as exc2:
        return (
            f"; the PKCS#11 module cannot list its tokens ({type(exc2).__name__}): once token"
            f" {label!r} is back, restart the service if the unit stays failed (a module may"
            " not see a token again that went away while the service ran)"
        )
    return ""


def create_pkcs11_key(module: Path | str, token_label: str, pin: str, key_label: str) -> bytes:
    """Generate an ECDSA P-256 key pair, stored on the token, and return its DER SPKI.

    The private key is sensitive and not extractable; it can only sign.

    Raises:
        ConfigurationError: the token cannot be opened, or ``key_label`` is already taken.
    """
    what = f"token {token_label!r}"
    shared = _acquire_session(Path(module), token_label, pin, what)
    try:
        with _locked(shared.lock, time.monotonic() + _OPEN_TIMEOUT, what), _config_errors(what):
            session = shared.session
            if list(session.get_objects({Attribute.LABEL: key_label})):
                raise ConfigurationError(f"{what}: an object labelled {key_label!r} exists")
            params = session.create_domain_parameters(
                KeyType.EC, {Attribute.EC_PARAMS: _P256_PARAMS}, local=True
            )
            public, _ = params.generate_keypair(
                store=True,
                label=key_label,
                capabilities=MechanismFlag.SIGN | MechanismFlag.VERIFY,
                private_template={Attribute.EXTRACTABLE: False},
            )
            der = _normalised(encode_ec_public_key(public))
    except UnitUnavailable as exc:
        raise ConfigurationError(str(exc)) from exc
    finally:
        _release_session(shared)
    return der


def token_public_key(module: Path, token_label: str, key_label: str) -> bytes | None:
    """The public key the token shows under ``key_label`` without a login, as DER SPKI:
    its public-key object, else the private key's ``CKA_EC_POINT`` if the token shows that
    object to a session that is not logged in; None when it shows neither.

    It never logs in (a wrong PIN counts towards locking the token): it opens a read-only
    public session and closes it.

    Raises:
        ConfigurationError: the module or the token cannot be used, or the key under
            ``key_label`` is not an ECDSA P-256 key.
    """
    what = f"token {token_label!r}"
    lib = _load_module(module, what)
    with _config_errors(what):
        session = lib.get_token(token_label=token_label).open()
        try:
            return _public_without_login(session, key_label, what)
        finally:
            session.close()


def _public_without_login(session: Any, label: str, what: str) -> bytes | None:
    for object_class in (ObjectClass.PUBLIC_KEY, ObjectClass.PRIVATE_KEY):
        try:
            key = session.get_key(object_class=object_class, label=label)
        except p11.NoSuchKey:
            continue
        if key.key_type != KeyType.EC or key[Attribute.EC_PARAMS] != _P256_PARAMS:
            raise ConfigurationError(f"{what}: key {label!r} is not an ECDSA P-256 key")
        try:
            return _normalised(encode_ec_public_key(key))
        except (p11.AttributeTypeInvalid, p11.AttributeSensitive):
            return None  # a private key that does not show its public point
    return None
