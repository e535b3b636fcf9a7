"""What the README tells a POS vendor (Feeding sales; What a POS sends), held against a
real service on loopback and the contract: every status the OpenAPI document publishes
is named, the 401, 413 and 503 answers are the ones described (503 with its Retry-After),
a reprint is 202 with the copy number, the token file is private, and the examples for
change, discounts, returns and a zero total are issued, with the limits the contract has."""

from __future__ import annotations

import json
import re
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from service.conftest import quiet_config

from agent.api import _STATUSES
from agent.contract import MAX_CENTS, parse_sale
from agent.errors import InvalidSale
from agent.service import TillService
from factories import cli_run, expect, sale

README = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")


def _section(title: str) -> str:
    """The section's text with its line breaks as spaces (sentences wrap anywhere)."""
    start = README.index(f"## {title}")
    end = README.find("\n## ", start + 1)
    return " ".join(README[start:end].split())


FEEDING = _section("Feeding sales")
CONTRACT = _section("What a POS sends")
# the paragraph on change, discounts, returns and limits (empty without it: each test fails)
EXAMPLES = CONTRACT.partition("**Change, discounts, returns.**")[2].split(" The answer")[0]


@pytest.fixture(name="till")
def _till(data_dir: Path) -> Iterator[TillService]:
    """The service on the development defaults (KASSE-1), a file printer, API on port 0."""
    till = TillService(quiet_config(data_dir, printer={"kind": "file"}, api={"port": 0}))
    try:
        till.start()
        yield till
    finally:
        till.stop()


@pytest.fixture(name="base")
def _base(till: TillService) -> str:
    assert till.api is not None
    return f"http://127.0.0.1:{till.api.port}"


@pytest.fixture(name="client")
def _client(till: TillService, base: str) -> Iterator[httpx.Client]:
    token = (till.config.data_dir / "api-token").read_text().strip()
    auth = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=base, headers=auth, timeout=10.0) as client:
        yield client


class TestStatuses:
    def test_every_status_of_the_openapi_document_is_named(self, base: str) -> None:
        """The document needs no token, and each status it publishes for a route is in
        the README's section (a new one cannot come without a word for the POS)."""
        response = httpx.get(f"{base}/openapi.json")
        assert response.status_code == 200
        assert "`/openapi.json` needs none" in FEEDING
        paths = response.json()["paths"].values()
        codes = {code for path in paths for op in path.values() for code in op["responses"]}
        assert {"202", "401", "413", "503"} <= codes
        assert [code for code in sorted(codes) if not re.search(rf"\b{code}\b", FEEDING)] == []

    def test_the_401_is_the_one_described(self, base: str) -> None:
        answer = httpx.get(f"{base}/v1/status", headers={"Authorization": "Bearer wrong"})
        error = answer.json()
        assert answer.status_code == 401
        assert f'401 `{{"field": "{error["field"]}", "rule": "{error["rule"]}", ...}}`' in FEEDING

    def test_a_body_over_a_mebibyte_is_413_max_size(self, client: httpx.Client) -> None:
        answer = client.post("/v1/receipts", content=b"{" + b" " * (1 << 20) + b"}")
        assert answer.status_code == 413
        assert f"413 (`{answer.json()['rule']}`) for a body over 1 MiB" in FEEDING

    def test_a_receipt_that_must_be_signed_is_503_with_retry_after(
        self, client: httpx.Client, data_dir: Path
    ) -> None:
        """The unit down: a sale takes the fallback signature, the Sammelbeleg of the
        outage it opened waits (503, ``waits-for-unit``, ``Retry-After``); the README names
        every 503 rule the API has."""
        expect(cli_run()("simulate", "unit", "down", "--data-dir", data_dir), 0)
        issued = client.post("/v1/receipts", json=sale())
        assert (issued.status_code, issued.json()["signature_state"]) == (201, "fallback")
        waits = client.post("/v1/registers/KASSE-1/zero-receipt", json={"request_id": "z-1"})
        assert (waits.status_code, waits.json()["rule"]) == (503, "waits-for-unit")
        assert f"503 with `Retry-After: {waits.headers['Retry-After']}`" in FEEDING
        rules = [rule for _, status, _, rule in _STATUSES if status == 503]
        assert [rule for rule in rules if f"`{rule}`" not in FEEDING] == []

    def test_a_reprint_is_202_with_the_copy_number(self, client: httpx.Client) -> None:
        client.post("/v1/receipts", json=sale()).raise_for_status()
        answers = [client.post("/v1/receipts/KASSE-1/2/reprint") for _ in range(2)]
        assert [(a.status_code, a.json()) for a in answers] == [
            (202, {"copy": 1}),
            (202, {"copy": 2}),
        ]
        assert '202 `{"copy": N}`' in FEEDING
        assert "the first reprint is copy 1" in FEEDING

    def test_the_token_file_is_the_service_users_alone(self, till: TillService) -> None:
        mode = stat.S_IMODE((till.config.data_dir / "api-token").stat().st_mode)
        assert f"mode {mode:04o}" in FEEDING


