"""Signature units: the protocol, its kinds, and :func:`open_unit` to build one from config."""

from __future__ import annotations

from agent.errors import ConfigurationError
from agent.signing.base import (
    Capabilities,
    Identity,
    SignatureUnit,
    call_with_deadline,
    der_to_rs,
    rs_to_der,
    sign_verified,
    verify_rs,
)
from agent.signing.config import UnitConfig
from agent.signing.software import SoftwareUnit, create_software_unit, software_unit_files

__all__ = [
    "Capabilities",
    "Identity",
    "SignatureUnit",
    "SoftwareUnit",
    "UnitConfig",
    "call_with_deadline",
    "create_software_unit",
    "der_to_rs",
    "open_unit",
    "rs_to_der",
    "sign_verified",
    "software_unit_files",
    "verify_rs",
]


def open_unit(config: UnitConfig) -> SignatureUnit:
    """Open the unit ``config`` describes.

    Raises:
        ConfigurationError: files, token or key cannot be opened.
    """
    if config.kind == "software":
        assert config.key_file is not None  # checked by UnitConfig
        return SoftwareUnit.from_files(
            config.id,
            config.key_file,
            zda=config.zda,
            certificate_file=config.certificate_file,
            key_id=config.key_id,
        )
    if config.kind == "pkcs11":
        try:
            from agent.signing.pkcs11 import Pkcs11Unit
        except ImportError as exc:
            raise ConfigurationError(
                "PKCS#11 units need: pip install 'till-agent[pkcs11]'"
            ) from exc
        return Pkcs11Unit.from_config(config)
    if config.kind == "chain":
        # imported here: the chain unit reads RKSV payloads, and agent.at_rksv imports
        # agent.signing.base, so a top-level import would be circular
        from agent.signing.chain import ChainServiceUnit

        return ChainServiceUnit.from_config(config)
    raise ConfigurationError(f"unknown unit kind {config.kind!r}")  # pragma: no cover
