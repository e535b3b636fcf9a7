"""The ``chain`` unit: a remote chain service (fiskaly SIGN AT style) over HTTP(S).

The service signs each receipt and keeps its own record of every receipt it signed. A
receipt is PUT under a client id that is the SHA-256 (hex) of its signing input, so sending
the same receipt again is idempotent and :meth:`ChainServiceUnit.lookup` needs nothing but
the data. The register segment of the URL is the Kassen-ID in the signed payload. The HTTP
API is the one documented in :mod:`agent.fakes.chain_service`.

Failures are told apart by what the service may have done (``sign``):

* nothing reached it, or it refused the request (connect error or timeout, no free
  connection, HTTP 401/403/408/429 and 5xx other than 502/504): :class:`UnitUnavailable`;
* the request was (maybe) sent and no usable answer came (read or write timeout or error,
  the connection closed, a gateway's 502/504): :class:`OutcomeUnknown`; ask with
  :meth:`~ChainServiceUnit.lookup` later. A PUT whose connection broke is sent once more;
  once one may have reached the service, any failure of the next is this, too;
* it answered with a signature that does not verify against its certificate, or with an
  unreadable body: :class:`InvalidSignature`;
* it holds a different input under the client id (409) or rejects the request as bad
  (other 4xx): :class:`SigningError`.

A GET changes nothing on the service, so every failure of ``lookup`` and ``probe`` is
:class:`UnitUnavailable`. Every call ends by its deadline: each phase of an HTTP exchange
(waiting for a connection, connecting, writing, reading) is given the time then remaining.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx
from cryptography import x509
from pydantic import BaseModel, ConfigDict

from agent.at_rksv.encoding import b64url_decode
from agent.at_rksv.payload import Payload
from agent.errors import (
    ConfigurationError,
    InvalidSignature,
    OutcomeUnknown,
    SigningError,
    UnitUnavailable,
)
from agent.signing.base import Capabilities, Identity, identity_from_certificate, verify_rs
from agent.signing.config import UnitConfig
from agent.signing.software import load_certificate

__all__ = ["ChainServiceUnit"]

_log = logging.getLogger(__name__)

_OPEN_TIMEOUT = 10.0  # seconds to fetch the certificate while opening the unit
_KEEPALIVE = 5.0  # below common NAT and proxy idle timeouts
_MIN_RETRY = 0.05  # seconds that must remain to send a dropped PUT once more
_REGISTER = re.compile(r"[A-Za-z0-9.:-]{1,64}")

# httpx errors raised before any byte of the request left: the service did nothing
_NOT_SENT: tuple[type[httpx.RequestError], ...] = (
    httpx.ConnectError,
    httpx.ConnectTimeout,
    httpx.PoolTimeout,
    httpx.ProxyError,
    httpx.UnsupportedProtocol,
    httpx.LocalProtocolError,
)
# the request may have reached the service; anything not listed counts as this, too
_MAYBE_SENT: tuple[type[httpx.RequestError], ...] = (
    httpx.ReadTimeout,
    httpx.WriteTimeout,
    httpx.ReadError,
    httpx.WriteError,
    httpx.CloseError,
    httpx.RemoteProtocolError,
    httpx.DecodingError,
    httpx.TooManyRedirects,
)
# the connection broke rather than timed out (a stale keep-alive connection, a lost
# answer): with time left, an idempotent PUT is sent once more on a fresh connection
_DROPPED: tuple[type[httpx.RequestError], ...] = (
    httpx.ReadError,
    httpx.WriteError,
    httpx.RemoteProtocolError,
)


class _Receipt(BaseModel):
    """The service's answer for one receipt."""

    model_config = ConfigDict(frozen=True)

    client_id: str
    signature: str
    sequence: int


class _Remaining(Mapping[str, float]):
    """httpx timeouts read at the start of each phase: the time left until ``deadline``.

    httpcore looks each timeout up when the phase begins, so one deadline bounds the whole
    exchange instead of each phase getting the full budget.
    """

    _KEYS = ("connect", "read", "write", "pool")

    def __init__(self, deadline: float) -> None:
        self._deadline = deadline

    def __getitem__(self, key: str) -> float:
        if key not in self._KEYS:
            raise KeyError(key)
        return max(self._deadline - time.monotonic(), 0.001)

    def __iter__(self) -> Iterator[str]:
        return iter(self._KEYS)

    def __len__(self) -> int:
        return len(self._KEYS)


