"""A PKCS#11 module that cannot start (SoftHSM2 without its token directory: the token is
away) is reported with the error's name and what to check, not with python-pkcs11's
empty message. A fresh interpreter loads the real module: SoftHSM2 reads SOFTHSM2_CONF
once per process, and this session's token must not be disturbed."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from signing.conftest import SOFTHSM_MODULE

SCRIPT = """
import sys
from pathlib import Path
from agent.errors import ConfigurationError
from agent.signing.pkcs11 import _load_module
try:
    _load_module(Path(sys.argv[1]), "unit hsm")
except ConfigurationError as exc:
    print(exc)
else:
    print("loaded")
"""


def test_a_module_that_cannot_start_names_the_error_and_what_to_check(tmp_path: Path) -> None:
    if shutil.which("softhsm2-util") is None or not SOFTHSM_MODULE.is_file():
        pytest.skip("SoftHSM2 is not installed: apt-get install softhsm2")
    conf = tmp_path / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {tmp_path / 'away'}\nobjectstore.backend = file\n")
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(SOFTHSM_MODULE)],
        env={**os.environ, "SOFTHSM2_CONF": str(conf)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    message = done.stdout.strip()
    assert message.startswith(f"unit hsm: cannot load PKCS#11 module {SOFTHSM_MODULE}: ")
    reason = message.split(f"{SOFTHSM_MODULE}: ", 1)[1]
    assert not reason.startswith(";")  # the reason python-pkcs11 leaves empty
    assert "GeneralError" in reason
    assert "SOFTHSM2_CONF" in reason
    assert "token" in reason
