"""till-agent: an offline-first, store-and-forward till agent for fiscal cash registers."""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["__version__"]
