"""Fixes from the user audit of the local API, against a real uvicorn server on loopback."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from agent.api import ApiServer, create_app, serve
from agent.api_backend import ServiceBackend
from agent.receipts import ReceiptService
from agent.signing.flaky import FlakyUnit
from agent.signing.registry import UnitRegistry
from factories import sale

Query = Callable[..., list[sqlite3.Row]]
TOKEN = "test-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
FORM = {"Content-Type": "application/x-www-form-urlencoded"}  # what `curl -d` sends


def body(document: Any) -> bytes:
    return json.dumps(document).encode()


@pytest.fixture(name="server")
def _server(service: ReceiptService) -> Iterator[ApiServer]:
    with serve(create_app(ServiceBackend(service), token=TOKEN), port=0) as server:
        yield server


@pytest.fixture(name="client")
def _client(server: ApiServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=10.0) as client:
        yield client


@pytest.fixture(name="outage")
def _outage(service: ReceiptService, registry: UnitRegistry, client: httpx.Client) -> int:
    """An outage opened by a fallback sale; its id."""
    with service.db.write_connection().transaction() as conn:
        flaky = FlakyUnit(registry.get(conn, "dev"))
    registry.put(flaky)
    flaky.mode = "down"
    assert client.post("/v1/receipts", content=body(sale())).json()["signature_state"] == "fallback"
    outage_id: int = client.get("/v1/outages").json()[0]["id"]
    return outage_id


def _end_outage(client: httpx.Client, service: ReceiptService, registry: UnitRegistry) -> None:
    """The unit of the :func:`_outage` fixture answers again: its Sammelbeleg ends it."""
    with service.db.read_connection() as conn:
        flaky = registry.get(conn, "dev")
    assert isinstance(flaky, FlakyUnit)
    flaky.mode = "up"
    zero = client.post("/v1/registers/KASSE-1/zero-receipt")
    assert zero.json()["kind"] == "sammelbeleg", zero.text


class TestJsonBodies:
    @pytest.mark.parametrize(
        "headers",
        [FORM, {"Content-Type": "text/plain"}, {"Content-Type": "application/json"}, {}],
        ids=["form", "text", "json", "none"],
    )
    def test_a_report_is_json_whatever_the_content_type(
        self, client: httpx.Client, outage: int, headers: dict[str, str]
    ) -> None:
        """The README's `curl -d '{"reference": ...}'` (a form content type) records the
        report, as POST /v1/receipts takes a sale whatever its content type."""
        response = client.post(
            f"/v1/outages/{outage}/report", content=body({"reference": "FON-123"}), headers=headers
        )
        assert response.status_code == 200, response.text
        assert response.json()["report_reference"] == "FON-123"

    def test_a_sale_is_json_whatever_the_content_type(self, client: httpx.Client) -> None:
        """The receipts endpoint keeps taking a form-typed body as JSON."""
        response = client.post("/v1/receipts", content=body(sale()), headers=FORM)
        assert response.status_code == 201, response.text

    @pytest.mark.parametrize(
        ("raw", "field", "rule"),
        [
            (b"", "(document)", "json"),
            (b"{", "(document)", "json"),
            (b"[1]", "(document)", "type-object"),
            (b'{"reference": ""}', "reference", "required"),
            (b'{"reference": "FON-1", "reference": "FON-2"}', "(document)", "duplicate-key"),
            (b'{"reference": "x", "extra": 1}', "extra", "unknown-field"),
            (b'{"end": true}', "reference", "required"),
            (b'{"reference": "x", "end": 1}', "end", "type-boolean"),
            (b'{"reference": "x", "end": "true"}', "end", "type-boolean"),
            (b'{"reference": 7}', "reference", "type-string"),
        ],
        ids=[
            "empty",
            "cut",
            "list",
            "short",
            "twice",
            "extra",
            "missing",
            "end-1",
            "end-text",
            "ref-7",
        ],
    )
    def test_a_bad_report_body_is_422_naming_the_field(
        self, client: httpx.Client, outage: int, raw: bytes, field: str, rule: str
    ) -> None:
        """Errors name the field and rule as for a sale, with any content type."""
        response = client.post(f"/v1/outages/{outage}/report", content=raw, headers=FORM)
        assert response.status_code == 422, response.text
        assert (response.json()["field"], response.json()["rule"]) == (field, rule)

    @pytest.mark.parametrize(
        ("document", "field", "rule"),
        [
            ({"reference": "BC-1", "year": "2026"}, "year", "type-integer"),
            ({"reference": "BC-1", "year": 2026.0}, "year", "type-integer"),
            ({"reference": "BC-1", "failed": "yes"}, "failed", "type-boolean"),
            ({"reference": "BC-1", "failed": 0}, "failed", "type-boolean"),
        ],
        ids=["year-text", "year-float", "failed-text", "failed-0"],
    )
    def test_a_check_body_is_as_strict_as_a_sale(
        self, client: httpx.Client, query: Query, document: Any, field: str, rule: str
    ) -> None:
        """A year or a failure given as another type is a mistake, not a value to convert:
        422 naming the field and rule, nothing recorded (a "failed": "yes" must not record a
        passing check, nor 0 a failed one)."""
        response = client.post("/v1/registers/KASSE-1/checks/start", content=body(document))
        assert response.status_code == 422, response.text
        assert (response.json()["field"], response.json()["rule"]) == (field, rule)
        assert query("SELECT count(*) FROM journal WHERE kind = 'check.done'")[0][0] == 0

    def test_a_check_body_naming_a_key_twice_is_refused(
        self, client: httpx.Client, query: Query
    ) -> None:
        """`{"failed": true, ..., "failed": false}` must not record a passing check (JSON
        parsers keep the last key): 422 duplicate-key, as for a sale; nothing recorded."""
        raw = b'{"reference":"BC-X","failed":true,"reference":"BC-Y","failed":false}'
        response = client.post("/v1/registers/KASSE-1/checks/start", content=raw)
        assert response.status_code == 422, response.text
        assert (response.json()["field"], response.json()["rule"]) == (
            "(document)",
            "duplicate-key",
        )
        assert query("SELECT count(*) FROM journal WHERE kind = 'check.done'")[0][0] == 0

    def test_a_bad_path_parameter_names_its_rule_as_a_sale_would(
        self, client: httpx.Client
    ) -> None:
        """Every 422 speaks the contract's rule names, never pydantic's (int-parsing)."""
        response = client.get("/v1/receipts/KASSE-1/abc")
        assert response.status_code == 422
        assert response.json()["rule"] == "type-integer"

    def test_a_report_body_over_one_mebibyte_is_413(
        self, client: httpx.Client, outage: int
    ) -> None:
        """Refused before parsing, as a sale is."""
        huge = b'{"reference": "' + b"x" * (1024 * 1024) + b'"}'
        response = client.post(f"/v1/outages/{outage}/report", content=huge)
        assert response.status_code == 413

    def test_the_openapi_document_still_declares_the_report_body(self, server: ApiServer) -> None:
        """The body is parsed by hand, but the document still names ReportIn as JSON."""
        document = httpx.get(f"{server.url}/openapi.json").json()
        post = document["paths"]["/v1/outages/{outage_id}/report"]["post"]
        assert post["requestBody"]["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/ReportIn"
        }
        assert document["components"]["schemas"]["ReportIn"]["required"] == ["reference"]
        assert {"409", "413", "422"} <= set(post["responses"])


class TestReportOnce:
    @pytest.mark.parametrize("end", [False, True], ids=["report", "end-report"])
    def test_a_second_reference_is_refused_naming_the_first(
        self,
        client: httpx.Client,
        service: ReceiptService,
        registry: UnitRegistry,
        outage: int,
        query: Query,
        end: bool,
    ) -> None:
        """A FinanzOnline reference is evidence: another one for the same report is 409
        `already-reported` naming the recorded one, which stays; the journal has one event."""
        url = f"/v1/outages/{outage}/report"
        if end:
            assert client.post(url, json={"reference": "FON-1"}).status_code == 200
            _end_outage(client, service, registry)
        first = client.post(url, json={"reference": "FON-A", "end": end})
        assert first.status_code == 200, first.text
        second = client.post(url, json={"reference": "FON-B", "end": end})
        assert second.status_code == 409, second.text
        problem = second.json()
        assert (problem["field"], problem["rule"]) == ("reference", "already-reported")
        assert "FON-A" in problem["message"]
        stored = client.get("/v1/outages").json()[0]
        assert stored["end_report_reference" if end else "report_reference"] == "FON-A"
        reports = query("SELECT data FROM journal WHERE kind = 'outage.reported'")
        assert [json.loads(r[0])["reference"] for r in reports] == [
            *(["FON-1"] if end else []),
            "FON-A",
        ]

    @pytest.mark.parametrize("end", [False, True], ids=["report", "end-report"])
    def test_the_same_reference_again_is_a_harmless_repeat(
        self,
        client: httpx.Client,
        service: ReceiptService,
        registry: UnitRegistry,
        outage: int,
        query: Query,
        end: bool,
    ) -> None:
        """Sending the recorded reference again (a retry) answers 200 and journals nothing."""
        url = f"/v1/outages/{outage}/report"
        if end:
            client.post(url, json={"reference": "FON-1"})
            _end_outage(client, service, registry)
        first = client.post(url, json={"reference": "FON-A", "end": end})
        again = client.post(url, json={"reference": "FON-A", "end": end})
        assert (first.status_code, again.status_code) == (200, 200)
        assert again.json() == first.json()
        reports = query("SELECT count(*) FROM journal WHERE kind = 'outage.reported'")
        assert reports[0][0] == (2 if end else 1)
