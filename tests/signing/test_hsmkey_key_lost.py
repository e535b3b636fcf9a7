"""A key that leaves the token and comes back while its unit is open, against real SoftHSM2.

Another process deletes the key (its private and public objects) from the token and
imports it again under its label, as a restore from key escrow does; the open unit's
object handle then fails (``CKR_OBJECT_HANDLE_INVALID``). The unit looks the key up
again by its label and takes it only if it is its own key: the probe passes only when
``sign`` works, and another key under the label leaves the unit failed, saying so.
"""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("pkcs11")

from conftest import REGISTER, UNIT
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from agent.api_backend import ServiceBackend
from agent.at_rksv.verify import verify_dep
from agent.clock import FrozenClock
from agent.errors import UnitUnavailable
from agent.export import export_container, export_dep
from agent.probe import Backoff, Prober
from agent.receipts import ReceiptService
from agent.signing import SignatureUnit, UnitConfig, open_unit, sign_verified
from factories import sale

DATA = b"eyJhbGciOiJFUzI1NiJ9.X1IxLUFUMF9LQVNTRS0xXzE"

# Run by another interpreter: what a key-escrow restore or an HSM admin does to the token.
# Usage: MODULE TOKEN PIN delete LABEL | MODULE TOKEN PIN import LABEL KEY.pem [private-only]
TOKEN_TOOL = """
import sys
import pkcs11
from cryptography.hazmat.primitives import serialization as s
from pkcs11 import Attribute as A
from pkcs11.util.ec import decode_ec_private_key, decode_ec_public_key

module, token, pin, action, label = sys.argv[1:6]
session = pkcs11.lib(module).get_token(token_label=token).open(rw=True, user_pin=pin)
if action == "delete":
    for found in list(session.get_objects({A.LABEL: label})):
        found.destroy()
else:
    key = s.load_pem_private_key(open(sys.argv[6], "rb").read(), None)
    der = key.private_bytes(s.Encoding.DER, s.PrivateFormat.TraditionalOpenSSL, s.NoEncryption())
    private = decode_ec_private_key(der)
    private.update({A.LABEL: label, A.TOKEN: True, A.SIGN: True, A.SENSITIVE: True,
                    A.EXTRACTABLE: False, A.PRIVATE: True})
    session.create_object(private)
    if sys.argv[7:] != ["private-only"]:
        spki = key.public_key().public_bytes(s.Encoding.DER, s.PublicFormat.SubjectPublicKeyInfo)
        public = decode_ec_public_key(spki)
        public.update({A.LABEL: label, A.TOKEN: True, A.VERIFY: True})
        session.create_object(public)
session.close()
"""


def soon() -> float:
    return time.monotonic() + 5


def key_file(directory: Path) -> Path:
    """A new P-256 key as an unencrypted PEM file (the escrow copy of a token key)."""
    key = ec.generate_private_key(ec.SECP256R1())
    path = directory / f"{uuid.uuid4().hex[:8]}.pem"
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return path


class Token:
    """The test token as another process sees it: keys deleted and imported under a label."""

    def __init__(self, softhsm: Any) -> None:
        self.softhsm = softhsm

    def _run(self, *args: str | Path) -> None:
        hsm = self.softhsm
        command = [sys.executable, "-c", TOKEN_TOOL, str(hsm.module), hsm.token_label, hsm.pin]
        done = subprocess.run(
            [*command, *map(str, args)], capture_output=True, text=True, timeout=60, check=False
        )
        assert done.returncode == 0, done.stderr

    def delete(self, label: str) -> None:
        self._run("delete", label)

    def put(self, label: str, pem: Path, *, public: bool = True) -> None:
        self._run("import", label, pem, *(() if public else ("private-only",)))


def pkcs11_config(softhsm: Any, label: str, unit_id: str = "hsm1") -> UnitConfig:
    return UnitConfig(
        id=unit_id,
        kind="pkcs11",
        module=softhsm.module,
        token_label=softhsm.token_label,
        pin=softhsm.pin,
        key_label=label,
        zda="AT0",
        key_id=f"U:ATU12345678-{unit_id.upper()}",
    )


