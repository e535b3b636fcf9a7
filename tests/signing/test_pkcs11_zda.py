"""A PKCS#11 unit's provider (``zda``) on a real SoftHSM2 token: an explicit ``AT100`` (a
test token) is still taken and signs development receipts; a configured provider other
than the one the till database stores for the unit is refused, and nothing is changed."""

from __future__ import annotations

import datetime as dt
import json
import secrets
import sqlite3
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

pytest.importorskip("pkcs11")

import typer
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from signing.conftest import SoftHsm
from typer.testing import CliRunner, Result

from agent.checks import development_units
from agent.cli_config import config_app
from agent.config import load_config
from agent.errors import ConfigurationError
from agent.service import TillService
from agent.signing.config import DEV_ZDA
from agent.signing.pkcs11 import create_pkcs11_key
from factories import flat, sale

pytestmark = pytest.mark.usefixtures("no_system_config")

REGISTER = "KASSE-1"
WriteFor = Callable[[str], Path]  # the configuration with unit hsm under this zda


def _certificate(public_der: bytes, path: Path) -> Path:
    """A self-signed-by-another-key certificate for the token's key, as PEM in ``path``."""
    issuer = ec.generate_private_key(ec.SECP256R1())
    subject = serialization.load_der_public_key(public_der)
    assert isinstance(subject, ec.EllipticCurvePublicKey)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "till-agent zda test unit")])
    now = dt.datetime.now(dt.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(subject)
        .serial_number(secrets.randbits(63) | 1 << 62)
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .sign(issuer, hashes.SHA256())
    )
    path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return path


@pytest.fixture(name="write")
def _write(softhsm: SoftHsm, tmp_path: Path) -> WriteFor:
    """Writes the till's configuration with its pkcs11 unit ``hsm`` (a new key on the
    SoftHSM2 token, its certificate) under the ``zda`` given; its path."""
    label = f"zda-{uuid.uuid4().hex[:12]}"
    public = create_pkcs11_key(softhsm.module, softhsm.token_label, softhsm.pin, label)
    certificate = _certificate(public, tmp_path / "hsm.crt.pem")

    def write(zda: str) -> Path:
        path = tmp_path / "till.toml"
        path.write_text(
            f'data_dir = "{tmp_path / "data"}"\n'
            "[[units]]\n"
            'id = "hsm"\nkind = "pkcs11"\n'
            f'zda = "{zda}"\n'
            f'module = "{softhsm.module}"\ntoken_label = "{softhsm.token_label}"\n'
            f'pin = "{softhsm.pin}"\nkey_label = "{label}"\n'
            f'certificate_file = "{certificate}"\n'
            '[spool]\nenabled = false\n[printer]\nkind = "none"\n'
            "[api]\nenabled = false\n[backup]\nenabled = false\n",
            encoding="utf-8",
        )
        return path

    return write


def _check(path: Path, monkeypatch: pytest.MonkeyPatch) -> Result:
    monkeypatch.setenv("COLUMNS", "200")
    app = typer.Typer()
    app.add_typer(config_app, name="config")
    return CliRunner().invoke(app, ["config", "check", "--config", str(path)])


def _started(path: Path) -> TillService:
    service = TillService(load_config(path))
    try:
        service.start()
    except BaseException:
        service.stop()  # as run_until_signal does
        raise
    return service


def _stored(data: Path) -> tuple[list[tuple[object, ...]], int]:
    """The stored units (id, zda, config) and the number of unit.stored events."""
    with sqlite3.connect(data / "till.sqlite3") as conn:
        units = conn.execute("SELECT id, zda, config FROM units ORDER BY id").fetchall()
        (events,) = conn.execute("SELECT count(*) FROM journal WHERE kind = 'unit.stored'")
    return units, int(events[0])


class TestTestToken:
    def test_an_explicit_at100_is_checked_with_a_note_and_signs_development_receipts(
        self, write: WriteFor, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """`config check` takes zda = "AT100" (exit 0) and notes that the unit signs as
        the test provider; `run` signs R1-AT100 receipts with the token, and the checks
        count the unit as a development one (its register owes no FinanzOnline step)."""
        path = write(DEV_ZDA)
        checked = _check(path, monkeypatch)
        assert checked.exit_code == 0, checked.output
        assert f"note: units.hsm: zda = '{DEV_ZDA}': a test pkcs11 unit" in flat(checked.stderr)
        service = _started(path)
        try:
            issued = service.receipts.issue(sale(register=REGISTER))
            with service.db.read_connection() as conn:
                development = development_units(conn)
        finally:
            service.stop()
        assert issued.signature_state == "signed"
        assert issued.qr.startswith(f"_R1-{DEV_ZDA}_{REGISTER}_"), issued.qr
        assert "hsm" in development


class TestStoredProvider:
    def test_another_zda_than_the_stored_one_is_refused_and_nothing_changes(
        self, write: WriteFor, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A unit an earlier configuration stored as AT100 (as a pkcs11 unit without zda
        was) and now configured as AT1: `config check` exit 3 and `run` refuses to start,
        both naming units.hsm.zda, the stored provider and the ways on; the stored unit,
        its receipts' suite and the journal stay as they were, and the stored zda starts."""
        _started(write(DEV_ZDA)).stop()
        before = _stored(tmp_path / "data")
        changed = write("AT1")
        checked = _check(changed, monkeypatch)
        assert checked.exit_code == 3, checked.output
        message = flat(checked.stderr)
        assert f"units.hsm.zda: unit hsm signs as R1-{DEV_ZDA} in the till database" in message
        assert f"set zda = '{DEV_ZDA}'" in message
        assert "[zda-stored]" in message
        with pytest.raises(ConfigurationError) as refused:
            _started(changed)
        assert str(refused.value).startswith(f"units.hsm.zda: unit hsm signs as R1-{DEV_ZDA}")
        assert "an id of its own and zda = 'AT1'" in str(refused.value)
        assert _stored(tmp_path / "data") == before
        [(_, zda, config)] = before[0]
        assert (zda, json.loads(str(config))["zda"]) == (DEV_ZDA, DEV_ZDA)
        again = _started(write(DEV_ZDA))
        try:
            issued = again.receipts.issue(sale(register=REGISTER))
        finally:
            again.stop()
        assert issued.qr.startswith(f"_R1-{DEV_ZDA}_{REGISTER}_"), issued.qr
