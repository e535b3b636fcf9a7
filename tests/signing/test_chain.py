"""The chain-service unit against the fake service on loopback: no mocks, real sockets."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from pydantic import ValidationError

from agent.at_rksv.payload import Payload, chain_value, signing_input
from agent.errors import (
    ConfigurationError,
    InvalidSignature,
    OutcomeUnknown,
    SigningError,
    UnitUnavailable,
)
from agent.fakes.chain_service import ChainServiceFake, Mode
from agent.signing import SignatureUnit, UnitConfig, open_unit, verify_rs
from agent.signing.chain import _MAYBE_SENT, _NOT_SENT, ChainServiceUnit

TOKEN = "s3cret-token"
DEADLINE = 0.4  # seconds given to calls that are expected to fail
SLACK = 0.1  # a failing call must return within DEADLINE + SLACK


def receipt(number: int, register: str = "KASSE-1") -> bytes:
    """The JWS signing input of a small receipt."""
    amounts = ("1,00", "0,00", "0,00", "0,00", "0,00")
    chain = chain_value(None, register)
    payload = Payload(
        "R1-AT1", register, str(number), "2026-03-02T11:00:00", amounts, "U1RP", "1a", chain
    )
    return signing_input(payload)


def client_id(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def soon(seconds: float = 2.0) -> float:
    return time.monotonic() + seconds


def service_key(fake: ChainServiceFake) -> ec.EllipticCurvePublicKey:
    key = fake.certificate.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)
    return key


@pytest.fixture(name="fake")
def _fake() -> Iterator[ChainServiceFake]:
    with ChainServiceFake(TOKEN, delay=2.0, hold=2.0) as fake:
        yield fake


@pytest.fixture(name="unit")
def _unit(fake: ChainServiceFake) -> Iterator[ChainServiceUnit]:
    unit = ChainServiceUnit.connect("chain", fake.url, TOKEN)
    yield unit
    unit.close()


@pytest.fixture(name="raw")
def _raw(fake: ChainServiceFake) -> Iterator[httpx.Client]:
    """A plain HTTP client for the fake, with the token."""
    with httpx.Client(base_url=fake.url, headers={"Authorization": f"Bearer {TOKEN}"}) as raw:
        yield raw


class TestSign:
    def test_signature_verifies_against_the_service_certificate(
        self, fake: ChainServiceFake, unit: ChainServiceUnit
    ) -> None:
        """The unit returns R||S that the service's certificate key verifies."""
        data = receipt(1)
        signature = unit.sign(data, deadline=soon())
        assert len(signature) == 64
        assert verify_rs(service_key(fake), data, signature)
        assert isinstance(unit, SignatureUnit)
        assert unit.identity.serial == format(fake.certificate.serial_number, "x")
        assert unit.identity.suite == "R1-AT1"
        assert unit.capabilities.keeps_chain
        assert unit.capabilities.remote

    def test_the_same_receipt_twice_is_stored_once(
        self, fake: ChainServiceFake, unit: ChainServiceUnit
    ) -> None:
        """Signing the same data again gets the stored answer; the service keeps one receipt."""
        seen = fake.requests_seen
        first = unit.sign(receipt(1), deadline=soon())
        assert unit.sign(receipt(1), deadline=soon()) == first
        assert fake.receipts_stored == 1
        assert fake.requests_seen == seen + 2

    def test_a_conflicting_client_id_is_a_clear_signing_error(
        self, unit: ChainServiceUnit, raw: httpx.Client
    ) -> None:
        """A 409 (another input under the same client id) is neither unavailable nor unknown."""
        data = receipt(1)
        path = f"/v1/registers/KASSE-1/receipts/{client_id(data)}"
        assert raw.put(path, json={"signing_input": "other.input"}).status_code == 200
        with pytest.raises(SigningError, match="different signing input") as caught:
            unit.sign(data, deadline=soon())
        assert type(caught.value) is SigningError

    def test_a_wrong_token_is_refused_clearly(self, fake: ChainServiceFake) -> None:
        """A rejected token is a known failure that names the token, for every call."""
        unit = ChainServiceUnit.connect("chain", fake.url, "wrong", certificate=fake.certificate)
        try:
            with pytest.raises(UnitUnavailable, match="refused the bearer token"):
                unit.sign(receipt(1), deadline=soon())
            with pytest.raises(UnitUnavailable, match="401 unauthorized"):
                unit.probe(deadline=soon())
            with pytest.raises(UnitUnavailable, match="401 unauthorized"):
                unit.lookup(receipt(1), deadline=soon())
        finally:
            unit.close()
        assert fake.receipts_stored == 0

    def test_a_signature_that_does_not_verify_is_refused(self, fake: ChainServiceFake) -> None:
        """A unit that trusts another certificate than the service signs with rejects it."""
        other = ChainServiceFake(TOKEN).certificate  # never started: only its certificate
        unit = ChainServiceUnit.connect("chain", fake.url, TOKEN, certificate=other)
        try:
            with pytest.raises(InvalidSignature, match="does not verify"):
                unit.sign(receipt(1), deadline=soon())
        finally:
            unit.close()

    def test_data_that_is_no_receipt_is_refused_before_sending(
        self, fake: ChainServiceFake, unit: ChainServiceUnit
    ) -> None:
        """The register comes from the payload, so other data never reaches the service."""
        seen = fake.requests_seen
        with pytest.raises(SigningError, match="not the JWS signing input"):
            unit.sign(b"hello", deadline=soon())
        assert fake.requests_seen == seen

    def test_a_passed_deadline_sends_nothing(
        self, fake: ChainServiceFake, unit: ChainServiceUnit
    ) -> None:
        """A call whose deadline is over is unavailable at once (a known outcome)."""
        seen = fake.requests_seen
        with pytest.raises(UnitUnavailable, match="deadline passed"):
            unit.sign(receipt(1), deadline=time.monotonic() - 0.01)
        assert fake.requests_seen == seen

    def test_a_slow_answer_within_the_deadline_is_used(
        self, fake: ChainServiceFake, unit: ChainServiceUnit
    ) -> None:
        """``slow`` below the deadline only delays the signature."""
        fake.delay = 0.05
        fake.mode = "slow"
        data = receipt(1)
        assert verify_rs(unit.identity.public_key(), data, unit.sign(data, deadline=soon()))


