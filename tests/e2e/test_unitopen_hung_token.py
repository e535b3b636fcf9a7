"""A PKCS#11 token that hangs, under `till-agent run`: the till keeps issuing receipts.

The unit is a real SoftHSM2 token behind ``slowhsm_shim.c``, a PKCS#11 module that
stops answering ``C_Login`` (or ``C_Sign``) while a file exists, as a network HSM does
when its link is cut: the call neither fails nor returns. A token that hangs while the
unit is opened at start must not block the sales (API and spool): they get fallback
receipts within the signing deadline, the outage is open and shown, and once the token
answers the probe opens the unit and the Sammelbeleg closes the outage. A SIGTERM while
``C_Sign`` hangs ends the process within seconds, exit 0, with nothing lost.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import secrets
import shutil
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from e2e.harness import TILL_AGENT, Agent, Launch, read_receipts
from factories import sale

SHIM_SOURCE = Path(__file__).resolve().parent / "slowhsm_shim.c"
SOFTHSM_MODULE = Path(os.environ.get("SOFTHSM2_MODULE", "/usr/lib/softhsm/libsofthsm2.so"))
SIGN_TIMEOUT = 2.0  # sign_timeout_s: the deadline of signing, and of opening the unit
REGISTER = "KASSE-1"


@pytest.fixture(name="shim", scope="module")
def _shim(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The hanging PKCS#11 module, compiled with the machine's C compiler."""
    compiler = shutil.which("gcc") or shutil.which("cc")
    if compiler is None:  # pragma: no cover - .ci/run installs gcc
        pytest.skip("the hanging-token tests build a small PKCS#11 module: apt-get install gcc")
    if shutil.which("softhsm2-util") is None or not SOFTHSM_MODULE.is_file():
        pytest.skip("SoftHSM2 is not installed: apt-get install softhsm2")
    library = tmp_path_factory.mktemp("slowhsm") / "libslowhsm.so"
    flags = ["-O2", "-Wall", "-Wextra", "-Werror", "-shared", "-fPIC"]
    subprocess.run([compiler, *flags, "-o", str(library), str(SHIM_SOURCE), "-ldl"], check=True)
    return library


@dataclass(frozen=True)
class Token:
    """A SoftHSM2 token with key ``k1``, reached through the hanging module ``shim``."""

    shim: Path
    conf: Path
    switches: Path  # where hang-login, hang-sign, ... are created
    certificate: Path

    def env(self) -> dict[str, str]:
        return {
            "SOFTHSM2_CONF": str(self.conf),
            "SLOWHSM_DIR": str(self.switches),
            "SLOWHSM_MODULE": str(SOFTHSM_MODULE),
        }

    def hang(self, call: str) -> None:
        """From now on ``call`` (login, sign, open, find) does not return."""
        (self.switches / f"hang-{call}").touch()

    def answer(self, call: str) -> None:
        """``call`` answers again (a hung one returns now)."""
        (self.switches / f"hang-{call}").unlink(missing_ok=True)


@pytest.fixture(name="token")
def _token(tmp_path: Path, shim: Path) -> Iterator[Token]:
    conf = tmp_path / "softhsm2.conf"
    (tmp_path / "tokens").mkdir()
    conf.write_text(
        f"directories.tokendir = {tmp_path / 'tokens'}\nobjectstore.backend = file\n"
        "log.level = ERROR\n"
    )
    switches = tmp_path / "switches"
    switches.mkdir()
    token = Token(shim, conf, switches, tmp_path / "unit.pem")
    env = {**os.environ, **token.env()}
    init = ["--init-token", "--free", "--label", "till", "--so-pin", "1234", "--pin", "5678"]
    subprocess.run(["softhsm2-util", *init], env=env, check=True, capture_output=True)
    # the key is made in a process of its own: this one never loads a PKCS#11 module
    script = (
        "from agent.signing.pkcs11 import create_pkcs11_key;"
        f"print(create_pkcs11_key({str(SOFTHSM_MODULE)!r}, 'till', '5678', 'k1').hex())"
    )
    made = subprocess.run(
        [sys.executable, "-c", script], env=env, check=True, capture_output=True, text=True
    )
    token.certificate.write_bytes(_certificate(bytes.fromhex(made.stdout.strip())))
    yield token
    for switch in switches.iterdir():  # no process is left waiting on the token
        switch.unlink()


