"""Fakes of the services the agent talks to, real enough to run on loopback in tests and demos.

* :mod:`agent.fakes.chain_service`: a remote chain service (fiskaly SIGN AT style).

The package imports nothing itself, so ``python -m agent.fakes.chain_service`` runs the
module without it having been imported once already.
"""

from __future__ import annotations

__all__: list[str] = []