@pytest.fixture(name="token")
def _token(softhsm: Any) -> Token:
    return Token(softhsm)


@pytest.fixture(name="label")
def _label() -> str:
    return f"escrow-{uuid.uuid4().hex[:12]}"


@pytest.fixture(name="pem")
def _pem(token: Token, label: str, tmp_path: Path) -> Path:
    """The key of the unit: imported on the token under ``label``, kept as a PEM file."""
    path = key_file(tmp_path)
    token.put(label, path)
    return path


@pytest.fixture(name="unit")
def _unit(softhsm: Any, label: str, pem: Path) -> Iterator[SignatureUnit]:
    unit = open_unit(pkcs11_config(softhsm, label))
    yield unit
    unit.close()


class TestKeyPutBack:
    def test_the_probe_passes_when_sign_works_again(
        self, unit: SignatureUnit, token: Token, label: str, pem: Path
    ) -> None:
        """Gone, the probe and sign fail, naming the label; put back, both work at once."""
        token.delete(label)
        with pytest.raises(UnitUnavailable, match=rf"{label}'.*no key with this label"):
            unit.probe(deadline=soon())
        with pytest.raises(UnitUnavailable, match="no key with this label"):
            unit.sign(DATA, deadline=soon())
        token.put(label, pem)
        unit.probe(deadline=soon())
        assert len(sign_verified(unit, DATA, timeout=5)) == 64

    def test_a_key_put_back_between_two_signatures_signs_the_second(
        self, unit: SignatureUnit, token: Token, label: str, pem: Path
    ) -> None:
        """The handle fails, the key is found again under its label and the same call signs."""
        assert len(sign_verified(unit, DATA, timeout=5)) == 64
        token.delete(label)
        token.put(label, pem)
        assert len(sign_verified(unit, DATA, timeout=5)) == 64
        unit.probe(deadline=soon())

    def test_a_probe_after_the_key_was_put_back_finds_it(
        self, unit: SignatureUnit, token: Token, label: str, pem: Path
    ) -> None:
        """No sale in between: the probe meets the dead handle itself and passes."""
        token.delete(label)
        token.put(label, pem)
        unit.probe(deadline=soon())
        assert len(sign_verified(unit, DATA, timeout=5)) == 64


class TestAnotherKey:
    def test_another_key_under_the_label_leaves_the_unit_failed(
        self, unit: SignatureUnit, token: Token, label: str, pem: Path, tmp_path: Path
    ) -> None:
        """Its receipts would not verify: every probe and sign fails with the mismatch, until
        the unit's own key is back."""
        token.delete(label)
        token.put(label, key_file(tmp_path))
        for _ in range(2):
            with pytest.raises(UnitUnavailable, match=rf"holds another key '{label}'"):
                unit.probe(deadline=soon())
        with pytest.raises(UnitUnavailable, match="holds another key"):
            unit.sign(DATA, deadline=soon())
        token.delete(label)
        token.put(label, pem)
        unit.probe(deadline=soon())
        assert len(sign_verified(unit, DATA, timeout=5)) == 64

    def test_another_key_without_a_public_key_fails_the_test_signature(
        self, unit: SignatureUnit, token: Token, label: str, tmp_path: Path
    ) -> None:
        """Without a public-key object to compare, the test signature tells the keys apart."""
        token.delete(label)
        token.put(label, key_file(tmp_path), public=False)
        with pytest.raises(UnitUnavailable, match="holds another key"):
            unit.probe(deadline=soon())
        with pytest.raises(UnitUnavailable, match="holds another key"):
            unit.sign(DATA, deadline=soon())


