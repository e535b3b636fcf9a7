"""The local HTTP API: the POS's second way in, and the support view of the till.

``create_app`` builds a FastAPI application over an :class:`ApiBackend`; ``serve`` runs it
with uvicorn on a thread, on 127.0.0.1 or a unix socket. Every route under ``/v1`` needs
``Authorization: Bearer <token>``; ``/openapi.json`` is public and tells the truth about
every body and status code of them (the tests run schemathesis against it). ``/metrics``
(Prometheus, :mod:`agent.metrics`) is public too and outside that document: it only reads
counts, ages and states, and a scraper must not hold the token that issues receipts.

Statuses: 201 a new receipt, 200 an idempotent repeat (same ``request_id``, same sale, or
the same report reference), 401 no or a wrong token, 404 no such register, receipt, outage
or check (naming the path's field: ``register``, ``number``, ...), 409 the register's state
forbids it, the ``request_id`` was used for another sale or the outage report (or a check)
has another reference already, 408 a body not complete within ``REQUEST_BODY_TIMEOUT_S`` of
its head, 413 a body over 1 MiB, 422 a bad request naming the field and rule, 503 the
receipt must be signed and the unit is down (or the database is busy): retry after
``Retry-After`` seconds. Errors are ``{field, rule, message}`` throughout, but for uvicorn's
own plain-text 503 (no ``Retry-After``) to a request beyond :data:`MAX_CONNECTIONS` open
connections (logged at most once a minute). Request bodies are JSON whatever their
``Content-Type`` says (``curl -d`` sends a form type), on every route that takes one.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import math
import os
import secrets
import socket
import stat
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any, TypeVar

import h11
import uvicorn
from fastapi import APIRouter, Depends, FastAPI, Request, Response
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from uvicorn.protocols.http.h11_impl import H11Protocol

from agent import __version__
from agent.api_backend import (
    ApiBackend,
    CheckDoneIn,
    CheckOut,
    Issued,
    OpenOutageOut,
    OutageOut,
    PrinterOut,
    RegisterStatusOut,
    ReportIn,
    ReprintOut,
    StatusOut,
    UnitOut,
    ZeroReceiptIn,
)
from agent.checks import CheckKind
from agent.contract import ReceiptResult, Sale, load_json, refusal, rule_name
from agent.errors import (
    ConfigurationError,
    ConflictError,
    FiscalError,
    InvalidSale,
    NotFound,
    RegisterStateError,
    SigningError,
    StorageError,
    TillAgentError,
    WaitsForUnit,
)
from agent.local_api import base_url
from agent.log_limit import RateLimitedFilter
from agent.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE

__all__ = [
    "DEFAULT_PORT",
    "MAX_BODY_BYTES",
    "ApiBackend",
    "ApiServer",
    "CheckOut",
    "ErrorOut",
    "Issued",
    "OpenOutageOut",
    "OutageOut",
    "PrinterOut",
    "RegisterStatusOut",
    "StatusOut",
    "UnitOut",
    "create_app",
    "serve",
]

log = logging.getLogger(__name__)

DEFAULT_PORT = 8765
MAX_BODY_BYTES = 1024 * 1024
RETRY_AFTER_S = 5
_RETRY = str(RETRY_AFTER_S)
_REGISTER = r"^[A-Za-z0-9.:-]{1,64}$"
_MAX_NUMBER = 2**63 - 1  # SQLite INTEGER
# a scrape of /metrics this soon after the last render gets that render again
SCRAPE_REUSE_S = 1.0
_DESCRIPTION = (
    "The till agent's local API. Every /v1 route needs `Authorization: Bearer <token>`."
    " POST /v1/receipts answers 201 for a new receipt and 200 for a repeat of the same sale"
    " (same request_id). Errors are {field, rule, message}; 503 carries Retry-After."
)
_CONFLICT_RULES = frozenset(
    {"register-closed", "development-unit", "request-id-reused", "already-reported"}
)


# -- errors -------------------------------------------------------------------------------


class ErrorOut(BaseModel):
    """Why a request was refused: the field, a machine-readable rule and a sentence."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    field: str
    rule: str
    message: str


