"""The ``till-agent`` command line (Typer + Rich).

Exit codes: 0 ok, 1 invalid DEP or unexpected error, 2 usage or configuration (also an
output that cannot be written or is no regular file, such as a device or a fifo, or a
service that cannot be reached), 3 invalid input
(nothing consumed; also a unit id or register that exists already), 4 fiscal refusal (a
register closed by its Schlussbeleg, or a receipt that must wait for the unit), 5 storage
(damaged, read-only, or another process owns the data directory; also a restore that did
not finish, or a database missing where a till lived: every command, `config check`
too), 6 not found (also a data directory without a till database).
`config check` answers 5 for a data directory `run` would not open, and 3 for a
configuration it refuses (there the configuration is the input it checks).

(As README.md's "Command line" says them, word for word: a test compares the two.)
"""

from __future__ import annotations

import inspect
import json
import os
import re
import sys
from typing import Any, TextIO

import typer

from agent import cli_commands as _commands  # noqa: F401 - registers the commands
from agent import cli_demo as _demo  # noqa: F401 - registers demo and bench ingest
from agent.cli_backup import backup_app
from agent.cli_base import app
from agent.cli_checks import checks_app
from agent.cli_config import config_app
from agent.cli_outage import outage_app
from agent.cli_print import reprint  # noqa: F401 - registers the command
from agent.cli_restore import restore  # noqa: F401 - registers the command

__all__ = ["app", "main"]

app.add_typer(outage_app, name="outage")
app.add_typer(checks_app, name="checks")
app.add_typer(config_app, name="config")
app.add_typer(backup_app, name="backup")

_SOFT_BREAK = re.compile(r"(?<=\S)\n(?![\s*-]|\d+\.)")  # not before a list item


def unwrap_help(text: str) -> str:
    """Join the lines of each paragraph: Rich help keeps a docstring's line breaks, which
    were only made to keep the source narrow. Blank lines still separate paragraphs, and
    list items keep their lines."""
    return _SOFT_BREAK.sub(" ", inspect.cleandoc(text))


def _unwrap_commands(group: typer.Typer) -> None:
    for command in group.registered_commands:
        if command.help is None and command.callback is not None and command.callback.__doc__:
            command.help = unwrap_help(command.callback.__doc__)
    for sub in group.registered_groups:
        if sub.typer_instance is not None:
            _unwrap_commands(sub.typer_instance)


_unwrap_commands(app)


def main() -> None:
    """Console-script entry point.

    With ``--json`` among the arguments a usage error (an unknown option, a bad or missing
    value) is one JSON object on stdout, ``{"error": "UsageError", "message": ...}``, exit
    2, as every other error of a command then is; without it Typer shows its usage box.

    A command that leaves a call to a signature unit hanging (a token stuck in ``C_Sign``
    during ``run``'s stop) ends at once with its status once it is done
    (:func:`agent.signing.base.exit_past_hung_calls`).

    Output cut short by its reader (``| head``) does not cut the command short: it runs
    to its end and exits with its own code, one line on stderr says what happened
    (:class:`_CutShort`).
    """
    cut_short = _CutShort.install()
    try:
        _main()
    except SystemExit as exc:
        cut_short.close(_status(exc.code))
        _exit_past_hung_calls(exc.code)
        raise
    except BaseException as exc:  # Python ends with its traceback (exit 1) or by SIGINT
        cut_short.close(130 if isinstance(exc, KeyboardInterrupt) else 1)
        raise
    cut_short.close(0)
    _exit_past_hung_calls(0)


def _status(code: str | int | None) -> int:
    """The exit status of ``SystemExit(code)``: a message (printed to stderr) is 1."""
    if code is None:
        return 0
    return code if isinstance(code, int) else 1


