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
from factories import sale

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


def _refused(client: httpx.Client, document: dict[str, Any]) -> dict[str, str]:
    response = client.post("/v1/receipts", json=document)
    assert response.status_code == 422, response.text
    refusal: dict[str, str] = response.json()
    return refusal


def _line(**change: Any) -> dict[str, Any]:
    return {"text": "X", "qty": "1", "unit_price": "1.00", "vat": "normal"} | change


@pytest.mark.parametrize(
    ("document", "field", "said"),
    [
        (sale(kind=None), "kind", "null is not allowed: use "),
        (sale(lines=[_line(vat=True)]), "lines.0.vat", "true is not allowed: use "),
        (sale(lines=[_line(vat=[1, None])]), "lines.0.vat", "[1, null] is not allowed: use "),
        (sale(kind="x\ny"), "kind", '"x\\ny" is not allowed: use '),
        (sale(kind="\u202etxet"), "kind", '"\\u202etxet" is not allowed: use '),
        (sale(lines=[_line(vat="\u2028\u0085")]), "lines.0.vat", '"\\u2028\\u0085" is not'),
    ],
    ids=["null", "true", "list", "string", "bidi", "separators"],
)
def test_a_value_not_allowed_is_shown_as_json(
    client: httpx.Client, document: dict[str, Any], field: str, said: str
) -> None:
    """The field and rule stay (POS vendors match on them); the value is written as the
    POS wrote it in JSON, not as Python prints it (None, True)."""
    refusal = _refused(client, document)
    assert (refusal["field"], refusal["rule"]) == (field, "allowed-values")
    assert refusal["message"].startswith(said), refusal["message"]
    assert "None" not in refusal["message"]
    assert "True" not in refusal["message"]
    assert "Input should be" not in refusal["message"]
    assert refusal["message"].isascii(), refusal["message"]  # nothing to hide or reorder it


def test_the_values_allowed_are_named_in_json() -> None:
    """What the message offers is what the contract takes, each as a JSON string."""
    from agent.contract import parse_sale
    from agent.errors import InvalidSale

    with pytest.raises(InvalidSale) as refused:
        parse_sale(sale(kind="refund"))
    offered = refused.value.message.split("use ", 1)[1]
    assert offered == '"standard", "storno", "training" or "null"'
    for kind in ("standard", "storno", "training", "null"):
        assert f'"{kind}"' in offered


@pytest.mark.parametrize(
    ("document", "field", "said"),
    [
        (
            sale(
                lines=[_line(unit_price="21.00")],
                payments=[{"method": "cash", "amount": "1.00"}] * 21,
            ),
            "payments",
            "the sale carries at most 20 payments, not 21",
        ),
        (sale(lines=[_line()] * 501), "lines", "the sale carries at most 500 lines, not 501"),
    ],
    ids=["payments", "lines"],
)
def test_too_many_items_are_refused_in_the_projects_words(
    client: httpx.Client, document: dict[str, Any], field: str, said: str
) -> None:
    refusal = _refused(client, document)
    assert refusal == {"field": field, "rule": "max-items", "message": said}