class TestOutage:
    """The register's service, its outage and its prober, as `till-agent run` has them."""

    @pytest.fixture(name="unit_config")
    def _unit_config(self, softhsm: Any, label: str, pem: Path) -> UnitConfig:
        """The register's unit (conftest's ``service`` sets it up) is the escrowed key."""
        return pkcs11_config(softhsm, label, UNIT)

    def test_the_sammelbeleg_closes_the_outage_without_a_restart(
        self, service: ReceiptService, token: Token, label: str, pem: Path, clock: FrozenClock
    ) -> None:
        """While the key is gone the status says why the probe fails; once it is back the
        probe passes, recovery signs the Sammelbeleg and the DEP verifies."""
        prober = Prober(service, Backoff(initial=5.0, cap=60.0, jitter=0.0))
        assert service.issue(sale(request_id="before")).signature_state == "signed"
        token.delete(label)
        assert service.issue(sale(request_id="gone")).signature_state == "fallback"
        _probe_for(30, clock, prober)
        [register] = ServiceBackend(service).status().registers
        assert register.open_outage is not None
        assert register.open_outage.unit_problem is not None
        assert f"key '{label}': no key with this label" in register.open_outage.unit_problem

        token.put(label, pem)
        _probe_for(60, clock, prober)
        [register] = ServiceBackend(service).status().registers
        assert register.open_outage is None
        [outage] = ServiceBackend(service).outages()
        assert outage.sammelbeleg_number == 4  # Startbeleg, before, gone, Sammelbeleg
        assert service.issue(sale(request_id="after")).signature_state == "signed"
        buffer = io.StringIO()
        export_dep(service.db, REGISTER, buffer)
        container = json.loads(export_container(service.db, REGISTER))
        report = verify_dep(json.loads(buffer.getvalue()), container)
        assert [f"{f.receipt}: {f.rule}" for f in report.findings] == []

    def test_another_key_keeps_the_outage_open_and_says_so(
        self,
        service: ReceiptService,
        token: Token,
        label: str,
        clock: FrozenClock,
        tmp_path: Path,
    ) -> None:
        """No Sammelbeleg is signed with a key that is not the register's unit's."""
        prober = Prober(service, Backoff(initial=5.0, cap=60.0, jitter=0.0))
        token.delete(label)
        token.put(label, key_file(tmp_path))
        assert service.issue(sale(request_id="other")).signature_state == "fallback"
        _probe_for(120, clock, prober)
        [register] = ServiceBackend(service).status().registers
        assert register.open_outage is not None
        assert register.open_outage.recovery_failed is None  # the probe never passed
        assert register.open_outage.unit_problem is not None
        assert f"holds another key '{label}'" in register.open_outage.unit_problem


def _probe_for(seconds: int, clock: FrozenClock, prober: Prober) -> None:
    for _ in range(seconds):
        clock.advance(1)
        prober.run_once()


class TestProbeLog:
    def test_a_reason_is_logged_once_per_change(
        self,
        unit: SignatureUnit,
        token: Token,
        label: str,
        pem: Path,
        tmp_path: Path,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """Five failing probes with one reason log it once; a new reason is logged, and so
        is the first probe that passes."""
        caplog.set_level(logging.INFO, logger="agent.signing.pkcs11")
        token.delete(label)
        for _ in range(5):
            with pytest.raises(UnitUnavailable):
                unit.probe(deadline=soon())
        token.put(label, key_file(tmp_path))
        for _ in range(3):
            with pytest.raises(UnitUnavailable):
                unit.probe(deadline=soon())
        token.delete(label)
        token.put(label, pem)
        unit.probe(deadline=soon())
        unit.probe(deadline=soon())
        probes = [r for r in caplog.records if "probe" in r.getMessage()]
        assert [(r.levelname, _reason(r.getMessage())) for r in probes] == [
            ("WARNING", "no key with this label"),
            ("WARNING", "holds another key"),
            ("INFO", "answers its probe again"),
        ]


def _reason(message: str) -> str:
    for reason in ("no key with this label", "holds another key", "answers its probe again"):
        if reason in message:
            return reason
    return message
