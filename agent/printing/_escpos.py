"""The one door to python-escpos: lazy imports that leave the logging set-up alone.

Importing escpos 3.1 calls ``logging.basicConfig()``, which installs a root stderr
handler, and its printer classes log through the root logger, which does the same when
the root has no handler yet (libraries.md A1). Both are harmless once the agent has
configured logging; :func:`quiet_root` makes them harmless before that too. The import
also costs 0.2-0.4 s and creates a temporary directory, so it happens only on first use.
"""

from __future__ import annotations

import importlib
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType

__all__ = ["escpos_module", "quiet_root"]

_lock = threading.RLock()  # escpos_module() nests inside quiet_root()


@contextmanager
def quiet_root() -> Iterator[None]:
    """While inside, the root logger has a handler, so ``basicConfig()`` does nothing."""
    root = logging.getLogger()
    guard = logging.NullHandler()
    with _lock:
        root.addHandler(guard)
        try:
            yield
        finally:
            root.removeHandler(guard)


def escpos_module(name: str) -> ModuleType:
    """``escpos.<name>``, imported on first use without touching the root logger."""
    with quiet_root():
        return importlib.import_module(f"escpos.{name}")