FAILURES: list[tuple[Mode, type[SigningError], bool]] = [
    ("down", UnitUnavailable, False),
    ("unreachable", UnitUnavailable, False),
    ("lose_response", OutcomeUnknown, True),
    ("lose_request", OutcomeUnknown, False),
    ("slow", OutcomeUnknown, True),
]


class TestFailureModes:
    @pytest.mark.parametrize(("mode", "error", "stored"), FAILURES)
    def test_each_mode_maps_to_its_error_within_the_deadline(
        self,
        fake: ChainServiceFake,
        unit: ChainServiceUnit,
        mode: Mode,
        error: type[SigningError],
        stored: bool,
    ) -> None:
        """Known failures are UnitUnavailable, lost answers OutcomeUnknown, and none overruns."""
        unit.sign(receipt(1), deadline=soon())  # a pooled keep-alive connection exists
        fake.mode = mode
        started = time.monotonic()
        with pytest.raises(error) as caught:
            unit.sign(receipt(2), deadline=started + DEADLINE)
        assert time.monotonic() - started <= DEADLINE + SLACK
        assert type(caught.value) is error
        assert fake.receipts_stored == (2 if stored else 1)

    def test_after_a_lost_response_the_lookup_finds_the_signature(
        self, fake: ChainServiceFake, unit: ChainServiceUnit
    ) -> None:
        """The service signed although the client never heard: lookup returns that signature."""
        data = receipt(1)
        fake.mode = "lose_response"
        with pytest.raises(OutcomeUnknown):
            unit.sign(data, deadline=time.monotonic() + DEADLINE)
        fake.mode = "up"
        found = unit.lookup(data, deadline=soon())
        assert found is not None
        assert verify_rs(service_key(fake), data, found)
        assert unit.sign(data, deadline=soon()) == found

    def test_after_a_lost_request_the_lookup_finds_nothing(
        self, fake: ChainServiceFake, unit: ChainServiceUnit
    ) -> None:
        """The service never stored it: lookup says so with ``None``."""
        data = receipt(1)
        fake.mode = "lose_request"
        with pytest.raises(OutcomeUnknown):
            unit.sign(data, deadline=time.monotonic() + DEADLINE)
        fake.mode = "up"
        assert unit.lookup(data, deadline=soon()) is None

    @pytest.mark.parametrize(("mode", "stored"), [("lose_response", 1), ("lose_request", 0)])
    def test_a_dropped_connection_is_sent_once_more(
        self, fake: ChainServiceFake, unit: ChainServiceUnit, mode: Mode, stored: int
    ) -> None:
        """A connection closed without an answer is retried once (the PUT is idempotent)."""
        fake.hold = 0.0  # close at once instead of holding until the client gives up
        fake.mode = mode
        seen = fake.requests_seen
        started = time.monotonic()
        with pytest.raises(OutcomeUnknown, match="RemoteProtocolError"):
            unit.sign(receipt(1), deadline=started + DEADLINE)
        assert time.monotonic() - started <= DEADLINE + SLACK
        assert fake.requests_seen == seen + 2
        assert fake.receipts_stored == stored

    @pytest.mark.parametrize(("then", "requests"), [("unreachable", 1), ("down", 2)])
    def test_a_refused_resend_after_a_lost_answer_stays_unknown(
        self, fake: ChainServiceFake, unit: ChainServiceUnit, then: Mode, requests: int
    ) -> None:
        """The first PUT was signed, its answer lost: a refused resend leaves it unknown."""
        data = receipt(1)
        seen = fake.requests_seen
        fake.mode = "lose_response"
        cut = threading.Thread(target=_cut_after_first_receipt, args=(fake, then))
        cut.start()
        try:
            with pytest.raises(OutcomeUnknown, match="may still be held"):
                unit.sign(data, deadline=soon())
        finally:
            cut.join()
        assert fake.requests_seen == seen + requests
        fake.mode = "up"
        assert unit.lookup(data, deadline=soon()) is not None

    def test_unreachable_then_up_serves_again_on_the_same_port(
        self, fake: ChainServiceFake, unit: ChainServiceUnit
    ) -> None:
        """The fake refuses connections while unreachable and listens again on its port."""
        port = fake.port
        unit.sign(receipt(1), deadline=soon())
        fake.mode = "unreachable"
        with pytest.raises(UnitUnavailable, match="ConnectError"):
            unit.sign(receipt(2), deadline=time.monotonic() + DEADLINE)
        fake.mode = "up"
        assert fake.port == port
        assert len(unit.sign(receipt(2), deadline=soon())) == 64
        assert fake.receipts_stored == 2


