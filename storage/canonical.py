"""The one JSON form that is stored and hashed (journal events, receipt documents), and
the one strictness every JSON the agent reads shares (sales, request bodies, DEP exports):
a key named twice in one object is refused (:func:`unique_keys`).

A module of its own, without the database: the sale contract and the DEP reader use it
too, and importing it must not load SQLAlchemy.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

__all__ = ["DuplicateKey", "canonical_json", "unique_keys"]

# one encoder for every call: json.dumps with options builds a new one each time
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)

# JSONEncoder.encode builds its C encoder anew per call; this one is built once, with the
# arguments iterencode passes, but without the markers dict of the circular check: that
# dict would be shared by threads and keeps its entries when encoding fails. Every caller
# passes a tree of fresh JSON values (a cycle would end in RecursionError, not ValueError).
try:
    from _json import make_encoder
except ImportError:  # a Python without the C accelerator: JSONEncoder.encode as it is
    _c_encode = None
else:
    _c_encode = make_encoder(
        None,
        _CANONICAL.default,
        json.encoder.encode_basestring,
        None,
        _CANONICAL.key_separator,
        _CANONICAL.item_separator,
        True,
        False,
        _CANONICAL.allow_nan,
    )


def canonical_json(data: Mapping[str, Any]) -> str:
    """Sorted keys, no spaces, UTF-8 (non-ASCII characters kept as they are)."""
    if _c_encode is None:
        return _CANONICAL.encode(data)
    return "".join(_c_encode(data, 0))


class DuplicateKey(ValueError):
    """A JSON object names the same key twice (json.loads would silently keep the last);
    ``args[0]`` is the key."""


def unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """An ``object_pairs_hook`` for :mod:`json` that raises :class:`DuplicateKey`."""
    document = dict(pairs)
    if len(document) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise DuplicateKey(key)
            seen.add(key)
    return document
