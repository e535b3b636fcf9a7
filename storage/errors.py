"""Storage errors are the agent's errors; this module only re-exports them for storage users."""

from __future__ import annotations

from agent.errors import (
    DatabaseMissing,
    DataDirLocked,
    NoDatabase,
    RestorePending,
    StorageError,
)

__all__ = ["DataDirLocked", "DatabaseMissing", "NoDatabase", "RestorePending", "StorageError"]
