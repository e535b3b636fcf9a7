"""Commands that write while `till-agent run` holds the data directory ask the service
over its local API (the one writer stays the one writer).

Where the API listens: a unix socket or ``host:port`` from the configuration, except with
``port = 0``, where the operating system picks the port as the service starts. The
service then names its base URL (one line, ``http://127.0.0.1:43127``) in
``<data_dir>/api-address``: written, in one step, once it listens, and removed when it
stops or starts again (a killed service leaves its file, naming a port nobody listens
on, until its next start).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from agent.config import AgentConfig
from agent.durable import replace_file
from agent.errors import DataDirLocked

__all__ = [
    "ADDRESS_FILE",
    "address_file",
    "base_url",
    "forget_address",
    "post_to_service",
    "publish_address",
    "service_url",
]

ADDRESS_FILE = "api-address"


def address_file(config: AgentConfig) -> Path:
    """Where the running service names its API's base URL."""
    return config.data_dir / ADDRESS_FILE


def publish_address(config: AgentConfig, url: str) -> None:
    """Name ``url`` in the address file, replacing what an earlier start left there."""
    replace_file(address_file(config), f"{url}\n".encode(), mode=0o644)


def forget_address(config: AgentConfig) -> None:
    """Remove the address file (the service stops, or starts again)."""
    address_file(config).unlink(missing_ok=True)


def base_url(host: str, port: int) -> str:
    """``http://host:port``, an IPv6 address in brackets."""
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def service_url(config: AgentConfig) -> str:
    """The base URL of the running service's TCP API: from the configuration, or with
    ``port = 0`` from the address file.

    Raises:
        httpx.ConnectError: ``port = 0`` and the address file is missing (the service
            does not listen, or not yet), cannot be read or names no ``http://`` URL
            with a port: the service cannot be reached.
    """
    api = config.api
    if api.port != 0:
        return base_url(api.host, api.port)
    file = address_file(config)
    try:
        url = file.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise httpx.ConnectError(
            f"{file} does not exist: with api.port = 0 the service names its address there"
            " once it listens (is `till-agent run` running?)"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise httpx.ConnectError(f"cannot read the API address in {file}: {exc}") from exc
    if not _is_base_url(url):
        raise httpx.ConnectError(f"{file} names no http://HOST:PORT address: {url[:80]!r}")
    return url


def _is_base_url(url: str) -> bool:
    try:
        parts = urlsplit(url)
        return parts.scheme == "http" and bool(parts.hostname) and parts.port is not None
    except ValueError:  # a port out of range or not a number
        return False


def post_to_service(config: AgentConfig, path: str, body: Any = None) -> httpx.Response:
    """POST ``body`` (JSON) to ``/v1/<path>`` of the running service, with its token.

    Raises:
        DataDirLocked: the service runs but its local API is disabled.
        httpx.RequestError: the service cannot be reached or did not answer; with
            ``port = 0`` the message names the address tried and the file naming it.
        OSError: the token file cannot be read.
    """
    api = config.api
    if not api.enabled or api.token_file is None:
        raise DataDirLocked("the till service is running and its local API is disabled")
    token = api.token_file.read_text().strip()
    if api.unix_socket is not None:
        base, transport = "http://till/", httpx.HTTPTransport(uds=str(api.unix_socket))
    else:
        base, transport = f"{service_url(config)}/", None
    with httpx.Client(base_url=base, transport=transport, timeout=10.0) as client:
        try:
            return client.post(
                f"v1/{path}", json=body, headers={"Authorization": f"Bearer {token}"}
            )
        except httpx.RequestError as exc:
            if api.unix_socket is not None or api.port != 0:
                raise
            # the configuration's address (port 0) is no help to the reader: name the real one
            found = f"{base.rstrip('/')} (named in {address_file(config)})"
            raise type(exc)(f"{found}: {exc}", request=exc.request) from exc