def _cut_after_first_receipt(fake: ChainServiceFake, then: Mode) -> None:
    """Once the fake has stored a receipt, switch it to ``then`` and cut its connections."""
    ends = soon()
    while fake.receipts_stored < 1 and time.monotonic() < ends:
        time.sleep(0.005)
    fake.mode = then
    fake.drop_connections()


class TestLookup:
    def test_a_signed_receipt_is_found(self, unit: ChainServiceUnit) -> None:
        """Lookup returns the signature the service gave when it signed."""
        signature = unit.sign(receipt(1), deadline=soon())
        assert unit.lookup(receipt(1), deadline=soon()) == signature

    def test_an_unknown_receipt_is_none(self, unit: ChainServiceUnit) -> None:
        """The service's "receipt-not-found" answer is ``None``."""
        unit.sign(receipt(1), deadline=soon())
        assert unit.lookup(receipt(2), deadline=soon()) is None
        assert unit.lookup(receipt(1, register="KASSE-2"), deadline=soon()) is None

    @pytest.mark.parametrize("mode", ["down", "unreachable", "lose_response", "slow"])
    def test_a_service_that_cannot_be_asked_is_unavailable(
        self, fake: ChainServiceFake, unit: ChainServiceUnit, mode: Mode
    ) -> None:
        """A GET changes nothing, so every failure to ask is UnitUnavailable, in time."""
        fake.mode = mode
        started = time.monotonic()
        with pytest.raises(UnitUnavailable):
            unit.lookup(receipt(1), deadline=started + DEADLINE)
        assert time.monotonic() - started <= DEADLINE + SLACK

    def test_a_wrong_route_is_not_taken_for_a_missing_receipt(self, fake: ChainServiceFake) -> None:
        """Only the service's own not-found answer means "not there"; a bare 404 does not."""
        unit = ChainServiceUnit.connect(
            "chain", f"{fake.url}/elsewhere", TOKEN, certificate=fake.certificate
        )
        try:
            with pytest.raises(UnitUnavailable, match="no-such-route"):
                unit.lookup(receipt(1), deadline=soon())
        finally:
            unit.close()