class _Problem(Exception):
    """An error response; raised anywhere in a request, rendered by one handler."""

    def __init__(self, status: int, error: ErrorOut, headers: dict[str, str] | None = None) -> None:
        super().__init__(error.message)
        self.status = status
        self.error = error
        self.headers = headers


def _problem(status: int, field: str, rule: str, message: str, **headers: str) -> _Problem:
    return _Problem(status, ErrorOut(field=field, rule=rule, message=message), headers or None)


_STATUSES: tuple[tuple[type[TillAgentError], int, str, str], ...] = (
    (NotFound, 404, "(path)", "not-found"),
    (ConflictError, 409, "request_id", "conflict"),
    (RegisterStateError, 409, "register", "register-state"),
    (WaitsForUnit, 503, "register", "waits-for-unit"),
    (FiscalError, 409, "register", "fiscal"),
    (SigningError, 503, "register", "unit-unavailable"),
    (StorageError, 503, "(till)", "storage"),
)


@contextlib.contextmanager
def _naming_unknown(
    backend: ApiBackend, register: str | None, field: str, rule: str
) -> Iterator[None]:
    """A ``NotFound`` of a route as the 404 that names what the POS sent: ``register``
    (``register-unknown``, as a sale naming it) when this till has no such register,
    else ``field`` with ``rule`` (the receipt, outage or check the path names)."""
    try:
        yield
    except NotFound as exc:
        if isinstance(exc, StorageError):  # no database at all is no unknown name
            raise
        if register is not None and not backend.has_register(register):
            message = f"register {register!r} is not initialized on this till"
            raise _problem(404, "register", "register-unknown", message) from None
        raise _problem(404, field, rule, str(exc)) from None


def _translate(exc: TillAgentError) -> _Problem | None:
    """The one place agent errors become HTTP statuses (``None``: a real 500)."""
    if isinstance(exc, InvalidSale):
        status = 409 if exc.rule in _CONFLICT_RULES else 422
        return _problem(status, exc.field, exc.rule, exc.message)
    for cls, status, field, rule in _STATUSES:
        if isinstance(exc, cls):
            if status == 503:
                log.warning("api: answering 503: %s", exc)
                return _problem(status, field, rule, str(exc), **{"Retry-After": _RETRY})
            return _problem(status, field, rule, str(exc))
    return None


def _render(problem: _Problem) -> JSONResponse:
    return JSONResponse(
        problem.error.model_dump(), status_code=problem.status, headers=problem.headers
    )


def _install_error_handlers(app: FastAPI) -> None:
    async def on_problem(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, _Problem)
        return _render(exc)

    async def on_agent_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, TillAgentError)
        problem = _translate(exc)
        if problem is None:
            raise exc  # a real 500: logged by the server
        return _render(problem)

    async def on_validation(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        first = exc.errors()[0] if exc.errors() else {}
        loc = tuple(first.get("loc", ()))[1:]  # without "path" or "query"
        if not loc or "type" not in first:
            rule = rule_name(str(first.get("type", "invalid")))
            message = str(first.get("msg", "invalid request"))
            return _render(_problem(422, "(request)", rule, message))
        refused = refusal({**first, "loc": loc}, "the request")  # in a sale's words
        return _render(_problem(422, refused.field, refused.rule, refused.message))

    async def on_http(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        rule = {404: "not-found", 405: "method-not-allowed"}.get(exc.status_code, "http")
        problem = _problem(exc.status_code, "(request)", rule, str(exc.detail))
        problem.headers = dict(exc.headers or {})
        return _render(problem)

    app.add_exception_handler(_Problem, on_problem)
    app.add_exception_handler(TillAgentError, on_agent_error)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)


def _responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    described = {
        401: "no or a wrong bearer token",
        404: "the register, receipt, outage or check the path names does not exist"
        " (field and rule name which)",
        408: f"the body was not complete {REQUEST_BODY_TIMEOUT_S:.0f} s after the request head"
        " (the connection closes)",
        409: "the register's state or an earlier request conflicts",
        413: "the body is larger than 1 MiB",
        422: "the request breaks a rule (field and rule are named)",
        503: "the receipt must be signed and the unit is down, or the till is busy",
    }
    headers = {
        401: {"WWW-Authenticate": {"schema": {"type": "string"}}},
        503: {"Retry-After": {"schema": {"type": "string", "pattern": "^[0-9]+$"}}},
    }
    out: dict[int | str, dict[str, Any]] = {}
    for code in codes:
        out[code] = {"model": ErrorOut, "description": described[code]}
        if code in headers:
            out[code]["headers"] = headers[code]
    return out


# -- authentication and the request bodies -------------------------------------------------


_SCHEME = HTTPBearer(auto_error=False, description="the token from the agent's token file")
_Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(_SCHEME)]


