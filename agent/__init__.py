"""till-agent: an offline-first, store-and-forward till agent for fiscal cash registers."""

from __future__ import annotations

import importlib

__all__ = ["UNBUILT_VERSION", "__version__"]

# what a build without git history gets (pyproject.toml's fallback-version), and a source
# tree nobody built or installed: it names no commit
UNBUILT_VERSION = "0.1.dev0"


def _built_version() -> str:
    """The version the build wrote into ``agent/_version.py`` (hatch-vcs, from git:
    ``0.1.devN+g<commit>`` until a release is tagged), so it goes with the code imported
    whichever distribution's metadata is installed beside it."""
    try:
        built = importlib.import_module("agent._version")
    except ModuleNotFoundError as exc:
        if exc.name != "agent._version":
            raise
        return UNBUILT_VERSION
    return str(built.__version__)


__version__ = _built_version()