class TestProbe:
    def test_an_answering_service_passes(self, unit: ChainServiceUnit) -> None:
        """The probe asks /v1/health and signs nothing."""
        unit.probe(deadline=soon())

    @pytest.mark.parametrize("mode", ["down", "unreachable", "lose_request", "slow"])
    def test_a_failing_service_is_unavailable_in_time(
        self, fake: ChainServiceFake, unit: ChainServiceUnit, mode: Mode
    ) -> None:
        """Every kind of failure makes the probe fail with UnitUnavailable by the deadline."""
        fake.mode = mode
        started = time.monotonic()
        with pytest.raises(UnitUnavailable):
            unit.probe(deadline=started + DEADLINE)
        assert time.monotonic() - started <= DEADLINE + SLACK
        assert fake.receipts_stored == 0


def chain_config(fake: ChainServiceFake, tmp_path: Path, **overrides: object) -> UnitConfig:
    token_file = tmp_path / "chain.token"
    token_file.write_text(f"{TOKEN}\n")
    fields: dict[str, object] = {
        "id": "chain",
        "kind": "chain",
        "zda": "AT1",
        "url": fake.url,
        "token_file": token_file,
    }
    return UnitConfig.model_validate(fields | overrides)


class TestOpen:
    def test_open_unit_builds_a_chain_unit_from_its_config(
        self, fake: ChainServiceFake, tmp_path: Path
    ) -> None:
        """The token comes from token_file and the certificate from the service."""
        unit = open_unit(chain_config(fake, tmp_path))
        try:
            assert isinstance(unit, ChainServiceUnit)
            assert unit.identity.certificate_der == fake.certificate.public_bytes(Encoding.DER)
            assert len(unit.sign(receipt(1), deadline=soon())) == 64
        finally:
            unit.close()

    def test_a_configured_certificate_opens_the_unit_offline(
        self, fake: ChainServiceFake, tmp_path: Path
    ) -> None:
        """With certificate_file the unit opens while the service is unreachable."""
        cert_file = tmp_path / "chain.cert.pem"
        cert_file.write_bytes(fake.certificate_pem)
        fake.mode = "unreachable"
        unit = open_unit(chain_config(fake, tmp_path, certificate_file=cert_file))
        try:
            assert unit.identity.serial == format(fake.certificate.serial_number, "x")
            with pytest.raises(UnitUnavailable):
                unit.sign(receipt(1), deadline=time.monotonic() + DEADLINE)
        finally:
            unit.close()

    def test_without_certificate_an_unreachable_service_cannot_be_opened(
        self, fake: ChainServiceFake, tmp_path: Path
    ) -> None:
        """The error says how to open the unit offline."""
        fake.mode = "unreachable"
        with pytest.raises(ConfigurationError, match="certificate_file"):
            open_unit(chain_config(fake, tmp_path))

    @pytest.mark.parametrize(("content", "message"), [(None, "cannot read"), ("", "one line")])
    def test_an_unusable_token_file_is_a_configuration_error(
        self, fake: ChainServiceFake, tmp_path: Path, content: str | None, message: str
    ) -> None:
        """A missing or empty token file stops the unit from opening."""
        token_file = tmp_path / "missing.token"
        if content is not None:
            token_file.write_text(content)
        with pytest.raises(ConfigurationError, match=message):
            open_unit(chain_config(fake, tmp_path, token_file=token_file))

    @pytest.mark.parametrize(
        ("overrides", "message"),
        [
            ({"url": None}, "needs url"),
            ({"token_file": None}, "needs token_file"),
            ({"url": "ftp://example"}, "url must be"),
            ({"zda": "AT0", "key_id": "U:ATU12345678-K1"}, "open system"),
        ],
    )
    def test_a_chain_config_names_what_is_wrong(
        self, fake: ChainServiceFake, tmp_path: Path, overrides: dict[str, object], message: str
    ) -> None:
        """UnitConfig refuses an incomplete chain unit and names the field."""
        with pytest.raises(ValidationError, match=message):
            chain_config(fake, tmp_path, **overrides)


