"""A call to a signature unit that never returns does not keep the process from exiting.

A token may hang in a call (a C call cannot be cancelled): its caller gives up at the
deadline and the call's thread is abandoned, a daemon thread, so the interpreter does
not wait for it at exit (``till-agent run`` under systemd: a stop would end in SIGKILL).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time


def test_a_call_that_never_returns_does_not_keep_the_process_from_exiting() -> None:
    """Unit calls run on daemon threads: one that hangs (a C call cannot be cancelled)
    is abandoned at its deadline, and the process exits without it."""
    script = textwrap.dedent("""\
        import threading, time
        from agent.errors import UnitUnavailable
        from agent.signing.base import call_with_deadline

        try:
            call_with_deadline(threading.Event().wait, time.monotonic() + 0.2, "a hung call")
        except UnitUnavailable as exc:
            print(exc)
        """)
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert (done.returncode, done.stdout.strip()) == (
        0,
        "a hung call: no answer within the deadline",
    ), done.stderr
    assert time.monotonic() - started < 30