class _CutShort:
    """Stands in for ``sys.stdout`` while a command runs: once its reader has gone (a
    broken pipe, e.g. ``till-agent init ... | head -2``), the rest of the output goes to
    /dev/null and the command goes on, instead of stopping where it printed (Rich exits 1
    there, saying nothing; click too): what it did (a register, a receipt) is done. Then
    one line on stderr says so and how to read it again (or, for a command that failed,
    its exit status and nothing about what is done); stdout stays on /dev/null, so
    Python's flush at exit adds no "Exception ignored ... BrokenPipeError" (the pattern
    of the Python docs' note on SIGPIPE).
    """

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.broken = False
        self.closed = False

    @classmethod
    def install(cls) -> _CutShort:
        guard = cls(sys.stdout)
        sys.stdout = guard  # writes as a TextIO would, and delegates the rest
        return guard

    def write(self, text: str) -> int:
        if not self.broken:
            try:
                return self.stream.write(text)
            except BrokenPipeError:
                self._to_devnull()
        return len(text)

    def flush(self) -> None:
        if not self.broken:
            try:
                self.stream.flush()
            except BrokenPipeError:
                self._to_devnull()

    def __getattr__(self, name: str) -> Any:  # isatty, fileno, encoding: the stream's
        return getattr(self.stream, name)

    def _to_devnull(self) -> None:
        self.broken = True
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, self.stream.fileno())  # what is still buffered goes there too
        finally:
            os.close(devnull)

    def close(self, status: int) -> None:
        """Flush what is left, give ``sys.stdout`` back, and say once if it was cut short:
        after a command that succeeded (``status`` 0), where to read what it did; after
        one that failed, only its exit status, since it may have done nothing."""
        if self.closed:
            return
        self.closed = True
        self.flush()
        sys.stdout = self.stream
        if self.broken:
            line = f"output cut short (broken pipe); {_ended(status)}\n"
            try:
                sys.stderr.write(line)
                sys.stderr.flush()
            except OSError:  # stderr is gone too: nobody is left to tell
                pass


# how to read again what a command printed, when its output was cut short
_HINTS = {
    "init": "register {register} and its signed Startbeleg are stored; `till-agent receipts"
    " show {register} 1` shows the Startbeleg, `till-agent export crypto-container"
    " --register {register} -o FILE` writes its AES key (keep that file secret)",
    "issue": "the receipt is stored; `till-agent receipts list --register ID` shows it",
    "special": "the receipt is stored; `till-agent receipts list --register {register}` shows it",
}
_FLAGS = {"--json", "--yes", "--simulate", "--help"}  # options that take no value


# what the exit statuses mean, as the module's docstring says them
_EXIT_MEANINGS = {
    1: "invalid DEP or unexpected error",
    2: "usage or configuration",
    3: "invalid input",
    4: "fiscal refusal",
    5: "storage",
    6: "not found",
}


def _ended(status: int) -> str:
    """How the command whose output was cut short ended: done, and where to read what it
    did; or refused (nothing of it may be stored), and its exit status."""
    if status == 0:
        hint = _hint()
        if hint is None:  # it only read or showed (a list, --help): nothing else to say
            return "the command ran to its end (exit 0); run it again to read it all"
        return f"what the command did is done: {hint}"
    meaning = _EXIT_MEANINGS.get(status)
    named = f" ({meaning})" if meaning else ""
    return (
        f"the command ended with exit {status}{named}; run it again with its output in a"
        " file to read why"
    )


def _hint() -> str | None:
    """Where to read what the command in ``sys.argv`` stored, for one that stores."""
    words = _positional(sys.argv[1:])
    hint = _HINTS.get(words[0]) if words and "--help" not in sys.argv else None
    return None if hint is None else hint.format(register=words[1] if len(words) > 1 else "ID")


def _positional(args: list[str]) -> list[str]:
    """The command's words and arguments, without its options and their values."""
    words: list[str] = []
    skip = False
    for arg in args:
        if skip:
            skip = False
        elif arg.startswith("-"):
            skip = "=" not in arg and arg not in _FLAGS
        else:
            words.append(arg)
    return words


def _exit_past_hung_calls(code: str | int | None) -> None:
    base = sys.modules.get("agent.signing.base")  # not imported: no unit was used
    if base is not None and isinstance(code, int | None):
        base.exit_past_hung_calls(code or 0)


def _main() -> None:
    if "--json" not in sys.argv[1:]:
        app()  # Typer's own handling, untouched
        return
    try:
        result = app(standalone_mode=False)  # --help, --version and Ctrl-C: an exit code
    except typer.TyperException as exc:  # click's errors (typer 0.29 vendors click)
        _json_usage_error(exc)
    except typer.Abort:  # e.g. end of input at a prompt: as Typer says it
        from typer import rich_utils

        rich_utils.rich_abort_error()
        sys.exit(1)
    sys.exit(result if isinstance(result, int) else 0)  # standalone mode ignores a result


def _json_usage_error(exc: typer.TyperException) -> None:
    kinds = {kind.__name__ for kind in type(exc).__mro__}
    if "NoArgsIsHelpError" in kinds:  # the help was shown: nothing to add (as Typer does)
        sys.exit(exc.exit_code)
    name = "UsageError" if "UsageError" in kinds else type(exc).__name__
    print(json.dumps({"error": name, "message": exc.format_message()}, ensure_ascii=False))
    sys.exit(exc.exit_code)


if __name__ == "__main__":  # pragma: no cover
    main()