class TestFake:
    def test_it_needs_the_token_and_numbers_each_register(
        self, fake: ChainServiceFake, raw: httpx.Client
    ) -> None:
        """401 without the token; sequences count per register; a replay gets the same answer."""
        assert httpx.get(f"{fake.url}/v1/health").status_code == 401
        body = {"signing_input": "a.b"}
        first = raw.put("/v1/registers/A/receipts/x", json=body).json()
        assert raw.put("/v1/registers/A/receipts/x", json=body).json() == first
        assert raw.put("/v1/registers/A/receipts/y", json=body).json()["sequence"] == 2
        assert raw.put("/v1/registers/B/receipts/x", json=body).json()["sequence"] == 1
        assert first["sequence"] == 1
        assert raw.get("/v1/certificate").text.startswith("-----BEGIN CERTIFICATE-----")

    def test_it_runs_standalone_and_switches_modes_from_stdin(self, tmp_path: Path) -> None:
        """``python -m agent.fakes.chain_service`` prints its URL and obeys mode lines."""
        command = [sys.executable, "-m", "agent.fakes.chain_service", "--token", TOKEN]
        command += ["--key-dir", str(tmp_path / "keys")]
        with subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        ) as process:
            assert process.stdin is not None
            assert process.stdout is not None
            try:
                url = process.stdout.readline().strip()
                headers = {"Authorization": f"Bearer {TOKEN}"}
                assert httpx.get(f"{url}/v1/health", headers=headers).status_code == 200
                process.stdin.write("down\n")
                process.stdin.flush()
                assert process.stdout.readline().strip() == "mode down"
                assert httpx.get(f"{url}/v1/health", headers=headers).status_code == 503
            finally:
                process.terminate()
            assert process.wait(timeout=10) == 0
        assert (tmp_path / "keys" / "chain-fake.cert.pem").is_file()


def test_every_httpx_request_error_is_classified() -> None:
    """Each concrete httpx error is explicitly "not sent" or "maybe sent", never both."""
    leaves: list[type[BaseException]] = []
    pending: list[type[BaseException]] = [httpx.RequestError]
    while pending:
        cls = pending.pop()
        subclasses = cls.__subclasses__()
        pending.extend(subclasses)
        if not subclasses:
            leaves.append(cls)
    for leaf in leaves:
        assert (leaf in _NOT_SENT) != (leaf in _MAYBE_SENT), leaf.__name__
