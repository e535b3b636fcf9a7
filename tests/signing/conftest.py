"""Fixtures for the signing tests: a private SoftHSM2 token for the whole test session."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

SOFTHSM_MODULE = Path(os.environ.get("SOFTHSM2_MODULE", "/usr/lib/softhsm/libsofthsm2.so"))
_INSTALL_HINT = "SoftHSM2 is not installed: apt-get install softhsm2"


@dataclass(frozen=True, slots=True)
class SoftHsm:
    """A SoftHSM2 token initialised for the tests (its store lives in a temp directory)."""

    module: Path
    token_label: str
    pin: str
    so_pin: str


@pytest.fixture(name="softhsm", scope="session")
def softhsm_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SoftHsm]:
    """Point ``SOFTHSM2_CONF`` at a fresh token directory and initialise one token there.

    SoftHSM2 reads the variable once, when the module is initialised in this process, so
    it must be set before any test loads the module and stays set for the session.
    """
    util = shutil.which("softhsm2-util")
    if util is None or not SOFTHSM_MODULE.is_file():
        pytest.skip(_INSTALL_HINT)
    root = tmp_path_factory.mktemp("softhsm")
    tokens = root / "tokens"
    tokens.mkdir()
    conf = root / "softhsm2.conf"
    conf.write_text(
        f"directories.tokendir = {tokens}\nobjectstore.backend = file\nlog.level = ERROR\n"
    )
    hsm = SoftHsm(SOFTHSM_MODULE, "till", "5678", "1234")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SOFTHSM2_CONF", str(conf))
        init = ["--init-token", "--free", "--label", hsm.token_label]
        pins = ["--so-pin", hsm.so_pin, "--pin", hsm.pin]
        subprocess.run([util, *init, *pins], check=True, capture_output=True)
        yield hsm
