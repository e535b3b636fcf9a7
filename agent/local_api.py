"""Commands that write while `till-agent run` holds the data directory ask the service
over its local API (the one writer stays the one writer)."""

from __future__ import annotations

from typing import Any

import httpx

from agent.config import AgentConfig
from agent.errors import DataDirLocked

__all__ = ["post_to_service"]


def post_to_service(config: AgentConfig, path: str, body: Any = None) -> httpx.Response:
    """POST ``body`` (JSON) to ``/v1/<path>`` of the running service, with its token.

    Raises:
        DataDirLocked: the service runs but its local API is disabled.
    """
    api = config.api
    if not api.enabled or api.token_file is None:
        raise DataDirLocked("the till service is running and its local API is disabled")
    token = api.token_file.read_text().strip()
    if api.unix_socket is not None:
        base, transport = "http://till/", httpx.HTTPTransport(uds=str(api.unix_socket))
    else:
        base, transport = f"http://{api.host}:{api.port}/", None
    with httpx.Client(base_url=base, transport=transport, timeout=10.0) as client:
        return client.post(f"v1/{path}", json=body, headers={"Authorization": f"Bearer {token}"})