def _bearer(token: str) -> Callable[[HTTPAuthorizationCredentials | None], None]:
    expected = token.encode()

    def check(credentials: _Credentials) -> None:
        given = b"" if credentials is None else credentials.credentials.encode()
        if not secrets.compare_digest(given, expected):  # constant time
            raise _problem(
                401,
                "authorization",
                "bearer-token",
                "send Authorization: Bearer <token> with the agent's token",
                **{"WWW-Authenticate": "Bearer"},
            )

    return check


async def _raw_body(request: Request) -> bytes:
    """The raw body, refused early when too large; the route's parser does the checking."""
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > MAX_BODY_BYTES:
        raise _too_large()
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                raise _too_large()
            chunks.append(chunk)
    except ClientDisconnect:  # gone, or closed for a stalled body: nobody reads an answer
        raise _problem(400, "(document)", "incomplete", "the body was not complete") from None
    return b"".join(chunks)


def _too_large() -> _Problem:
    return _problem(
        413, "(document)", "max-size", f"a request body is at most {MAX_BODY_BYTES} bytes"
    )


_Model = TypeVar("_Model", bound=BaseModel)


def _json_body(model: type[_Model]) -> Callable[[bytes], _Model]:
    """A dependency parsing the raw body into ``model`` (:func:`_parse_body`)."""

    def parse(raw: Annotated[bytes, Depends(_raw_body)]) -> _Model:
        return _parse_body(model, raw)

    return parse


def _parse_body(model: type[_Model], raw: bytes) -> _Model:
    """``raw`` parsed into ``model`` as JSON whatever its Content-Type, as POST
    /v1/receipts does (``curl -d`` sends application/x-www-form-urlencoded, and FastAPI
    would then validate the bytes, not the JSON). Errors are InvalidSale: 422."""
    document = load_json(raw)  # a key named twice is refused, as in a sale
    if not isinstance(document, dict):
        raise InvalidSale("(document)", "type-object", "the body is a JSON object")
    try:
        return model.model_validate(document)
    except ValidationError as exc:
        raise refusal(exc.errors()[0], "the request") from None  # in a sale's words


def _json_request(name: str, description: str, *, required: bool = True) -> dict[str, Any]:
    """The ``openapi_extra`` of a route whose body is parsed by hand into model ``name``."""
    schema = {"schema": {"$ref": f"#/components/schemas/{name}"}}
    return {
        "requestBody": {
            "required": required,
            "description": description,
            "content": {"application/json": schema},
        }
    }


_BODY_MODELS: dict[str, type[BaseModel]] = {
    "Sale": Sale,
    "ReportIn": ReportIn,
    "CheckDoneIn": CheckDoneIn,
    "ZeroReceiptIn": ZeroReceiptIn,
}


