"""``till-agent`` for the fork server of the run SIGKILL test (tests/zygote.py).

It is the console script's entry point with everything ``till-agent run`` imports loaded
before the fork, so that each round's agent starts in a fraction of a second: the service
itself (configuration, database, units, spool, API, printer, timers) starts from scratch
in every child, as it does in a new interpreter.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # the project is not necessarily installed in the venv
    sys.path.insert(0, str(ROOT))

import uvicorn.lifespan.on  # noqa: E402 - imported by uvicorn when it starts
import uvicorn.loops.auto  # noqa: E402
import uvicorn.protocols.http.auto  # noqa: E402
import uvicorn.protocols.websockets.auto  # noqa: E402, F401

import agent.service  # noqa: E402, F401 - what `run` imports
from agent.cli import main as till_agent  # noqa: E402


def main(argv: list[str]) -> int:
    sys.argv = ["till-agent", *argv[1:]]
    till_agent()
    return 0
