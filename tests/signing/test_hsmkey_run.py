"""A PKCS#11 token in front of `till-agent run` and `config check`, as real processes.

Each test has a SoftHSM2 token store of its own (the processes get its ``SOFTHSM2_CONF``;
this process never loads SoftHSM2 with it), a P-256 key imported under ``k1`` with its
certificate, and a PKCS#11 module built here with gcc that passes every call through to
SoftHSM2 and appends the result of each ``C_Login`` to a file: the logins are counted.
"""

from __future__ import annotations

import datetime as dt
import json
import secrets
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

pytest.importorskip("pkcs11")

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from e2e.harness import TILL_AGENT, Agent, Launch, agent_env, launcher
from factories import sale

SOFTHSM = Path("/usr/lib/softhsm/libsofthsm2.so")
PIN = "5678"
CKR_PIN_INCORRECT = "0xa0"

# A PKCS#11 module that is SoftHSM2 but for C_Login, which it logs to $HSMKEY_LOGIN_LOG.
LOGIN_SHIM = r"""
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <p11-kit/pkcs11.h>

static CK_FUNCTION_LIST wrapped;
static CK_FUNCTION_LIST_PTR real;

static CK_RV logged_login(CK_SESSION_HANDLE session, CK_USER_TYPE user, CK_UTF8CHAR_PTR pin,
                          CK_ULONG length) {
  CK_RV rv = real->C_Login(session, user, pin, length);
  const char *path = getenv("HSMKEY_LOGIN_LOG");
  FILE *log = path ? fopen(path, "a") : NULL;
  if (log) {
    fprintf(log, "C_Login 0x%lx\n", (unsigned long)rv);
    fclose(log);
  }
  return rv;
}

CK_RV C_GetFunctionList(CK_FUNCTION_LIST_PTR_PTR list) {
  if (real == NULL) {
    void *library = dlopen(REAL_MODULE, RTLD_NOW | RTLD_LOCAL);
    CK_C_GetFunctionList get;
    if (library == NULL) return CKR_GENERAL_ERROR;
    *(void **)(&get) = dlsym(library, "C_GetFunctionList");
    if (get == NULL || get(&real) != CKR_OK) return CKR_GENERAL_ERROR;
    wrapped = *real;
    wrapped.C_Login = logged_login;
  }
  *list = &wrapped;
  return CKR_OK;
}
"""

# Run by another interpreter on the test's token: what its administrator does to it.
TOKEN_TOOL = """
import sys
import pkcs11
from cryptography.hazmat.primitives import serialization as s
from pkcs11 import Attribute as A, ObjectClass
from pkcs11.util.ec import decode_ec_private_key, decode_ec_public_key

action, pin = sys.argv[1:3]
session = pkcs11.lib(sys.argv[3]).get_token(token_label="till").open(rw=True, user_pin=pin)
if action == "import":
    key = s.load_pem_private_key(open(sys.argv[4], "rb").read(), None)
    der = key.private_bytes(s.Encoding.DER, s.PrivateFormat.TraditionalOpenSSL, s.NoEncryption())
    private = decode_ec_private_key(der)
    private.update({A.LABEL: "k1", A.TOKEN: True, A.SIGN: True, A.SENSITIVE: True,
                    A.EXTRACTABLE: False, A.PRIVATE: True})
    session.create_object(private)
    spki = key.public_key().public_bytes(s.Encoding.DER, s.PublicFormat.SubjectPublicKeyInfo)
    public = decode_ec_public_key(spki)
    public.update({A.LABEL: "k1", A.TOKEN: True, A.VERIFY: True})
    session.create_object(public)
elif action == "drop-public":
    session.get_key(object_class=ObjectClass.PUBLIC_KEY, label="k1").destroy()
elif action == "set-pin":
    session.set_pin(pin, sys.argv[4])
session.close()
"""


@pytest.fixture(name="shim", scope="module")
def _shim(tmp_path_factory: pytest.TempPathFactory) -> Path:
    compiler = shutil.which("gcc") or shutil.which("cc")
    if compiler is None or shutil.which("softhsm2-util") is None or not SOFTHSM.is_file():
        pytest.skip("these tests build a PKCS#11 module: apt-get install gcc softhsm2")
    built = tmp_path_factory.mktemp("shim")
    source, library = built / "login_shim.c", built / "login_shim.so"
    source.write_text(LOGIN_SHIM)
    flags = ["-O2", "-Wall", "-Wextra", "-Werror", "-shared", "-fPIC"]
    flags += ["-I/usr/include/p11-kit-1", f'-DREAL_MODULE="{SOFTHSM}"']
    subprocess.run([compiler, *flags, "-o", str(library), str(source), "-ldl"], check=True)
    return library


def _key_file(path: Path) -> ec.EllipticCurvePrivateKey:
    """A new P-256 key, also written to ``path`` (unencrypted PEM) for the token tool."""
    key = ec.generate_private_key(ec.SECP256R1())
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return key


