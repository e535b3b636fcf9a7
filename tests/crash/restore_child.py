"""A `till-agent restore` process for the restore SIGKILL test: it kills itself with
SIGKILL right before its Nth file-system step.

Run as ``python tests/crash/restore_child.py N restore ARGS...``. The steps counted are the
calls of ``os.fsync``, ``os.rename``, ``os.replace``, ``os.mkdir``, ``os.unlink`` and
``os.rmdir`` made while ``agent.restore.restore`` runs (SQLite's own, inside the C library,
are not among them). With N = 0 it kills nothing and writes the steps it counted to
stderr, one per line after a ``STEPS`` line, so the test knows how many there are.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # the project is not necessarily installed in the venv
    sys.path.insert(0, str(ROOT))

import agent.restore  # noqa: E402

STEPS = ("fsync", "rename", "replace", "mkdir", "unlink", "rmdir")
KILL_AT = int(sys.argv[1])
seen: list[str] = []
counting = False


def _counted(name: str, real: Callable[..., Any]) -> Callable[..., Any]:
    def step(*args: Any, **kwargs: Any) -> Any:
        if counting:
            seen.append(f"{name} {' '.join(_shown(a) for a in args)}")
            if len(seen) == KILL_AT:
                os.kill(os.getpid(), signal.SIGKILL)
        return real(*args, **kwargs)

    return step


def _shown(arg: object) -> str:
    if isinstance(arg, int):  # a descriptor: what it is open on
        try:
            return os.readlink(f"/proc/self/fd/{arg}")
        except OSError:
            return str(arg)
    return os.fspath(arg) if isinstance(arg, (str, os.PathLike)) else repr(arg)


def _watched(real: Callable[..., Any]) -> Callable[..., Any]:
    def restore(*args: Any, **kwargs: Any) -> Any:
        global counting  # noqa: PLW0603 - the one switch the wrappers read
        counting = True
        try:
            return real(*args, **kwargs)
        finally:
            counting = False
            if KILL_AT == 0:
                sys.stderr.write("STEPS\n" + "".join(f"{s}\n" for s in seen))

    return restore


def main() -> None:
    for name in STEPS:
        setattr(os, name, _counted(name, getattr(os, name)))
    agent.restore.restore = _watched(agent.restore.restore)  # type: ignore[assignment]
    from agent.cli import main as cli

    sys.argv = ["till-agent", *sys.argv[2:]]
    cli()


if __name__ == "__main__":
    main()
