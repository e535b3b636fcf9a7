"""The official scenarios replayed through the receipt service, and the e2e vectors."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import pytest

from agent.at_rksv import amount_to_cents, split_jws
from agent.at_rksv.verify import verify_files
from agent.export import count_receipts, export_container, export_dep
from agent.receipts import RegisterSetup
from agent.signing.flaky import FlakyUnit
from agent.signing.registry import UnitRegistry
from agent.simulate import run_scenario
from factories import add_unit, load_json, make_service, require_vectors, write_e2e_unit
from storage import TillDB, open_till_db

VECTORS = require_vectors(module=True)  # every test replays a vector: else skipped
SCENARIOS = sorted((VECTORS / "official").glob("TESTSUITE_TEST_SZENARIO_*.json"))
KAT = load_json(VECTORS / "kat" / "kat_turnover_counter.json")
KINDS = {"START": "start", "STANDARD": "standard", "STORNO": "storno", "TRAINING": "training"}


def _kat(label: str, length: int) -> list[dict[str, object]]:
    scenario = next(s for s in KAT["scenarios"] if s["simulationRunLabel"] == label)
    return list(scenario["byLength"][str(length)])


class TestOfficialScenarios:
    @pytest.mark.parametrize("closed", [False, True], ids=["open", "closed"])
    @pytest.mark.parametrize("length", [8, 5])
    @pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda p: p.stem[-1])
    def test_replayed_dep_verifies_and_matches_the_known_answers(
        self, scenario: Path, length: int, closed: bool, tmp_path: Path
    ) -> None:
        """Every scenario, damaged devices included, gives a DEP our verifier accepts, and
        every receipt's amounts and counter field equal the bit-exact known answers."""
        result = run_scenario(scenario, tmp_path, closed=closed, counter_bytes=length)
        report = verify_files(result.dep_file, result.container_file)
        assert report.ok, report.findings[:3]
        dep = load_json(result.dep_file)
        jws = [j for group in dep["Belege-Gruppe"] for j in group["Belege-kompakt"]]
        expected = _kat(load_json(scenario)["simulationRunLabel"], length)
        assert len(jws) == len(expected)
        for token, answer in zip(jws, expected, strict=True):
            payload, _, _ = split_jws(token)
            assert payload.receipt_id == answer["receiptIdentifier"]
            assert list(payload.amounts) == answer["amounts"]
            assert payload.counter == answer["standUmsatzZaehlerField"]
            assert payload.suite == ("R1-AT0" if closed else "R1-AT1")
        assert result.fallback == sum(1 for a in expected if a["signatureDeviceDamaged"])


def _replay_e2e(case: str, tmp_path: Path) -> TillDB:
    expected = load_json(VECTORS / case / "expected.json")
    db = open_till_db(tmp_path / "data")
    registry = UnitRegistry()
    add_unit(db, registry, write_e2e_unit(tmp_path, case))
    flaky = FlakyUnit(registry.get(None, "e2e"))  # type: ignore[arg-type]
    registry.put(flaky)
    service = make_service(db, registry)
    setup = RegisterSetup(
        expected["cashBoxId"], ["e2e"], aes_key=base64.b64decode(expected["base64AESKey"])
    )
    kinds = {"START": "start", "STANDARD": "standard", "STORNO": "storno", "TRAINING": "training"}
    for number, item in enumerate(expected["receipts"], start=1):
        fields = item["payload"].split("_")
        flaky.mode = "down" if item["signatureDeviceDamaged"] else "up"
        args = {"receipt_id": item["receiptIdentifier"], "issued_at": fields[4]}
        if number == 1:
            result = service.init_register(setup, **args)
        else:
            amounts = tuple(amount_to_cents(a) for a in fields[5:10])
            kind = kinds.get(item["type"], "sammelbeleg" if "Sammel" in item["label"] else "null")
            result = service.issue_special(setup.register_id, kind, amounts=amounts, **args)  # type: ignore[arg-type]
        assert (result.jws, result.qr, result.ocr) == (item["jws"], item["qr"], item["ocr"])
    return db


class TestEndToEndVectors:
    @pytest.mark.parametrize("case", ["e2e_open", "e2e_closed"])
    def test_receipt_service_reproduces_the_dep_byte_for_byte(
        self, case: str, tmp_path: Path
    ) -> None:
        """Driven with the vector's key, dates and numbers, the service issues the same JWS,
        QR and OCR for every receipt, and the export equals the vector DEP and container."""
        db = _replay_e2e(case, tmp_path)
        try:
            buffer = io.StringIO()
            export_dep(db, "DEMO-KASSE-1", buffer)
            container = export_container(db, "DEMO-KASSE-1")
        finally:
            db.close()
        assert buffer.getvalue() == (VECTORS / case / "dep-export.json").read_text()
        assert container == (VECTORS / case / "cryptographicMaterialContainer.json").read_text()

    def test_export_of_a_date_range_keeps_only_those_days(self, tmp_path: Path) -> None:
        """--from/--to select receipts by their local date, inclusive."""
        import datetime as dt

        db = _replay_e2e("e2e_open", tmp_path)
        day = dt.date(2026, 1, 31)
        written: list[None] = []
        try:
            buffer = io.StringIO()
            count = export_dep(
                db,
                "DEMO-KASSE-1",
                buffer,
                start=day,
                end=day,
                on_receipt=lambda: written.append(None),
            )
            counted = count_receipts(db, "DEMO-KASSE-1", start=day, end=day)
            everything = count_receipts(db, "DEMO-KASSE-1")
        finally:
            db.close()
        assert count == counted == len(written) == 1  # the progress total and ticks agree
        assert everything > 1
        assert "2026-01-31" in split_jws(load_json_text(buffer.getvalue()))[0].issued_at


def load_json_text(text: str) -> str:
    import json

    return str(json.loads(text)["Belege-Gruppe"][0]["Belege-kompakt"][0])
