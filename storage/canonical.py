"""The one JSON form that is stored and hashed (journal events, receipt documents).

A module of its own, without the database: the sale contract uses it too, and importing
it must not load SQLAlchemy.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

__all__ = ["canonical_json"]

# one encoder for every call: json.dumps with options builds a new one each time
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def canonical_json(data: Mapping[str, Any]) -> str:
    """Sorted keys, no spaces, UTF-8 (non-ASCII characters kept as they are)."""
    return _CANONICAL.encode(data)
