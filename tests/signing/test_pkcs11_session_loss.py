"""A pkcs11 unit whose session dies (card pulled and put back), against real SoftHSM2.

The loss is simulated by closing the shared session behind the unit's back, which leaves
its handle invalid (``CKR_SESSION_HANDLE_INVALID``), as a token reset does.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("pkcs11")

from agent.errors import UnitUnavailable
from agent.signing import SignatureUnit, UnitConfig, open_unit, sign_verified
from agent.signing.pkcs11 import Pkcs11Unit, create_pkcs11_key

# python-pkcs11 0.10 finishes a search that failed on a dead session in __del__, where
# C_FindObjectsFinal fails again: an "Exception ignored" of the library, not of ours
pytestmark = pytest.mark.filterwarnings(
    "ignore:Exception ignored in. 'pkcs11:pytest.PytestUnraisableExceptionWarning"
)
DATA = b"eyJhbGciOiJFUzI1NiJ9.X1IxLUFUMF9LQVNTRS0xXzE"


def soon() -> float:
    return time.monotonic() + 5


def config(softhsm: Any, key_label: str, unit_id: str = "hsm1") -> UnitConfig:
    return UnitConfig(
        id=unit_id,
        kind="pkcs11",
        module=softhsm.module,
        token_label=softhsm.token_label,
        pin=softhsm.pin,
        key_label=key_label,
        zda="AT0",
        key_id=f"U:ATU12345678-{unit_id.upper()}",
    )


def lose_session(unit: SignatureUnit) -> None:
    """Close the session the unit uses, as a token that was pulled and put back would."""
    assert isinstance(unit, Pkcs11Unit)
    unit._shared.session.close()


@pytest.fixture(name="key_label", scope="module")
def _key_label(softhsm: Any) -> str:
    label = f"till-{uuid.uuid4().hex[:12]}"
    create_pkcs11_key(softhsm.module, softhsm.token_label, softhsm.pin, label)
    return label


@pytest.fixture(name="unit")
def _unit(softhsm: Any, key_label: str) -> Iterator[SignatureUnit]:
    unit = open_unit(config(softhsm, key_label))
    yield unit
    unit.close()


class TestSessionLoss:
    def test_the_probe_after_the_loss_logs_in_again(self, unit: SignatureUnit) -> None:
        """The call that meets the dead session fails; the next probe opens a new one."""
        lose_session(unit)
        with pytest.raises(UnitUnavailable, match="no longer valid"):
            unit.probe(deadline=soon())
        unit.probe(deadline=soon())
        assert len(sign_verified(unit, DATA, timeout=5)) == 64

    def test_a_sign_during_the_loss_is_unavailable(self, unit: SignatureUnit) -> None:
        """A receipt signed as the session dies takes the fallback; the probe then passes."""
        lose_session(unit)
        with pytest.raises(UnitUnavailable, match="no longer valid"):
            unit.sign(DATA, deadline=soon())
        unit.probe(deadline=soon())
        assert len(sign_verified(unit, DATA, timeout=5)) == 64

    def test_a_fresh_open_is_not_handed_the_dead_session(
        self, softhsm: Any, key_label: str, unit: SignatureUnit
    ) -> None:
        """Opening a unit on the token logs in anew; the first unit then joins that login."""
        lose_session(unit)
        other = open_unit(config(softhsm, key_label, "hsm2"))
        try:
            assert len(sign_verified(other, DATA, timeout=5)) == 64
            unit.probe(deadline=soon())
            assert isinstance(other, Pkcs11Unit)
            assert isinstance(unit, Pkcs11Unit)
            assert unit._shared is other._shared
        finally:
            other.close()
        assert len(sign_verified(unit, DATA, timeout=5)) == 64

    def test_units_sharing_the_dead_session_each_come_back(
        self, softhsm: Any, key_label: str, unit: SignatureUnit
    ) -> None:
        """Two units on one token: one meets the loss, and both go on with one new login."""
        other = open_unit(config(softhsm, key_label, "hsm2"))
        try:
            lose_session(unit)
            with pytest.raises(UnitUnavailable, match="no longer valid"):
                other.sign(DATA, deadline=soon())
            assert len(sign_verified(unit, DATA, timeout=5)) == 64
            assert len(sign_verified(other, DATA, timeout=5)) == 64
            assert isinstance(other, Pkcs11Unit)
            assert isinstance(unit, Pkcs11Unit)
            assert unit._shared is other._shared
        finally:
            other.close()
        unit.probe(deadline=soon())