def _with_body_schemas(app: FastAPI) -> Callable[[], dict[str, Any]]:
    """``app.openapi`` that also publishes the models the raw bodies are parsed into."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
            )
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            for name, model in _BODY_MODELS.items():
                published = model.model_json_schema(
                    by_alias=True, ref_template="#/components/schemas/{model}"
                )
                components.update(published.pop("$defs", {}))
                components[name] = published
            app.openapi_schema = schema
        return app.openapi_schema

    return openapi


# -- the application ----------------------------------------------------------------------


def create_app(backend: ApiBackend, *, token: str) -> FastAPI:
    """The local API over ``backend``; every ``/v1`` route needs ``Bearer <token>``.

    Raises:
        ValueError: an empty token.
    """
    if not token:
        raise ValueError("the API needs a non-empty bearer token")
    app = FastAPI(
        title="till-agent local API",
        version=__version__,
        description=_DESCRIPTION,
        docs_url=None,  # the UI pages load scripts from a CDN: a till is offline
        redoc_url=None,
    )
    router = APIRouter(
        prefix="/v1", dependencies=[Depends(_bearer(token))], responses=_responses(401)
    )
    _add_receipt_routes(router, backend)
    _add_till_routes(router, backend)
    app.include_router(router)
    _add_metrics_route(app, backend)
    _install_error_handlers(app)
    app.openapi = _with_body_schemas(app)  # type: ignore[method-assign]
    return app


_RegisterParam = Annotated[str, PathParam(pattern=_REGISTER, description="the Kassen-ID")]


def _add_receipt_routes(router: APIRouter, backend: ApiBackend) -> None:
    @router.post(
        "/receipts",
        status_code=201,
        response_model=ReceiptResult,
        responses={
            200: {"model": ReceiptResult, "description": "a repeat: the stored receipt"},
            **_responses(408, 409, 413, 422, 503),
        },
        openapi_extra=_json_request(
            "Sale", "the sale contract (agent.contract.Sale); checked strictly"
        ),
        summary="Issue the receipt for a sale (idempotent on request_id)",
    )
    def create_receipt(
        raw: Annotated[bytes, Depends(_raw_body)], response: Response
    ) -> ReceiptResult:
        issued = backend.issue(raw)
        if not issued.created:
            response.status_code = 200
        return issued.result

    @router.get(
        "/receipts/{register}/{number}",
        response_model=ReceiptResult,
        responses=_responses(404, 422, 503),
        summary="A stored receipt",
    )
    def get_receipt(
        register: _RegisterParam,
        number: Annotated[int, PathParam(ge=1, le=_MAX_NUMBER)],
    ) -> ReceiptResult:
        with _naming_unknown(backend, register, "number", "receipt-unknown"):
            return backend.get(register, number)

    @router.post(
        "/registers/{register}/zero-receipt",
        status_code=201,
        response_model=ReceiptResult,
        responses={
            200: {"model": ReceiptResult, "description": "a repeat: the stored receipt"},
            **_responses(404, 408, 409, 413, 422, 503),
        },
        openapi_extra=_json_request(
            "ZeroReceiptIn",
            "optional: the caller's request_id, which makes a retry return the stored"
            " receipt (JSON; no body: a new zero receipt every time)",
            required=False,
        ),
        summary="Issue a Nullbeleg (during an outage: the signed Sammelbeleg)",
    )
    def zero_receipt(
        register: _RegisterParam,
        raw: Annotated[bytes, Depends(_raw_body)],
        response: Response,
    ) -> ReceiptResult:
        """While unsigned receipts of the register wait for their remedy, the remedy is
        issued first, as recovery issues it (adopted receipts, signed Nullbeleg,
        Sammelbeleg, Storno and reissued sales); the answer is its Sammelbeleg, or its
        Nullbeleg when no outage is open. 503 while the unit cannot sign or be asked."""
        body = _parse_body(ZeroReceiptIn, raw) if raw.strip() else ZeroReceiptIn()
        with _naming_unknown(backend, register, "register", "register-unknown"):
            issued = backend.zero_receipt(register, body.request_id)
        if not issued.created:
            response.status_code = 200
        return issued.result

    @router.post(
        "/receipts/{register}/{number}/reprint",
        status_code=202,
        response_model=ReprintOut,
        responses=_responses(404, 409, 422, 503),
        summary="Print a copy of a receipt, marked as such (KOPIE)",
    )
    def reprint(
        register: _RegisterParam,
        number: Annotated[int, PathParam(ge=1, le=_MAX_NUMBER)],
    ) -> ReprintOut:
        with _naming_unknown(backend, register, "number", "receipt-unknown"):
            return ReprintOut(copy_number=backend.reprint(register, number))


def _add_till_routes(router: APIRouter, backend: ApiBackend) -> None:
    @router.get(
        "/status",
        response_model=StatusOut,
        responses=_responses(503),
        summary="Registers, units, open outages, waiting receipts, open checks, printer",
    )
    def status() -> StatusOut:
        return backend.status()

    @router.get(
        "/outages",
        response_model=list[OutageOut],
        responses=_responses(503),
        summary="Every outage, newest first",
    )
    def outages() -> list[OutageOut]:
        return backend.outages()

    @router.post(
        "/outages/{outage_id}/report",
        response_model=OutageOut,
        responses=_responses(404, 408, 409, 413, 422, 503),
        openapi_extra=_json_request("ReportIn", "the FinanzOnline reference (JSON)"),
        summary="Record the FinanzOnline outage report (or, with end, the end report)",
    )
    def report_outage(
        outage_id: Annotated[int, PathParam(ge=1, le=_MAX_NUMBER)],
        body: Annotated[ReportIn, Depends(_json_body(ReportIn))],
    ) -> OutageOut:
        with _naming_unknown(backend, None, "outage_id", "outage-unknown"):
            return backend.report_outage(outage_id, body.reference, end=body.end)

    @router.post(
        "/registers/{register}/checks/{kind}",
        response_model=CheckOut,
        responses=_responses(404, 408, 409, 413, 422, 503),
        openapi_extra=_json_request("CheckDoneIn", "the Belegcheck reference (JSON)"),
        summary=(
            "Record a check the operator owes (the Belegcheck of the Startbeleg or a"
            " Jahresbeleg, the decommissioning report, a switched unit's FinanzOnline steps),"
            " or that it failed"
        ),
    )
    def record_check(
        register: _RegisterParam,
        kind: CheckKind,
        body: Annotated[CheckDoneIn, Depends(_json_body(CheckDoneIn))],
    ) -> CheckOut:
        with _naming_unknown(backend, register, "kind", "check-unknown"):
            return backend.record_check(register, kind, body)


class _Scrapes:
    """The exposition, rendered at most once per :data:`SCRAPE_REUSE_S`: the route needs
    no token, so a client scraping in a loop costs the till one render a second, and
    scrapes that come together wait for the one render instead of each doing it."""

    def __init__(self, backend: ApiBackend) -> None:
        self._backend = backend
        self._lock = threading.Lock()
        self._text = ""
        self._at = -math.inf

    def text(self) -> str:
        with self._lock:
            if time.monotonic() - self._at >= SCRAPE_REUSE_S:
                self._text = self._backend.metrics()
                self._at = time.monotonic()
            return self._text


def _add_metrics_route(app: FastAPI, backend: ApiBackend) -> None:
    scrapes = _Scrapes(backend)

    @app.get("/metrics", include_in_schema=False)
    def metrics() -> Response:
        return Response(scrapes.text(), media_type=METRICS_CONTENT_TYPE)


# -- the server -------------------------------------------------------------------------


# at most this many API connections are served at once (uvicorn answers 503 beyond): a till
# has a few POS clients, and each connection is a file descriptor
MAX_CONNECTIONS = 200
# a connection that has not sent a complete request head this long after it opened (or
# after its last response) is closed: idle or half-sent connections must not pile up
REQUEST_HEAD_TIMEOUT_S = 5.0
# a request body must be complete this long after its head (1 MiB at 100 KiB/s): a client
# that stalls it is answered 408 (if no response was started) and closed
REQUEST_BODY_TIMEOUT_S = 10.0
SLOW_BODY = "api: closed a connection whose request body"
# a client can stall bodies as often as it likes: its log lines are rate-limited
SLOW_BODY_FILTER = RateLimitedFilter(SLOW_BODY)
# uvicorn's own line for each request refused beyond MAX_CONNECTIONS (a plain-text 503)
OVER_LIMIT = "Exceeded concurrency limit."
OVER_LIMIT_FILTER = RateLimitedFilter(OVER_LIMIT)


class _H11Protocol(H11Protocol):
    """uvicorn's h11 protocol, closing a connection whose request head does not arrive
    within :data:`REQUEST_HEAD_TIMEOUT_S` (uvicorn's ``timeout_keep_alive`` only runs
    between requests and any byte received cancels it), or whose body does not arrive
    within :data:`REQUEST_BODY_TIMEOUT_S` after the head (uvicorn has no body timeout)."""

    _head_timer: asyncio.TimerHandle | None = None
    _body_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        self._cancel_body_timer()
        super().connection_lost(exc)

    def handle_events(self) -> None:
        super().handle_events()
        if self.conn.their_state is not h11.IDLE:  # the request head is in
            self._cancel_head_timer()
        if self.conn.their_state is not h11.SEND_BODY:
            self._cancel_body_timer()
        elif self._body_timer is None and not self.transport.is_closing():
            self._body_timer = self.loop.call_later(REQUEST_BODY_TIMEOUT_S, self._body_timeout)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
            self._arm_head_timer()

    def _arm_head_timer(self) -> None:
        self._cancel_head_timer()
        self._head_timer = self.loop.call_later(REQUEST_HEAD_TIMEOUT_S, self._head_timeout)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _cancel_body_timer(self) -> None:
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None

    def _head_timeout(self) -> None:
        self._head_timer = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self.transport.close()

    def _body_timeout(self) -> None:
        self._body_timer = None
        if self.conn.their_state is not h11.SEND_BODY or self.transport.is_closing():
            return
        log.warning("%s did not arrive within %.0f s", SLOW_BODY, REQUEST_BODY_TIMEOUT_S)
        cycle = self.cycle
        answer = cycle is not None and not cycle.response_started
        if cycle is not None:
            # from now on the app's sends are dropped and its receive says "disconnect"
            cycle.disconnected = True
            cycle.message_event.set()
        if answer:
            self._send_408()
        self.transport.close()

    def _send_408(self) -> None:
        message = f"the request body did not arrive within {REQUEST_BODY_TIMEOUT_S:.0f} s"
        data = ErrorOut(field="(request)", rule="body-timeout", message=message)
        payload = data.model_dump_json().encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(payload)).encode()),
            (b"connection", b"close"),
        ]
        for event in (
            h11.Response(status_code=408, headers=headers),
            h11.Data(data=payload),
            h11.EndOfMessage(),
        ):
            self.transport.write(self.conn.send(event))


class ApiServer:
    """uvicorn serving one app on a thread, on a TCP socket or a unix socket.

    The socket is bound by :meth:`bind`, or else in :meth:`start` (so port 0 works and
    :attr:`port` is known); a unix socket gets ``uds_mode`` and is removed again by
    :meth:`stop`.
    """

    def __init__(
        self,
        app: FastAPI,
        *,
        host: str = "127.0.0.1",
        port: int = DEFAULT_PORT,
        uds: Path | None = None,
        uds_mode: int = 0o660,
        access_log: bool = False,
    ) -> None:
        self.app = app
        self.host = host
        self.port = port
        self.uds = uds
        self.uds_mode = uds_mode
        self._config = uvicorn.Config(
            app,
            log_config=None,  # the agent configures logging, not uvicorn
            access_log=access_log,
            lifespan="off",
            ws="none",
            http=_H11Protocol,
            loop="asyncio",
            limit_concurrency=MAX_CONNECTIONS,
            timeout_graceful_shutdown=5,
            server_header=False,
        )
        if SLOW_BODY_FILTER not in log.filters:
            log.addFilter(SLOW_BODY_FILTER)
        uvicorn_log = logging.getLogger("uvicorn.error")
        if OVER_LIMIT_FILTER not in uvicorn_log.filters:
            uvicorn_log.addFilter(OVER_LIMIT_FILTER)
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._sock: socket.socket | None = None  # bound by bind(), not served yet

    @property
    def url(self) -> str:
        """The base URL (for a unix socket, the host part is only a placeholder)."""
        if self.uds is not None:
            return "http://localhost"
        return base_url(self.host, self.port)

    @property
    def location(self) -> str:
        """Where clients connect, for a log line: the base URL, or ``unix socket PATH``."""
        return f"unix socket {self.uds}" if self.uds is not None else self.url

    def bind(self) -> None:
        """Bind the address now (a till service does, before anything fiscal happens);
        :meth:`start` serves on it. Binding twice keeps the first socket.

        Raises:
            ConfigurationError: the address cannot be bound.
        """
        if self._sock is None:
            self._sock = self._bind()

    def start(self, timeout: float = 10.0) -> None:
        """Bind (unless :meth:`bind` did), start serving and return once the server
        accepts connections.

        Raises:
            ConfigurationError: the address cannot be bound or the server did not start.
        """
        if self._thread is not None:
            raise RuntimeError("the API server is already running")
        sock, self._sock = self._sock or self._bind(), None
        server = uvicorn.Server(self._config)
        thread = threading.Thread(
            target=server.run, kwargs={"sockets": [sock]}, name="api", daemon=True
        )
        self._server, self._thread = server, thread
        thread.start()
        deadline = time.monotonic() + timeout
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                sock.close()
                raise ConfigurationError(f"the API server did not start on {self._where()}")
            time.sleep(0.01)
        log.info("api: listening on %s", self._where())

    def stop(self, timeout: float = 10.0) -> None:
        """Stop accepting, let running requests finish (5 s at most), join the thread; a
        socket bound but never served is closed (and a unix socket's file removed)."""
        server, thread = self._server, self._thread
        if server is None or thread is None:
            if self._sock is not None:
                self._sock.close()
                self._sock = None
                self._remove_socket_file()
            return
        server.should_exit = True
        thread.join(timeout)
        if thread.is_alive():
            server.force_exit = True
            thread.join(timeout)
        self._server = self._thread = None
        self._remove_socket_file()

    def _remove_socket_file(self) -> None:
        if self.uds is not None:
            with contextlib.suppress(FileNotFoundError):
                if stat.S_ISSOCK(self.uds.lstat().st_mode):
                    self.uds.unlink()

    def __enter__(self) -> ApiServer:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def _where(self) -> str:
        return str(self.uds) if self.uds is not None else f"{self.host}:{self.port}"

    def _bind(self) -> socket.socket:
        try:
            if self.uds is not None:
                return self._bind_unix(self.uds)
            sock = _tcp_listener(self.host, self.port)
        except OSError as exc:
            raise ConfigurationError(f"cannot listen on {self._where()}: {exc}") from exc
        self.port = int(sock.getsockname()[1])
        return sock

    def _bind_unix(self, path: Path) -> socket.socket:
        with contextlib.suppress(FileNotFoundError):
            if not stat.S_ISSOCK(path.lstat().st_mode):
                raise ConfigurationError(f"{path} exists and is not a socket")
            path.unlink()  # left by a crashed agent (we hold the data directory lock)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(str(path))
            os.chmod(path, self.uds_mode)
            sock.listen(128)
        except OSError:
            sock.close()
            raise
        return sock


def serve(
    app: FastAPI,
    *,
    host: str | None = None,
    port: int | None = None,
    uds: Path | None = None,
    access_log: bool = False,
) -> ApiServer:
    """An :class:`ApiServer` for ``app`` (not started): on a unix socket ``uds``, or else on
    ``host`` (default 127.0.0.1) and ``port`` (default :data:`DEFAULT_PORT`; 0 picks one).

    Raises:
        ConfigurationError: both a unix socket and a host or port.
    """
    if uds is not None:
        if host is not None or port is not None:
            raise ConfigurationError("listen on a unix socket or on host:port, not both")
        return ApiServer(app, uds=uds, access_log=access_log)
    host = host or "127.0.0.1"
    if not _is_loopback(host):
        log.warning("api: listening on %s, which is not a loopback address", host)
    return ApiServer(
        app, host=host, port=DEFAULT_PORT if port is None else port, access_log=access_log
    )


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _tcp_listener(host: str, port: int) -> socket.socket:
    """A listening TCP socket created with ``IPPROTO_TCP``: asyncio sets TCP_NODELAY on the
    connections it accepts only for such sockets (``create_server`` passes protocol 0),
    and without it every kept-alive request waits ~40 ms for a delayed ACK."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    return sock
