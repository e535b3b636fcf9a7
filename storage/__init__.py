"""Storage of the till (SQLite) and, later, the hub (PostgreSQL): engines, models, journal.

The names below load :mod:`storage.db` (and SQLAlchemy) on first use, not on import of a
light submodule such as :mod:`storage.canonical`: every CLI command starts faster.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from storage.db import DB_FILE, TillDB, make_engine, open_till_db

__all__ = ["DB_FILE", "TillDB", "make_engine", "open_till_db"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from storage import db

        return getattr(db, name)
    raise AttributeError(f"module 'storage' has no attribute {name!r}")
