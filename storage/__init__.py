"""Storage of the till (SQLite) and, later, the hub (PostgreSQL): engines, models, journal."""

from __future__ import annotations

from storage.db import DB_FILE, TillDB, make_engine, open_till_db

__all__ = ["DB_FILE", "TillDB", "make_engine", "open_till_db"]
