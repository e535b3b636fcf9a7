"""``till-agent unit switch`` to a PKCS#11 unit: a register whose software unit failed for
good goes on with a key on a SoftHSM2 token (a real token), added with ``unit
add-pkcs11``; its test signature, the Sammelbeleg and the next sale are the token's."""

from __future__ import annotations

import json
import sqlite3
import uuid
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("pkcs11")

from cryptography.hazmat.primitives import serialization
from signing.test_pkcs11 import make_certificate, write_certificate

from agent.at_rksv.verify import verify_files
from agent.signing.pkcs11 import create_pkcs11_key
from factories import cli_run, expect, load_json, sale

REGISTER = "K3"


def test_a_register_switches_to_a_token_and_its_dep_verifies(
    softhsm: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("TILL_AGENT_DATA_DIR", "TILL_AGENT_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    data_dir, run = tmp_path / "data", cli_run()

    def till(*args: str | Path, code: int = 0, input: str | None = None) -> str:
        return str(expect(run(*args, "--data-dir", data_dir, input=input), code).stdout)

    till("unit", "create-software", "--id", "u1", "--zda", "AT1", "--simulate")
    till("init", REGISTER, "--unit", "u1")
    till("simulate", "unit", "down", "--unit", "u1")
    issued = json.loads(till("issue", "-", "--json", input=json.dumps(sale(register=REGISTER))))
    assert issued["signature_state"] == "fallback"

    label = f"switch-{uuid.uuid4().hex[:8]}"
    public_der = create_pkcs11_key(softhsm.module, softhsm.token_label, softhsm.pin, label)
    cert = write_certificate(
        make_certificate(public_der), tmp_path / "hsm.pem", serialization.Encoding.PEM
    )
    pin_file = tmp_path / "pin"
    pin_file.write_text(softhsm.pin)
    pin_file.chmod(0o600)
    token = ("--module", softhsm.module, "--token-label", softhsm.token_label)
    key = ("--key-label", label, "--pin-file", pin_file, "--certificate", cert, "--zda", "AT1")
    till("unit", "add-pkcs11", "--id", "hsm", *token, *key)

    switched = json.loads(till("unit", "switch", REGISTER, "hsm", "--json"))
    assert (switched["added"], switched["from_number"], switched["waiting"]) == (True, 3, True)
    recovered = json.loads(till("outage", "recover", REGISTER, "--json"))
    assert recovered["issued"] == [{"number": 3, "kind": "sammelbeleg", "state": "signed"}]
    later = sale(register=REGISTER, request_id="req-2")
    after = json.loads(till("issue", "-", "--json", input=json.dumps(later)))
    assert after["signature_state"] == "signed"

    conn = sqlite3.connect(data_dir / "till.sqlite3")
    try:
        units = conn.execute("SELECT number, unit_id FROM receipts ORDER BY number").fetchall()
    finally:
        conn.close()
    assert units == [(1, "u1"), (2, "u1"), (3, "hsm"), (4, "hsm")]
    dep, container = tmp_path / "dep.json", tmp_path / "container.json"
    till("export", "dep", "--register", REGISTER, "-o", dep)
    till("export", "crypto-container", "--register", REGISTER, "-o", container)
    report = verify_files(dep, container)
    assert report.ok, report.findings
    assert [len(g["Belege-kompakt"]) for g in load_json(dep)["Belege-Gruppe"]] == [2, 2]
