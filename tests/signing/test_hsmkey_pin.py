"""A PIN the token refuses is never sent again by this process, against real SoftHSM2.

A card or HSM locks its PIN after a few wrong tries, and the configured PIN only changes
with a restart: the refusal is a :class:`PinRejected` and is remembered. (A whole
`till-agent run` that counts its ``C_Login`` calls: test_hsmkey_run.py.)
"""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from typing import Any

import pytest

pytest.importorskip("pkcs11")

import pkcs11
from pkcs11 import exceptions as p11

import agent.signing.pkcs11 as pkcs11_unit
from agent.errors import ConfigurationError, PinRejected, UnitUnavailable
from agent.signing import UnitConfig, open_unit
from agent.signing.pkcs11 import Pkcs11Unit, create_pkcs11_key

# python-pkcs11 0.10 finishes a search that failed on a dead session in __del__, where
# C_FindObjectsFinal fails again: an "Exception ignored" of the library, not of ours
pytestmark = pytest.mark.filterwarnings(
    "ignore:Exception ignored in. 'pkcs11:pytest.PytestUnraisableExceptionWarning"
)


@pytest.fixture(name="refusals", autouse=True)
def _refusals(monkeypatch: pytest.MonkeyPatch) -> None:
    """The PINs refused in a test are forgotten after it: the session token's PIN is the
    one every other test logs in with."""
    monkeypatch.setattr(pkcs11_unit, "_refused", {})


def set_pin(softhsm: Any, old: str, new: str) -> None:
    """Change the token's user PIN, as its administrator would. In this process: SoftHSM2
    keeps the token's login state per process, so this process would not notice a PIN
    that another one changed."""
    # the library object the units use: one per resolved file (a second would not load)
    library = pkcs11.lib(str(softhsm.module.resolve()))
    token = library.get_token(token_label=softhsm.token_label)
    session = token.open(rw=True, user_pin=old)
    try:
        session.set_pin(old, new)
    finally:
        session.close()


def restore_pin(softhsm: Any, changed: str) -> None:
    """Give the token its PIN back if it has ``changed`` (after a failed test too)."""
    with contextlib.suppress(p11.PinIncorrect):  # it has its PIN
        set_pin(softhsm, changed, softhsm.pin)


def config(softhsm: Any, label: str, pin: str) -> UnitConfig:
    return UnitConfig(
        id="hsm1",
        kind="pkcs11",
        module=softhsm.module,
        token_label=softhsm.token_label,
        pin=pin,
        key_label=label,
        zda="AT0",
        key_id="U:ATU12345678-HSM1",
    )


@pytest.fixture(name="label", scope="module")
def _label(softhsm: Any) -> str:
    label = f"till-{uuid.uuid4().hex[:12]}"
    create_pkcs11_key(softhsm.module, softhsm.token_label, softhsm.pin, label)
    return label


class TestPinRejected:
    def test_a_refused_pin_is_not_sent_again(self, softhsm: Any, label: str) -> None:
        """The second open with the refused PIN fails the same way without a login: it
        still fails once the token's PIN is that one (a login would have passed)."""
        with pytest.raises(PinRejected, match="PIN rejected: fix the unit's `pin` and") as first:
            open_unit(config(softhsm, label, "2468"))
        assert isinstance(first.value, ConfigurationError)
        assert isinstance(first.value.__cause__, p11.PinIncorrect)
        set_pin(softhsm, softhsm.pin, "2468")
        try:
            with pytest.raises(PinRejected) as second:
                open_unit(config(softhsm, label, "2468"))
        finally:
            restore_pin(softhsm, "2468")
        assert str(second.value) == str(first.value)
        open_unit(config(softhsm, label, softhsm.pin)).close()  # another PIN is tried

    def test_a_pin_changed_while_the_session_was_lost_is_tried_once(
        self, softhsm: Any, label: str, caplog: pytest.LogCaptureFixture
    ) -> None:
        """The token's PIN changed while the unit ran, then its session died: the probe
        logs in again once, is refused, and says so at ERROR once; later probes do not
        log in again, even once the PIN would pass again."""
        unit = open_unit(config(softhsm, label, softhsm.pin))
        assert isinstance(unit, Pkcs11Unit)
        try:
            unit._shared.session.set_pin(softhsm.pin, "2468")  # its administrator
            unit._shared.session.close()  # the session dies (and its login with it)
            with pytest.raises(UnitUnavailable, match="no longer valid"):
                unit.probe(deadline=time.monotonic() + 5)
            for _ in range(3):
                with pytest.raises(UnitUnavailable, match="PIN rejected") as refused:
                    unit.probe(deadline=time.monotonic() + 5)
                assert isinstance(refused.value.__cause__, PinRejected)
            restore_pin(softhsm, "2468")
            with pytest.raises(UnitUnavailable, match="PIN rejected"):
                unit.probe(deadline=time.monotonic() + 5)
        finally:
            unit.close()
            restore_pin(softhsm, "2468")
        errors = [r for r in caplog.records if r.levelno == logging.ERROR]
        assert [("PIN rejected" in r.getMessage()) for r in errors] == [True]
