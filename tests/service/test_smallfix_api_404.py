"""Every 404 of the local API names what the POS sent that names nothing on this till.

One real service (file printer, so reprints reach the printer worker) with its API on an
OS-picked loopback port; each route that can answer 404 is asked with an unknown register
and with an unknown receipt, outage or check. The field is the path parameter the POS
sent, as a 422 for a malformed one names it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from service.conftest import Start

from agent.service import TillService

# (method, path, body, field, rule): the register KASSE-1 of the development defaults
UNKNOWN: list[tuple[str, str, dict[str, Any] | None, str, str]] = [
    ("GET", "/v1/receipts/KASSE-9/1", None, "register", "register-unknown"),
    ("GET", "/v1/receipts/KASSE-1/99", None, "number", "receipt-unknown"),
    ("POST", "/v1/receipts/KASSE-9/1/reprint", None, "register", "register-unknown"),
    ("POST", "/v1/receipts/KASSE-1/99/reprint", None, "number", "receipt-unknown"),
    ("POST", "/v1/registers/KASSE-9/zero-receipt", None, "register", "register-unknown"),
    ("POST", "/v1/outages/99/report", {"reference": "FON-1"}, "outage_id", "outage-unknown"),
    (
        "POST",
        "/v1/registers/KASSE-9/checks/start",
        {"reference": "BC-1"},
        "register",
        "register-unknown",
    ),
    (
        "POST",
        "/v1/registers/KASSE-1/checks/yearly",
        {"reference": "BC-1", "year": 2026},
        "kind",
        "check-unknown",
    ),
]


@pytest.fixture(name="till")
def _till(start: Start) -> TillService:
    """The service on the development defaults (KASSE-1, Startbeleg 1), API on port 0."""
    return start(printer={"kind": "file"}, api={"port": 0})


@pytest.fixture(name="client")
def _client(till: TillService) -> Iterator[httpx.Client]:
    assert till.api is not None
    token = (till.config.data_dir / "api-token").read_text().strip()
    base = f"http://127.0.0.1:{till.api.port}"
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}) as client:
        yield client


class TestEvery404NamesTheField:
    def test_each_unknown_thing_is_named_by_its_field(self, client: httpx.Client) -> None:
        """An unknown register is ``register``/``register-unknown`` on every route (as a
        sale naming one is); an unknown receipt, outage or check names its own field."""
        answers = {}
        for method, path, body, _, _ in UNKNOWN:
            response = client.request(method, path, json=body)
            assert response.status_code == 404, (path, response.text)
            error = response.json()
            answers[method, path] = (error["field"], error["rule"])
            assert error["message"], path
        assert answers == {(m, p): (f, r) for m, p, _, f, r in UNKNOWN}

    def test_the_messages_name_what_is_unknown(self, client: httpx.Client) -> None:
        """An unknown register's message names the register, not a receipt of it."""
        message = client.get("/v1/receipts/KASSE-9/1").json()["message"]
        assert "KASSE-9" in message
        assert "not initialized" in message
        assert "99" in client.get("/v1/receipts/KASSE-1/99").json()["message"]

    def test_every_route_that_can_404_is_covered(self, client: httpx.Client) -> None:
        """The OpenAPI document's 404 routes are the ones this module asks (a new route
        that can 404 must be added to UNKNOWN)."""
        paths = client.get("/openapi.json").json()["paths"]
        declared = {
            (method.upper(), path)
            for path, operations in paths.items()
            for method, operation in operations.items()
            if "404" in operation["responses"]
        }
        asked = {(m, _template(p)) for m, p, *_ in UNKNOWN}
        assert declared == asked


def _template(path: str) -> str:
    """``path`` with its parameters as the OpenAPI document spells them."""
    templates = {
        "/v1/receipts/KASSE-9/1": "/v1/receipts/{register}/{number}",
        "/v1/receipts/KASSE-1/99": "/v1/receipts/{register}/{number}",
        "/v1/receipts/KASSE-9/1/reprint": "/v1/receipts/{register}/{number}/reprint",
        "/v1/receipts/KASSE-1/99/reprint": "/v1/receipts/{register}/{number}/reprint",
        "/v1/registers/KASSE-9/zero-receipt": "/v1/registers/{register}/zero-receipt",
        "/v1/outages/99/report": "/v1/outages/{outage_id}/report",
        "/v1/registers/KASSE-9/checks/start": "/v1/registers/{register}/checks/{kind}",
        "/v1/registers/KASSE-1/checks/yearly": "/v1/registers/{register}/checks/{kind}",
    }
    return templates[path]
