"""A fork server for the SIGKILL tests: import the till code once, fork a child per round.

A new interpreter spends about a second of CPU importing the till code (pydantic,
SQLAlchemy, Alembic, cryptography) before it touches the database; the kill tests start
hundreds of them, and those imports were most of the suite's time. Here one interpreter
(the zygote) imports a child script once and forks it for every round. Each child is a
real process: its own pid, the pipes the test made for its stdin, stdout and stderr, its
own database connections opened after the fork, and a real SIGKILL at the end. Only the
imported modules are shared, copy-on-write; the zygote never opens a database or starts a
thread, so a child inherits no lock and no connection.

Run as ``python tests/zygote.py SCRIPT SOCKET_FD``: SCRIPT is imported as a module and
its ``main(argv) -> int`` runs in each child. The test talks to it over a SOCK_SEQPACKET
socket with :class:`Zygote`.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

Main = Callable[[list[str]], int]
_MESSAGE = 1 << 16


class Zygote:
    """The test's side: spawn children of ``script`` and wait for them."""

    def __init__(self, script: Path, *, env: Mapping[str, str] | None = None) -> None:
        """Start the zygote; ``env`` is added to its environment when it starts (what only
        takes effect at exec, such as ``LD_PRELOAD``, goes here rather than to a spawn)."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.sock = ours
        self.proc = subprocess.Popen(
            [sys.executable, __file__, str(script), str(theirs.fileno())],
            pass_fds=[theirs.fileno()],
            stdin=subprocess.DEVNULL,
            env=None if env is None else {**os.environ, **env},
        )
        theirs.close()
        ready = self._ask(None)
        assert ready == {"ready": True}, f"the zygote for {script} did not start: {ready}"

    def _ask(self, request: Mapping[str, Any] | None, fds: Sequence[int] = ()) -> Any:
        if request is not None:
            socket.send_fds(self.sock, [json.dumps(request).encode()], list(fds))
        answer = self.sock.recv(_MESSAGE)
        assert answer, "the zygote died"
        return json.loads(answer)

    def spawn(
        self,
        argv: Sequence[str],
        *,
        cwd: Path | None = None,
        env: Mapping[str, str] | None = None,
    ) -> Forked:
        """Fork a child that runs ``main(argv)`` with fresh pipes for stdin/out/err;
        ``env`` is added to the zygote's environment."""
        stdin_r, stdin_w = os.pipe()
        stdout_r, stdout_w = os.pipe()
        stderr_r, stderr_w = os.pipe()
        try:
            pid = self._fork(argv, cwd, env, False, [stdin_r, stdout_w, stderr_w])
        finally:
            for fd in (stdin_r, stdout_w, stderr_w):
                os.close(fd)
        stdin, stdout = os.fdopen(stdin_w, "wb"), os.fdopen(stdout_r, "rb")
        return Forked(self, pid, stdin, stdout, os.fdopen(stderr_r, "rb"))

    def spawn_logged(
        self, argv: Sequence[str], *, cwd: Path, env: Mapping[str, str], log: int
    ) -> Forked:
        """Fork a child with ``env`` as its whole environment, no stdin and both output
        streams appended to the open file ``log`` (as ``subprocess.Popen`` with
        ``stdout=log, stderr=STDOUT`` would): it has no pipes."""
        devnull = os.open(os.devnull, os.O_RDONLY)
        try:
            pid = self._fork(argv, cwd, env, True, [devnull, log, log])
        finally:
            os.close(devnull)
        return Forked(self, pid, None, None, None)

    def _fork(
        self,
        argv: Sequence[str],
        cwd: Path | None,
        env: Mapping[str, str] | None,
        replace_env: bool,
        fds: list[int],
    ) -> int:
        request = {
            "argv": list(argv),
            "cwd": str(cwd) if cwd else None,
            "env": dict(env or {}),
            "replace_env": replace_env,
        }
        return int(self._ask(request, fds)["pid"])

    def status(self, pid: int, *, block: bool) -> int | None:
        """The exit code of a child (negative: the signal), or None while it runs."""
        answer = self._ask({"wait": pid, "block": block})
        return None if answer["status"] is None else int(answer["status"])

    def __enter__(self) -> Zygote:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close()  # the zygote sees EOF and exits
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:  # pragma: no cover - a hung zygote
            self.proc.kill()
            self.proc.wait()


class Forked:
    """A forked child, with the parts of ``subprocess.Popen`` the kill tests use."""

    def __init__(
        self,
        zygote: Zygote,
        pid: int,
        stdin: IO[bytes] | None,
        stdout: IO[bytes] | None,
        stderr: IO[bytes] | None,
    ) -> None:
        self.zygote, self.pid = zygote, pid
        self.stdin, self.stdout, self.stderr = stdin, stdout, stderr
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            self.returncode = self.zygote.status(self.pid, block=False)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(f"forked child {self.pid}", timeout or 0)
            time.sleep(0.002)
        assert self.returncode is not None
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.returncode is None:
            os.kill(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def close(self) -> None:
        """Close the test's ends of the child's pipes."""
        for pipe in (self.stdin, self.stdout, self.stderr):
            if pipe is not None:
                pipe.close()

    def __enter__(self) -> Forked:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.poll() is None:
            self.kill()
            self.wait(timeout=30)
        self.close()


# -- the zygote's side --------------------------------------------------------------------


def _load(script: Path) -> Main:
    spec = importlib.util.spec_from_file_location(f"zygote_{script.stem}", script)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    main: Main = module.main
    return main


def _child(main: Main, request: Mapping[str, Any], fds: list[int]) -> None:
    """In the forked child: take the test's pipes as 0/1/2 and run ``main``; never return."""
    code = 1
    try:
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
        for fd in set(fds) - {0, 1, 2}:
            os.close(fd)
        if request["cwd"]:
            os.chdir(request["cwd"])
        if request["replace_env"]:
            os.environ.clear()
        os.environ.update(request["env"])
        code = main(["child", *request["argv"]])
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:  # reported on the child's stderr, as a new interpreter would
        traceback.print_exc()
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def serve(script: Path, sock: socket.socket) -> None:
    main = _load(script)
    sock.send(json.dumps({"ready": True}).encode())
    while True:
        message, fds, _, _ = socket.recv_fds(sock, _MESSAGE, 3)
        if not message:
            return
        request = json.loads(message)
        if "wait" in request:
            flags = 0 if request["block"] else os.WNOHANG
            pid, status = os.waitpid(request["wait"], flags)
            code = os.waitstatus_to_exitcode(status) if pid else None
            sock.send(json.dumps({"status": code}).encode())
            continue
        pid = os.fork()
        if pid == 0:
            sock.close()
            _child(main, request, fds)
        for fd in fds:
            os.close(fd)
        sock.send(json.dumps({"pid": pid}).encode())


if __name__ == "__main__":
    serve(Path(sys.argv[1]), socket.socket(fileno=int(sys.argv[2])))