def _certificate(public: ec.EllipticCurvePublicKey) -> bytes:
    issuer = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "hsmkey test unit")])
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "hsmkey test CA")]))
        .public_key(public)
        .serial_number(secrets.randbits(63) | 1 << 62)
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=90))
        .sign(issuer, hashes.SHA256())
        .public_bytes(serialization.Encoding.PEM)
    )


@dataclass
class Till:
    """A till's files: its token store, key, certificate, configuration and data."""

    root: Path
    shim: Path

    @property
    def tokens(self) -> Path:
        return self.root / "tokens"

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def config(self) -> Path:
        return self.root / "till.toml"

    @property
    def logins(self) -> Path:
        return self.root / "logins.txt"

    def env(self) -> dict[str, str]:
        return {
            "SOFTHSM2_CONF": str(self.root / "softhsm2.conf"),
            "HSMKEY_LOGIN_LOG": str(self.logins),
        }

    def login_results(self) -> list[str]:
        return self.logins.read_text().split() if self.logins.exists() else []

    def tool(self, action: str, *args: str | Path, pin: str = PIN) -> None:
        command = [sys.executable, "-c", TOKEN_TOOL, action, pin, str(SOFTHSM), *map(str, args)]
        done = subprocess.run(
            command,
            env=agent_env(self.root / "home", self.env()),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr

    def initialise(self) -> None:
        """Initialise token ``till`` anew (its keys are gone), with the same PINs."""
        init = ["softhsm2-util", "--init-token", "--token", "till", "--label", "till"]
        subprocess.run(
            [*init, "--so-pin", "1234", "--pin", PIN],
            env=agent_env(self.root / "home", self.env()),
            check=True,
            capture_output=True,
        )

    def write_config(self, certificate: Path) -> Path:
        self.config.write_text(
            f'data_dir = "{self.data}"\n'
            "development_unit = false\n"
            "[register]\n"
            'id = "KASSE-1"\n'
            "[[units]]\n"
            'id = "hsm"\n'
            'kind = "pkcs11"\n'
            f'module = "{self.shim}"\n'
            'token_label = "till"\n'
            'key_label = "k1"\n'
            f'pin = "{PIN}"\n'
            'zda = "AT1"\n'
            f'certificate_file = "{certificate}"\n'
            "[probe]\n"
            "initial_s = 0.2\n"
            "max_s = 0.5\n"
            "[api]\n"
            "port = 0\n"
            "[printer]\n"
            'kind = "none"\n'
        )
        return self.config

    def probes(self) -> int:
        """How many probes the outages of the till database have journaled."""
        conn = sqlite3.connect(f"file:{self.data / 'till.sqlite3'}?mode=ro", uri=True)
        try:
            row = conn.execute("SELECT count(*) FROM journal WHERE kind = 'outage.probe'")
            return int(row.fetchone()[0])
        finally:
            conn.close()


@pytest.fixture(name="till")
def _till(tmp_path: Path, shim: Path) -> Till:
    """A token store with token ``till`` (user PIN 5678), key ``k1`` and its certificate."""
    till = Till(tmp_path / "till", shim)
    till.tokens.mkdir(parents=True)
    (till.root / "softhsm2.conf").write_text(
        f"directories.tokendir = {till.tokens}\nobjectstore.backend = file\nlog.level = ERROR\n"
    )
    init = ["softhsm2-util", "--init-token", "--free", "--label", "till"]
    subprocess.run(
        [*init, "--so-pin", "1234", "--pin", PIN],
        env=agent_env(till.root / "home", till.env()),
        check=True,
        capture_output=True,
    )
    key = _key_file(till.root / "k1.pem")
    till.tool("import", till.root / "k1.pem")
    certificate = till.root / "unit.pem"
    certificate.write_bytes(_certificate(key.public_key()))
    till.write_config(certificate)
    return till


@pytest.fixture(name="launch")
def _launch(tmp_path: Path) -> Iterator[Launch]:
    started: list[Agent] = []
    yield launcher(tmp_path, started)
    for agent in started:
        agent.close()


Sell = Callable[[str], dict[str, Any]]


class Running:
    """One `till-agent run` of the till and its local API."""

    def __init__(self, launch: Launch, till: Till) -> None:
        self.agent = launch(till.config, env=till.env())
        self.agent.wait_ready()
        url = self.agent.api_url()
        token = (till.data / "api-token").read_text().strip()
        self.client = httpx.Client(
            base_url=url,
            headers={"Authorization": f"Bearer {token}"},
            timeout=30,
        )

    def sell(self, request_id: str) -> str:
        response = self.client.post("/v1/receipts", content=json.dumps(sale(request_id=request_id)))
        assert response.status_code == 201, response.text
        return str(response.json()["signature_state"])

    def outage(self) -> dict[str, Any] | None:
        [register] = self.client.get("/v1/status").json()["registers"]
        return register["open_outage"]

    def stop(self) -> None:
        self.client.close()
        assert self.agent.terminate() == 0, self.agent.tail()


def _wait(what: str, until: Callable[[], bool], agent: Agent, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not until():
        assert time.monotonic() < deadline, f"{what}:\n{agent.tail()}"
        time.sleep(0.1)


class TestRejectedPin:
    def test_a_rejected_pin_is_tried_once_per_start(self, till: Till, launch: Launch) -> None:
        """The token's PIN was changed while the till was off: the start's one C_Login is
        refused, and the probes that follow do not log in again (a card would lock). The
        status and one ERROR line say what to do; the outage stays open."""
        first = Running(launch, till)
        assert first.sell("before") == "signed"
        first.stop()
        till.tool("set-pin", "9999")
        till.logins.unlink(missing_ok=True)

        second = Running(launch, till)
        assert second.sell("refused") == "fallback"
        _wait("ten probes", lambda: till.probes() >= 10, second.agent)
        assert till.login_results() == ["C_Login", CKR_PIN_INCORRECT]
        outage = second.outage()
        assert outage is not None
        assert "PIN rejected: fix the unit's `pin` and restart" in outage["unit_problem"]
        errors = [line for line in second.agent.output().splitlines() if line.startswith("ERROR")]
        assert len([line for line in errors if "PIN rejected" in line]) == 1, errors
        second.stop()


class TestTokenChangedWhileRunning:
    def test_a_module_that_lost_the_token_asks_for_a_restart(
        self, till: Till, launch: Launch
    ) -> None:
        """SoftHSM2 does not see a token again whose store went away while it ran: the
        probe's reason says to restart, in the status and once in the log; after the
        restart the Sammelbeleg closes the outage."""
        running = Running(launch, till)
        assert running.sell("before") == "signed"
        away = till.root / "tokens.away"
        till.tokens.rename(away)
        till.tokens.mkdir()
        assert running.sell("gone") == "fallback"
        till.tokens.rmdir()
        away.rename(till.tokens)
        _wait("ten probes", lambda: till.probes() >= 10, running.agent)
        outage = running.outage()
        assert outage is not None
        problem = outage["unit_problem"]
        assert "cannot list its tokens" in problem
        assert "restart the service" in problem
        logged = [line for line in running.agent.output().splitlines() if problem in line]
        assert len(logged) == 1, running.agent.tail()
        running.stop()

        restarted = Running(launch, till)
        _wait("the Sammelbeleg", lambda: restarted.outage() is None, restarted.agent)
        assert restarted.sell("after") == "signed"
        restarted.stop()

    def test_a_token_initialised_anew_with_another_key_is_not_this_unit(
        self, till: Till, launch: Launch
    ) -> None:
        """The token is initialised again while the till runs, and another key imported
        under ``k1``: the unit stays failed (no Sammelbeleg is signed with that key), and
        the status names the mismatch."""
        running = Running(launch, till)
        assert running.sell("before") == "signed"
        till.initialise()
        _key_file(till.root / "other.pem")
        till.tool("import", till.root / "other.pem")
        assert running.sell("other") == "fallback"
        _wait("three probes", lambda: till.probes() >= 3, running.agent)
        outage = running.outage()
        assert outage is not None
        assert outage["recovery_failed"] is None  # the probe never passed
        assert "token 'till' holds another key 'k1' than this unit's" in outage["unit_problem"]
        running.stop()


class TestConfigCheck:
    @staticmethod
    def check(till: Till, config: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(TILL_AGENT), "config", "check", "--config", str(config)],
            env=agent_env(till.root / "home", till.env()),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    def test_the_certificate_of_the_tokens_key_passes(self, till: Till) -> None:
        done = self.check(till, till.config)
        assert done.returncode == 0, done.stderr
        assert "not checked" not in done.stderr
        assert till.login_results() == []  # never logs in

    def test_a_certificate_for_another_key_is_refused(self, till: Till) -> None:
        """`run` would refuse the unit at start (exit 2): the check says so first."""
        other = till.root / "other.pem"
        other.write_bytes(_certificate(ec.generate_private_key(ec.SECP256R1()).public_key()))
        done = self.check(till, till.write_config(other))
        assert done.returncode == 3, done.stdout + done.stderr
        refused = f"units.hsm: certificate_file: {other} is for another key than 'k1'"
        assert refused in " ".join(done.stderr.split())
        assert till.login_results() == []

    def test_a_token_that_shows_no_public_key_is_not_checked(self, till: Till) -> None:
        """Without a login the key is not shown: the check says so, and passes."""
        till.tool("drop-public")
        done = self.check(till, till.config)
        assert done.returncode == 0, done.stderr
        assert "units.hsm: certificate_file and the token's key 'k1': not checked" in (
            " ".join(done.stderr.split())
        )
        assert till.login_results() == []
