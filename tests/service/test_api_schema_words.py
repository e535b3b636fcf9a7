"""The local API as published and as it answers, on a real server on loopback: an
operator's reference is published with minLength 1 (an empty one is refused with rule
`required`), and the refusals of a sale speak JSON, not Python (`null`, `true`)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from agent.api import ApiServer, create_app, serve
from agent.api_backend import ServiceBackend
from agent.receipts import ReceiptService

TOKEN = "test-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(name="server")
def _server(service: ReceiptService) -> Iterator[ApiServer]:
    with serve(create_app(ServiceBackend(service), token=TOKEN), port=0) as server:
        yield server


@pytest.fixture(name="client")
def _client(server: ApiServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=10.0) as client:
        yield client


@pytest.mark.parametrize("model", ["ReportIn", "CheckDoneIn"])
def test_a_reference_is_published_with_its_length_limits(server: ApiServer, model: str) -> None:
    document = httpx.get(f"{server.url}/openapi.json").json()
    reference = document["components"]["schemas"][model]["properties"]["reference"]
    assert (reference["minLength"], reference["maxLength"]) == (1, 200)


@pytest.mark.parametrize("reference", ["", "   "])
@pytest.mark.parametrize(
    ("url", "extra"),
    [
        ("/v1/registers/KASSE-1/checks/closing", {"failed": False, "year": None}),
        ("/v1/outages/1/report", {"end": False}),
    ],
)
def test_an_empty_or_blank_reference_is_still_required(
    client: httpx.Client, url: str, extra: dict[str, Any], reference: str
) -> None:
    response = client.post(url, json={"reference": reference, **extra})
    assert response.status_code == 422, response.text
    assert (response.json()["field"], response.json()["rule"]) == ("reference", "required")
