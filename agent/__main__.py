"""``python -m agent`` runs the till-agent command line."""

from __future__ import annotations

from agent.cli import main

main()