def _certificate(public_der: bytes) -> bytes:
    issuer = ec.generate_private_key(ec.SECP256R1())
    subject = serialization.load_der_public_key(public_der)
    assert isinstance(subject, ec.EllipticCurvePublicKey)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "till-agent hanging token")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(subject)
        .serial_number(secrets.randbits(63) | 1 << 62)
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .sign(issuer, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM)


def _config(tmp_path: Path, token: Token) -> Path:
    path = tmp_path / "till.toml"
    path.write_text(
        textwrap.dedent(f"""\
            data_dir = "{tmp_path / "data"}"
            development_unit = false
            sign_timeout_s = {SIGN_TIMEOUT}
            [register]
            id = "{REGISTER}"
            [[units]]
            id = "hsm"
            kind = "pkcs11"
            module = "{token.shim}"
            token_label = "till"
            key_label = "k1"
            pin = "5678"
            zda = "AT1"
            certificate_file = "{token.certificate}"
            [probe]
            initial_s = 0.3
            max_s = 0.5
            jitter = 0.0
            [api]
            port = 0
            [spool]
            rescan_s = 0.2
            [printer]
            kind = "file"
            """)
    )
    return path


@dataclass
class Till:
    """A running agent and an API client for it."""

    agent: Agent
    client: httpx.Client

    def sell(self, request_id: str) -> tuple[dict[str, Any], float]:
        """A sale through the API: the receipt and the seconds it took."""
        started = time.monotonic()
        response = self.client.post("/v1/receipts", content=json.dumps(sale(request_id=request_id)))
        assert response.status_code == 201, response.text
        return dict(response.json()), time.monotonic() - started

    def register(self) -> dict[str, Any]:
        [register] = self.client.get("/v1/status").json()["registers"]
        return dict(register)


Start = Callable[[], Till]


@pytest.fixture(name="start")
def _start(launch: Launch, token: Token, tmp_path: Path) -> Iterator[Start]:
    """Start ``till-agent run`` on the token (its clients are closed at teardown)."""
    clients: list[httpx.Client] = []
    config, data = _config(tmp_path, token), tmp_path / "data"

    def start() -> Till:
        agent = launch(config, env=token.env())
        agent.wait_ready()
        url = agent.api_url()
        api_token = (data / "api-token").read_text(encoding="ascii").strip()
        headers = {"Authorization": f"Bearer {api_token}"}
        # a sale that hangs is a failure, not a wait: the client gives up before pytest
        client = httpx.Client(base_url=url, headers=headers, timeout=4 * SIGN_TIMEOUT)
        clients.append(client)
        return Till(agent, client)

    yield start
    for client in clients:
        client.close()


