"""The Austrian RKSV fiscal profile: payload, counter, chaining, JWS, DEP export, verifier."""

from __future__ import annotations

from agent.at_rksv.counter import (
    STORNO_MARKER,
    TRAINING_MARKER,
    aes_key_check_value,
    decrypt_counter,
    encrypt_counter,
)
from agent.at_rksv.dep import (
    ContainerEntry,
    CryptoContainer,
    DepFormatError,
    DepGroup,
    container_json,
    iter_dep,
    load_container,
    load_dep,
    read_container,
    stream_dep,
    write_dep,
)
from agent.at_rksv.encoding import amount_to_cents, cents_to_amount
from agent.at_rksv.payload import (
    AUSTRIAN_ZONES,
    FALLBACK_SIGNATURE,
    FALLBACK_TEXT,
    REGISTER_ID_RULE,
    Payload,
    chain_value,
    is_fallback,
    is_register_id,
    jws_compact,
    ocr_code,
    qr_code,
    signing_input,
    split_jws,
)

__all__ = [
    "AUSTRIAN_ZONES",
    "FALLBACK_SIGNATURE",
    "FALLBACK_TEXT",
    "REGISTER_ID_RULE",
    "STORNO_MARKER",
    "TRAINING_MARKER",
    "ContainerEntry",
    "CryptoContainer",
    "DepFormatError",
    "DepGroup",
    "Payload",
    "aes_key_check_value",
    "amount_to_cents",
    "cents_to_amount",
    "chain_value",
    "container_json",
    "decrypt_counter",
    "encrypt_counter",
    "is_fallback",
    "is_register_id",
    "iter_dep",
    "jws_compact",
    "load_container",
    "load_dep",
    "ocr_code",
    "qr_code",
    "read_container",
    "signing_input",
    "split_jws",
    "stream_dep",
    "write_dep",
]
