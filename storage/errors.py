"""Storage errors are the agent's errors; this module only re-exports them for storage users."""

from __future__ import annotations

from agent.errors import DataDirLocked, NoDatabase, StorageError

__all__ = ["DataDirLocked", "NoDatabase", "StorageError"]