def _wait(condition: Callable[[], bool], agent: Agent, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert agent.proc.poll() is None, f"till-agent exited:\n{agent.tail()}"
        assert time.monotonic() < deadline, f"{what} after {timeout} s:\n{agent.tail()}"
        time.sleep(0.05)


def _spool(data: Path, agent: Agent, request_id: str) -> dict[str, Any]:
    inbox, out = data / "spool" / "in", data / "spool" / "out"
    tmp = inbox / f".{request_id}.tmp"
    tmp.write_text(json.dumps(sale(request_id=request_id)))
    tmp.rename(inbox / f"{request_id}.json")
    result = out / f"{request_id}.result.json"
    _wait(result.exists, agent, 4 * SIGN_TIMEOUT, f"no {result.name}")
    answer: dict[str, Any] = json.loads(result.read_text())
    return answer


def _states(data: Path) -> list[tuple[int, str, str]]:
    return [(s.result.number, s.result.kind, s.result.signature_state) for s in read_receipts(data)]


def _dep_verifies(data: Path, tmp_path: Path) -> None:
    dep, container = tmp_path / "dep.json", tmp_path / "container.json"
    where = ["--register", REGISTER, "--data-dir", str(data)]
    for args in (
        ["export", "dep", "-o", str(dep), *where],
        ["export", "crypto-container", "-o", str(container), *where],
        ["verify", str(dep), str(container)],
    ):
        done = subprocess.run(
            [str(TILL_AGENT), *args], capture_output=True, text=True, timeout=60, check=False
        )
        assert done.returncode == 0, done.stdout + done.stderr


def test_a_token_hung_in_login_at_start_gives_fallback_receipts_then_recovers(
    start: Start, token: Token, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    till = start()
    assert till.sell("before")[0]["signature_state"] == "signed"
    assert till.agent.terminate() == 0

    token.hang("login")  # the restart meets a token that does not answer its login
    till = start()
    receipt, took = till.sell("during")
    assert receipt["signature_state"] == "fallback"
    assert took < SIGN_TIMEOUT + 1.0, "the sale waited past the signing deadline"
    register = till.register()
    assert register["unit"]["state"] == "down"
    assert register["open_outage"] is not None
    assert "unit hsm cannot be opened" in register["open_outage"]["cause"]
    assert _spool(data, till.agent, "spooled")["signature_state"] == "fallback"

    token.answer("login")  # the login returns: the probe's open succeeds, the Sammelbeleg
    _wait(lambda: till.register()["open_outage"] is None, till.agent, 30, "outage still open")
    [outage] = till.client.get("/v1/outages").json()
    assert outage["sammelbeleg_number"] == 5
    assert till.sell("after")[0]["signature_state"] == "signed"
    assert till.register()["unit"]["state"] == "up"
    assert till.agent.terminate() == 0
    assert _states(data) == [
        (1, "start", "signed"),
        (2, "standard", "signed"),
        (3, "standard", "fallback"),
        (4, "standard", "fallback"),
        (5, "sammelbeleg", "signed"),
        (6, "standard", "signed"),
    ]
    _dep_verifies(data, tmp_path)


def test_sigterm_while_c_sign_hangs_ends_the_service_with_nothing_lost(
    start: Start, token: Token, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    till = start()
    assert till.sell("signed")[0]["signature_state"] == "signed"
    token.hang("sign")
    receipt, took = till.sell("hung")
    assert receipt["signature_state"] == "fallback"
    assert took < SIGN_TIMEOUT + 1.0

    stopping = time.monotonic()
    assert till.agent.terminate(timeout=SIGN_TIMEOUT + 15) == 0
    assert time.monotonic() - stopping < SIGN_TIMEOUT + 8, "the stop waited for C_Sign"
    assert "to a signature unit still hang" in till.agent.output()
    assert _states(data) == [
        (1, "start", "signed"),
        (2, "standard", "signed"),
        (3, "standard", "fallback"),
    ]

    # nothing lost, the lock released: the next start goes on, and closes the outage
    token.answer("sign")
    till = start()
    _wait(lambda: till.register()["open_outage"] is None, till.agent, 30, "outage still open")
    assert till.agent.terminate() == 0
    assert _states(data)[3:] == [(4, "sammelbeleg", "signed")]
    _dep_verifies(data, tmp_path)


def test_a_new_unit_whose_login_hangs_fails_the_first_start_by_a_deadline(
    launch: Launch, token: Token, tmp_path: Path
) -> None:
    """A unit is opened at the first start to store its key: a token that hangs then
    ends the start (exit 2, naming the unit) instead of hanging it."""
    token.hang("login")
    agent = launch(_config(tmp_path, token), env=token.env())
    assert agent.proc.wait(timeout=60) == 2, agent.tail()
    assert "unit hsm: opening it has not answered within 10 s" in agent.output()


def test_a_hung_login_does_not_hold_the_lock_of_every_token(token: Token, tmp_path: Path) -> None:
    """While one ``C_Login`` hangs, the lock of the process's sessions is free (another
    token's unit, or a unit leaving its session, takes it), and the process exits."""
    script = textwrap.dedent(f"""\
        import os, threading, time
        from pathlib import Path
        from agent.errors import ConfigurationError
        from agent.signing import pkcs11 as p

        def login():
            try:
                p._acquire_session(Path({str(token.shim)!r}), "till", "5678", "test")
            except ConfigurationError as exc:
                print("login:", exc, flush=True)

        threading.Thread(target=login, daemon=True).start()
        time.sleep(1.0)  # the login hangs by now
        print("free" if p._sessions_lock.acquire(timeout=2.0) else "held", flush=True)
        os._exit(0)  # the hung login's thread is left as it is
        """)
    token.hang("login")
    done = subprocess.run(
        [sys.executable, "-c", script],
        env={**os.environ, **token.env()},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.stdout.strip() == "free", done.stdout + done.stderr


def _change_pin(token: Token, new: str) -> None:
    """Change the token's user PIN from another process (as a technician would)."""
    script = (
        "import pkcs11;"
        f"lib=pkcs11.lib({str(SOFTHSM_MODULE)!r});"
        "s=lib.get_token(token_label='till').open(rw=True,user_pin='5678');"
        f"s.set_pin('5678',{new!r});s.close()"
    )
    subprocess.run([sys.executable, "-c", script], env={**os.environ, **token.env()}, check=True)


def test_a_pin_refused_after_the_start_stopped_waiting_is_logged_once(
    start: Start, token: Token
) -> None:
    """The PIN changed while the till was off and the login hangs past the start's wait,
    then refuses the PIN: one ERROR says so (nobody else would: the start logged only
    that the unit did not answer), not once per probe."""
    till = start()
    assert till.sell("before")[0]["signature_state"] == "signed"
    assert till.agent.terminate() == 0
    _change_pin(token, "9999")
    token.hang("login")
    till = start()  # READY once the start stopped waiting for the open
    assert till.sell("during")[0]["signature_state"] == "fallback"
    token.answer("login")  # the hung C_Login returns CKR_PIN_INCORRECT
    _wait(
        lambda: "PIN rejected" in str(till.register()["open_outage"]["unit_problem"]),
        till.agent,
        30,
        "no PIN rejected in unit_problem",
    )
    time.sleep(3.0)  # several probes
    assert till.agent.terminate() == 0
    errors = [x for x in till.agent.output().splitlines() if x.startswith("ERROR")]
    assert len([x for x in errors if "PIN rejected" in x]) == 1, errors


def test_a_slow_login_at_the_start_is_waited_for_and_makes_no_outage(
    start: Start, token: Token, tmp_path: Path
) -> None:
    """A card whose login takes longer than the signing deadline (but not 10 s) at the
    start is waited for before READY: no outage, no Sammelbeleg, the next sale signed."""
    till = start()
    assert till.sell("before")[0]["signature_state"] == "signed"
    assert till.agent.terminate() == 0
    token.hang("login")
    answer = threading.Timer(SIGN_TIMEOUT + 4.0, token.answer, ("login",))
    answer.start()
    try:
        till = start()
    finally:
        answer.join()
    assert till.client.get("/v1/outages").json() == []
    assert till.sell("after")[0]["signature_state"] == "signed"
    assert till.agent.terminate() == 0
    assert [kind for _, kind, _ in _states(tmp_path / "data")] == ["start", "standard", "standard"]


def test_config_check_gives_up_on_a_hung_token_with_a_note(token: Token, tmp_path: Path) -> None:
    """``config check`` reads the token's public key to compare it with the certificate:
    a token that hangs (here in finding the key) is a note after 10 s, not a hung check."""
    token.hang("find")
    began = time.monotonic()
    done = subprocess.run(
        [str(TILL_AGENT), "config", "check", "--config", str(_config(tmp_path, token))],
        env={**os.environ, **token.env()},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert time.monotonic() - began < 30
    assert done.returncode == 0, done.stdout + done.stderr
    assert "not checked" in " ".join((done.stdout + done.stderr).split())