class ChainServiceUnit:
    """Signs through a remote chain service; one HTTP client (connection pool) per unit."""

    __slots__ = ("_client", "_identity")

    def __init__(self, identity: Identity, client: httpx.Client) -> None:
        self._identity = identity
        self._client = client

    @classmethod
    def connect(
        cls,
        unit_id: str,
        url: str,
        token: str,
        *,
        zda: str = "AT1",
        certificate: x509.Certificate | None = None,
        open_timeout: float = _OPEN_TIMEOUT,
    ) -> ChainServiceUnit:
        """Open a unit for the service at ``url``.

        Args:
            certificate: the service's certificate; when ``None`` it is fetched from the
                service, which must then answer. Given, the unit opens offline (signatures
                are still checked against it, so a wrong one shows on the first receipt).

        Raises:
            ConfigurationError: the certificate cannot be fetched or read.
        """
        client = _make_client(url, token)
        try:
            if certificate is None:
                certificate = _fetch_certificate(client, unit_id, open_timeout)
            identity = identity_from_certificate(unit_id, zda, certificate, None)
        except BaseException:
            client.close()
            raise
        return cls(identity, client)

    @classmethod
    def from_config(cls, config: UnitConfig) -> ChainServiceUnit:
        """Open the unit a ``chain`` :class:`UnitConfig` describes.

        Raises:
            ConfigurationError: the token or certificate file is unusable, or the
                certificate cannot be fetched.
        """
        # both are checked by UnitConfig for a chain unit
        assert config.url is not None
        assert config.token_file is not None
        certificate = None
        if config.certificate_file is not None:
            certificate = load_certificate(config.certificate_file)
        token = _read_token(config.token_file)
        return cls.connect(config.id, config.url, token, zda=config.zda, certificate=certificate)

    @property
    def identity(self) -> Identity:
        return self._identity

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(keeps_chain=True, remote=True)

    def sign(self, data: bytes, *, deadline: float) -> bytes:
        """Have the service sign ``data`` and keep it; return the verified R||S.

        Raises:
            UnitUnavailable: nothing was signed (the service is down, unreachable or
                refused the token), or the deadline passed before sending.
            OutcomeUnknown: the service may have signed; ask :meth:`lookup` later.
            InvalidSignature: the answer does not verify against the certificate.
            SigningError: the service holds another input under this client id, or
                rejected the request.
        """
        client_id = _client_id(data)
        path = _receipt_path(data, client_id)
        body = {"signing_input": data.decode("ascii")}
        what = self._what(client_id)
        try:
            response = _exchange(self._client, "PUT", path, deadline, what, body=body)
        except OutcomeUnknown as exc:
            if not isinstance(exc.__cause__, _DROPPED) or deadline - time.monotonic() < _MIN_RETRY:
                raise
            _log.info("%s: %s; sending it once more", what, exc.__cause__)
            response = _resend(self._client, path, deadline, what, body=body, first=exc)
        if response.status_code != 200:
            raise _put_failure(response, what)
        return self._verified(response, data, client_id, what)

    def lookup(self, data: bytes, *, deadline: float) -> bytes | None:
        """The signature the service holds for ``data``, or ``None`` if it has none.

        Raises:
            UnitUnavailable: the service cannot be asked (or gave no clear answer).
            InvalidSignature: what it holds does not verify for ``data``.
        """
        client_id = _client_id(data)
        what = self._what(client_id)
        response = _exchange(self._client, "GET", _receipt_path(data, client_id), deadline, what)
        if response.status_code == 404 and _error_code(response) == "receipt-not-found":
            return None
        if response.status_code != 200:
            raise UnitUnavailable(f"{what}: cannot ask the service: {_status(response)}")
        return self._verified(response, data, client_id, what)

    def probe(self, *, deadline: float) -> None:
        """Ask the service's health endpoint (with the token, so a bad one shows here)."""
        what = f"chain unit {self._identity.unit_id}: probe"
        response = _exchange(self._client, "GET", "/v1/health", deadline, what)
        if response.status_code != 200:
            raise UnitUnavailable(f"{what}: {_status(response)}")

    def close(self) -> None:
        self._client.close()

    def _what(self, client_id: str) -> str:
        return f"chain unit {self._identity.unit_id}: receipt {client_id[:16]}"

    def _verified(self, response: httpx.Response, data: bytes, client_id: str, what: str) -> bytes:
        try:
            receipt = _Receipt.model_validate_json(response.content)
            signature = b64url_decode(receipt.signature)
        except ValueError as exc:  # pydantic's ValidationError is a ValueError
            raise InvalidSignature(f"{what}: unreadable answer: {exc}") from exc
        if receipt.client_id != client_id:
            raise InvalidSignature(f"{what}: the answer is for receipt {receipt.client_id}")
        if not verify_rs(self._identity.public_key(), data, signature):
            raise InvalidSignature(f"{what}: the signature does not verify against the certificate")
        return signature


