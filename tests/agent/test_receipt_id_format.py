"""``receipt_id_format``: only formats that give every receipt an id of its own, which
``check_id`` accepts for every number (init and the configuration apply one rule)."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import UNIT, WriteConfig

from agent.config import load_config
from agent.errors import ConfigurationError, InvalidSale
from agent.receipts import ReceiptService, RegisterSetup
from agent.registers import RECEIPT_ID_FORMAT_RULE, check_receipt_id_format

Query = Callable[..., list[sqlite3.Row]]

REFUSED = [
    pytest.param("{number:.1e}", id="exponent: 100 and 101 share an id"),
    pytest.param("{number:_}", id="grouping: '_' from 1000 on"),
    pytest.param("{number:,}", id="grouping-comma"),
    pytest.param("{number:x}", id="hex"),
    pytest.param("{number:6}", id="width-without-d"),
    pytest.param("{number:021d}", id="too-wide"),
    pytest.param("{number:0d}", id="width-0"),
    pytest.param("{number}{number}", id="twice"),
    pytest.param("{{number}}", id="escaped: no number"),
    pytest.param("B{number}}}", id="brace-in-text"),
    pytest.param("A_{number}", id="underscore"),
    pytest.param("\t{number}", id="not-printable"),
    pytest.param("X" * 45 + "{number}", id="text-too-long"),
    pytest.param("X", id="no-number"),
    pytest.param("{nr}", id="unknown-key"),
    pytest.param("", id="empty"),
]

ALLOWED = [
    "{number}",
    "B{number:06d}",
    "R {number:4d}/2026",
    "{number:020d}",
    "X" * 44 + "{number}",
]


class TestRule:
    @pytest.mark.parametrize("value", REFUSED)
    def test_a_format_that_could_repeat_or_break_an_id_is_refused(self, value: str) -> None:
        """The refusal names the field and shows the allowed forms."""
        with pytest.raises(InvalidSale) as refused:
            check_receipt_id_format(value)
        assert (refused.value.field, refused.value.rule) == ("receipt_id_format", "format")
        assert RECEIPT_ID_FORMAT_RULE in refused.value.message
        assert "{number:0Nd}" in refused.value.message

    @pytest.mark.parametrize("value", ALLOWED)
    def test_an_allowed_format_gives_every_number_an_id_of_its_own(self, value: str) -> None:
        """Numbers around each power of ten (where '.1e' and '_' broke) give distinct,
        valid ids."""
        check_receipt_id_format(value)
        numbers = [n for p in range(1, 20) for n in (10**p - 1, 10**p, 10**p + 1)]
        ids = [value.format(number=n) for n in numbers]
        assert len(set(ids)) == len(ids)
        assert all("_" not in i and i.isprintable() and len(i) <= 64 for i in ids)


class TestInit:
    @pytest.mark.parametrize("value", ["{number:.1e}", "{number:_}"])
    def test_init_refuses_it_and_creates_nothing(
        self, bare_service: ReceiptService, query: Query, value: str
    ) -> None:
        """``init --receipt-id-format``: an InvalidSale naming the field, no register."""
        with pytest.raises(InvalidSale) as refused:
            bare_service.init_register(RegisterSetup("K-2", [UNIT], receipt_id_format=value))
        assert (refused.value.field, refused.value.rule) == ("receipt_id_format", "format")
        assert query("SELECT * FROM registers") == []

    def test_a_padded_format_numbers_the_startbeleg(self, bare_service: ReceiptService) -> None:
        """The Startbeleg (number 1) carries the formatted id."""
        setup = RegisterSetup("K-2", [UNIT], receipt_id_format="B{number:06d}")
        assert bare_service.init_register(setup).receipt_id == "B000001"


class TestConfig:
    @pytest.mark.usefixtures("no_system_config")
    @pytest.mark.parametrize("value", ["{number:.1e}", "{number:_}", "{number:x}"])
    def test_a_format_that_loaded_before_still_loads(
        self, write_config: WriteConfig, value: str
    ) -> None:
        """A till configured so before the rule keeps starting: its register keeps the
        format it was created with. `run` and `config check` refuse it for a new register
        (tests/service/test_config_check_register.py)."""
        path: Path = write_config(f"[register]\nreceipt_id_format = {value!r}\n")
        assert load_config(path, env={}).register_.receipt_id_format == value

    @pytest.mark.usefixtures("no_system_config")
    @pytest.mark.parametrize(("value", "rule"), [("{nr}", "format"), ("A_{number}", "id-format")])
    def test_a_format_that_cannot_number_is_refused_at_load(
        self, write_config: WriteConfig, value: str, rule: str
    ) -> None:
        path: Path = write_config(f"[register]\nreceipt_id_format = {value!r}\n")
        with pytest.raises(ConfigurationError) as refused:
            load_config(path, env={})
        message = str(refused.value)
        assert message.startswith("register.receipt_id_format: ")
        assert f"[{rule}]" in message
        assert f"(from {path})" in message