def _fragments() -> list[Any]:
    """The JSON the README's paragraph gives in backticks (an object, or objects)."""
    return [json.loads(f"[{text}]") for text in re.findall(r"`(\{[^`]*\})`", EXAMPLES)]


def _line(price: str, qty: str = "1", vat: str = "normal") -> dict[str, str]:
    return {"text": "X", "qty": qty, "unit_price": price, "vat": vat}


def _pay(*amounts: str) -> list[dict[str, str]]:
    return [{"method": "cash", "amount": amount} for amount in amounts]


class TestSaleExamples:
    def test_change_discount_return_and_zero_total_are_issued(self, client: httpx.Client) -> None:
        assert len(_fragments()) == 2, EXAMPLES
        change, (discount,) = _fragments()
        assert "20.00 paid for 16.70" in EXAMPLES
        assert '"qty": "-1"` of 2.10, `"amount": "-2.10"`' in EXAMPLES
        assert '`"0.00"` paid' in EXAMPLES
        sales = [
            sale(request_id="change", lines=[_line("16.70")], payments=change),
            sale(request_id="discount", lines=[_line("10.00"), discount], payments=_pay("8.00")),
            sale(request_id="return", lines=[_line("2.10", "-1")], payments=_pay("-2.10")),
            sale(request_id="zero", lines=[_line("0.00")], payments=_pay("0.00")),
        ]
        answers = [client.post("/v1/receipts", json=document) for document in sales]
        assert [a.status_code for a in answers] == [201] * 4, [a.text for a in answers]

    def test_paying_more_without_change_is_refused(self, client: httpx.Client) -> None:
        answer = client.post("/v1/receipts", json=sale(lines=[_line("16.70")], payments=_pay("20")))
        assert (answer.status_code, answer.json()["rule"]) == (422, "sum-matches-lines")
        assert "refused with `sum-matches-lines`" in EXAMPLES

    def test_the_limits_are_the_contracts(self) -> None:
        money, qty = map(
            int,
            re.findall(
                r"Money has at most (\d+) digits before the point and 2 after it, a quantity at"
                r" most (\d+) and 3",
                EXAMPLES,
            )[0],
        )
        widest, most = "1" + "0" * (money - 1), "1" + "0" * (qty - 1)  # within max-amount
        parse_sale(sale(lines=[_line(widest)], payments=_pay(widest)))
        parse_sale(sale(lines=[_line("0.01", most)], payments=_pay(f"{int(most) // 100}.00")))
        for field, too_long in [
            ("lines.0.unit_price", sale(lines=[_line("1" * (money + 1))])),
            ("lines.0.qty", sale(lines=[_line("1", "1" * (qty + 1))])),
        ]:
            with pytest.raises(InvalidSale) as refused:
                parse_sale(too_long)
            assert (refused.value.field, refused.value.rule) == (field, "format")
        assert f"at most {MAX_CENTS // 100:,} euros (`max-amount`)" in EXAMPLES