def _client_id(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _receipt_path(data: bytes, client_id: str) -> str:
    """The receipt's URL path; its register is the Kassen-ID in the signed payload.

    Raises:
        SigningError: ``data`` is not the JWS signing input of an RKSV receipt.
    """
    try:
        _, body = data.decode("ascii").split(".")
        register = Payload.parse(b64url_decode(body).decode("utf-8")).register_id
    except ValueError as exc:  # UnicodeDecodeError is a ValueError
        raise SigningError(f"not the JWS signing input of an RKSV receipt: {exc}") from exc
    if not _REGISTER.fullmatch(register) or not register.strip("."):
        raise SigningError(f"the Kassen-ID {register!r} cannot name a register of the service")
    return f"/v1/registers/{register}/receipts/{client_id}"


def _exchange(
    client: httpx.Client,
    method: str,
    path: str,
    deadline: float,
    what: str,
    *,
    body: Mapping[str, Any] | None = None,
) -> httpx.Response:
    """One request, bounded by ``deadline``; httpx errors translated for ``method``.

    Raises:
        UnitUnavailable: nothing was sent (or, for a GET, no answer came).
        OutcomeUnknown: a PUT may have reached the service, but no answer came.
    """
    if time.monotonic() >= deadline:
        raise UnitUnavailable(f"{what}: the deadline passed before the request was sent")
    try:
        return client.request(method, path, json=body, extensions={"timeout": _Remaining(deadline)})
    except httpx.RequestError as exc:
        raise _translate(exc, what, changes_state=method != "GET") from exc


def _resend(
    client: httpx.Client,
    path: str,
    deadline: float,
    what: str,
    *,
    body: Mapping[str, Any],
    first: OutcomeUnknown,
) -> httpx.Response:
    """Send a PUT once more after ``first`` left its outcome unknown; a 200 is returned.

    Raises:
        OutcomeUnknown: whatever goes wrong now, since the first PUT may have been signed
            (a refusal now, such as 503 or "connection refused", says nothing about it).
    """
    try:
        response = _exchange(client, "PUT", path, deadline, what, body=body)
        if response.status_code != 200:
            raise _put_failure(response, what)
    except OutcomeUnknown:
        raise
    except SigningError as exc:
        raise OutcomeUnknown(
            f"{first}; sending it once more failed ({exc}), so the first may still be held"
        ) from exc
    return response


def _translate(exc: httpx.RequestError, what: str, *, changes_state: bool) -> SigningError:
    detail = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, _NOT_SENT) or not changes_state:
        return UnitUnavailable(f"{what}: {detail}")
    return OutcomeUnknown(f"{what}: sent, but no answer ({detail}); the service may hold it")


def _put_failure(response: httpx.Response, what: str) -> SigningError:
    status, text = response.status_code, _status(response)
    if status in (401, 403):
        return UnitUnavailable(f"{what}: the service refused the bearer token ({text})")
    if status in (502, 504):  # a gateway may have passed the request on before failing
        return OutcomeUnknown(f"{what}: {text} from a gateway; the service may hold it")
    if status in (408, 429) or status >= 500:
        return UnitUnavailable(f"{what}: {text}")
    if status == 409:
        return SigningError(f"{what}: the service holds a different signing input under it")
    return SigningError(f"{what}: the service rejected the request ({text})")


def _status(response: httpx.Response) -> str:
    code = _error_code(response)
    return f"HTTP {response.status_code}" + (f" {code}" if code else "")


def _error_code(response: httpx.Response) -> str | None:
    try:
        code = response.json().get("error")
    except (ValueError, AttributeError):
        return None
    return code if isinstance(code, str) else None


def _make_client(url: str, token: str) -> httpx.Client:
    return httpx.Client(
        base_url=url,
        headers={"Authorization": f"Bearer {token}"},
        limits=httpx.Limits(max_connections=8, keepalive_expiry=_KEEPALIVE),
        timeout=_OPEN_TIMEOUT,  # every request replaces it with its deadline
    )


def _fetch_certificate(client: httpx.Client, unit_id: str, timeout: float) -> x509.Certificate:
    what = f"chain unit {unit_id}: certificate"
    hint = "set certificate_file to open the unit without the service"
    try:
        response = _exchange(client, "GET", "/v1/certificate", time.monotonic() + timeout, what)
    except SigningError as exc:
        raise ConfigurationError(f"{exc}; {hint}") from exc
    if response.status_code != 200:
        raise ConfigurationError(f"{what}: {_status(response)}; {hint}")
    try:
        return x509.load_pem_x509_certificate(response.content)
    except ValueError as exc:
        raise ConfigurationError(f"{what}: not a PEM certificate: {exc}") from exc


def _read_token(path: Path) -> str:
    try:
        token = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigurationError(f"cannot read the token file {path}: {exc}") from exc
    if not token or any(c.isspace() or not c.isprintable() for c in token):
        raise ConfigurationError(f"{path}: the token must be one line of printable characters")
    return token
