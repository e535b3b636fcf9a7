"""A refused PIN stays "refused" while a login to another token of its module hangs.

Two SoftHSM2 tokens behind one module, ``slowhsm_shim.c`` (tests/e2e), which stops
answering ``C_Login`` while a file exists. Token ``b``'s PIN was refused once; then a
login to token ``a`` hangs, holding the module's login lock. Opening ``b`` again must
say at once that its PIN was rejected (so the log names the real cause and the unit is
not held up), not wait out the login timeout and report that nothing answered.

The logins run in a process of their own: SoftHSM2 reads its configuration once per
process, and a hung call cannot be cancelled.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("pkcs11")

SHIM_SOURCE = Path(__file__).resolve().parents[1] / "e2e" / "slowhsm_shim.c"
SOFTHSM_MODULE = Path(os.environ.get("SOFTHSM2_MODULE", "/usr/lib/softhsm/libsofthsm2.so"))

SCRIPT = r"""
import json, os, sys, threading, time
from pathlib import Path
from agent.errors import PinRejected
from agent.signing import pkcs11 as unit

module, switches = Path(sys.argv[1]), Path(sys.argv[2])
out = {}
try:
    unit._acquire_session(module, "b", "0000", "unit b")
except PinRejected:
    out["first"] = "refused"
(switches / "hang-login").touch()
threading.Thread(
    target=unit._acquire_session, args=(module, "a", "5678", "unit a"), daemon=True
).start()
time.sleep(0.5)  # token a's login is under way and hangs
start = time.monotonic()
try:
    unit._acquire_session(module, "b", "0000", "unit b")
    out["second"] = "opened"
except PinRejected as exc:
    out["second"], out["message"] = "refused", str(exc)
except Exception as exc:
    out["second"], out["message"] = type(exc).__name__, str(exc)
out["seconds"] = time.monotonic() - start
print(json.dumps(out), flush=True)
(switches / "hang-login").unlink()
os._exit(0)
"""


@pytest.fixture(name="shim", scope="module")
def _shim(tmp_path_factory: pytest.TempPathFactory) -> Path:
    compiler = shutil.which("gcc") or shutil.which("cc")
    if compiler is None or shutil.which("softhsm2-util") is None:
        pytest.skip("this test builds a PKCS#11 module: apt-get install gcc softhsm2")
    library = tmp_path_factory.mktemp("slowhsm") / "libslowhsm.so"
    flags = ["-O2", "-Wall", "-Wextra", "-Werror", "-shared", "-fPIC"]
    subprocess.run([compiler, *flags, "-o", str(library), str(SHIM_SOURCE), "-ldl"], check=True)
    return library


def test_a_refused_pin_is_reported_at_once_while_another_tokens_login_hangs(
    tmp_path: Path, shim: Path
) -> None:
    conf, switches = tmp_path / "softhsm2.conf", tmp_path / "switches"
    (tmp_path / "tokens").mkdir()
    switches.mkdir()
    conf.write_text(f"directories.tokendir = {tmp_path / 'tokens'}\nobjectstore.backend = file\n")
    env = {
        **os.environ,
        "SOFTHSM2_CONF": str(conf),
        "SLOWHSM_DIR": str(switches),
        "SLOWHSM_MODULE": str(SOFTHSM_MODULE),
    }
    for label in ("a", "b"):
        init = ["--init-token", "--free", "--label", label, "--so-pin", "1234", "--pin", "5678"]
        subprocess.run(["softhsm2-util", *init], env=env, check=True, capture_output=True)
    try:
        done = subprocess.run(
            [sys.executable, "-c", SCRIPT, str(shim), str(switches)],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        (switches / "hang-login").unlink(missing_ok=True)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["first"] == "refused"
    assert out["second"] == "refused", out
    assert "PIN rejected" in out["message"]
    assert out["seconds"] < 2.0, out  # not the 10 s login timeout
