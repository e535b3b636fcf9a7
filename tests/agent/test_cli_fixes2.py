"""More defects of the command line found by a user audit, each pinned by the test that
found it: outputs that are no regular file, unit ids and unit options, numbers SQLite
cannot hold, a sale too large to read, mistyped data directories, consoles."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from typer.testing import Result

from factories import VECTORS, Run, box_words, expect, flat, sale
from storage import TillDB


def _files(directory: Path) -> list[str]:
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*"))


# -- 1. an output that exists and is no regular file is refused, never renamed over ----------


@pytest.fixture(name="fifo")
def _fifo(tmp_path: Path) -> Iterator[Path]:
    """A fifo with a reader that never reads: a writer that opened it would not wait (the
    test fails on what it finds, it does not hang), the name stays a fifo unless renamed."""
    path = tmp_path / "out" / "pipe.json"
    path.parent.mkdir()
    os.mkfifo(path)
    reader = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        yield path
    finally:
        os.close(reader)


@pytest.fixture(name="unix_socket")
def _unix_socket(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "s.sock"
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(path))
        yield path


def _export(run: Run, till: Path, what: str, output: Path, *extra: str) -> Result:
    return run("export", what, "--register", "KASSE-1", "-o", output, "--data-dir", till, *extra)


@pytest.mark.parametrize("what", ["dep", "crypto-container"])
def test_an_export_onto_a_fifo_is_refused(run: Run, till: Path, fifo: Path, what: str) -> None:
    """``-o /dev/null`` became a regular 0600 file holding the AES key: an output naming a
    device, a fifo or a socket is exit 2 naming it and what it is, and stays what it was."""
    message = flat(expect(_export(run, till, what, fifo), 2).stderr)
    assert f"cannot write {fifo}: it is a fifo (named pipe), not a regular file" in message
    body = json.loads(expect(_export(run, till, what, fifo, "--json"), 2).stdout)
    assert body["message"] == f"cannot write {fifo}: it is a fifo (named pipe), not a regular file"
    assert stat.S_ISFIFO(fifo.lstat().st_mode)
    assert _files(fifo.parent) == ["pipe.json"]


def test_an_export_onto_a_socket_is_refused(run: Run, till: Path, unix_socket: Path) -> None:
    message = flat(expect(_export(run, till, "crypto-container", unix_socket), 2).stderr)
    assert f"cannot write {unix_socket}: it is a socket, not a regular file" in message
    assert stat.S_ISSOCK(unix_socket.lstat().st_mode)


def test_export_dep_refuses_a_fifo_as_its_partial_file(
    run: Run, till: Path, tmp_path: Path
) -> None:
    """``export dep`` streams into ``NAME.partial`` and renames it: a fifo of that name was
    written into and then renamed to the export's name."""
    dep = tmp_path / "dep.json"
    partial = tmp_path / "dep.json.partial"
    os.mkfifo(partial)
    reader = os.open(partial, os.O_RDONLY | os.O_NONBLOCK)
    try:
        message = flat(expect(_export(run, till, "dep", dep), 2).stderr)
    finally:
        os.close(reader)
    assert f"cannot write {dep}: {partial}: it is a fifo (named pipe)" in message
    assert stat.S_ISFIFO(partial.lstat().st_mode)
    assert not dep.exists()


def test_export_dep_replaces_a_stale_partial_file(run: Run, till: Path, tmp_path: Path) -> None:
    """A partial export left by a crash is no obstacle; a link of that name is replaced,
    its target never written through."""
    target = tmp_path / "precious.txt"
    target.write_text("keep me")
    dep = tmp_path / "dep.json"
    (tmp_path / "dep.json.partial").symlink_to(target)
    expect(_export(run, till, "dep", dep), 0)
    assert target.read_text() == "keep me"
    assert not (tmp_path / "dep.json.partial").exists()
    assert len(json.loads(dep.read_text())["Belege-Gruppe"][0]["Belege-kompakt"]) == 2


def test_outage_export_refuses_a_fifo(run: Run, with_outage: Path, tmp_path: Path) -> None:
    """The pack's text file is a fifo: nothing is written, not even the JSON file."""
    pack = tmp_path / "pack"
    pack.mkdir()
    text = pack / "outage-1.txt"
    os.mkfifo(text)
    reader = os.open(text, os.O_RDONLY | os.O_NONBLOCK)
    try:
        result = run("outage", "export", "1", "-o", pack, "--json", "--data-dir", with_outage)
    finally:
        os.close(reader)
    body = json.loads(expect(result, 2).stdout)
    assert body["message"] == f"cannot write {text}: it is a fifo (named pipe), not a regular file"
    assert _files(pack) == ["outage-1.txt"]
    assert stat.S_ISFIFO(text.lstat().st_mode)


@pytest.mark.usefixtures("vectors")
def test_simulate_scenario_refuses_a_fifo(run: Run, tmp_path: Path) -> None:
    scenario = VECTORS / "official" / "TESTSUITE_TEST_SZENARIO_1.json"
    out = tmp_path / "out"
    out.mkdir()
    container = out / "cryptographicMaterialContainer.json"
    os.mkfifo(container)
    reader = os.open(container, os.O_RDONLY | os.O_NONBLOCK)
    try:
        result = run("simulate", "scenario", scenario, "--out", out)
    finally:
        os.close(reader)
    message = flat(expect(result, 2).stderr)
    assert f"cannot write {container}: it is a fifo (named pipe), not a regular file" in message
    assert _files(out) == ["cryptographicMaterialContainer.json"]
    assert stat.S_ISFIFO(container.lstat().st_mode)


def test_receipt_preview_refuses_a_socket(run: Run, till: Path, unix_socket: Path) -> None:
    show = ("receipts", "show", "KASSE-1", "2", "--data-dir", till, "--png", unix_socket)
    message = flat(expect(run(*show), 2).stderr)
    assert f"cannot write {unix_socket}: it is a socket, not a regular file" in message
    assert stat.S_ISSOCK(unix_socket.lstat().st_mode)


# -- 2. unit create-software: an id that is no unit id; nothing left behind when refused -----


@pytest.mark.parametrize("unit_id", ["../../evil", "", "a/b", "x_y", "..", "."])
def test_a_unit_id_that_names_no_file_is_refused(run: Run, tmp_path: Path, unit_id: str) -> None:
    """``--id ../../evil`` wrote keys outside the data directory: exit 3 naming --id and
    the allowed form, no traceback, nothing created anywhere."""
    data_dir = tmp_path / "data"
    create = ("unit", "create-software", "--id", unit_id, "--data-dir", data_dir)
    message = flat(expect(run(*create), 3).stderr)
    assert f"--id: {unit_id!r} is not a unit id: 1-64 letters, digits, '.', ':' or '-'" in message
    body = json.loads(expect(run(*create, "--json"), 3).stdout)
    assert (body["field"], body["rule"]) == ("--id", "format")
    assert _files(tmp_path) == []


def test_a_refused_unit_leaves_no_key_behind(
    run: Run, data_dir: Path, open_db: Callable[..., TillDB]
) -> None:
    """Refused because another process holds the data directory (exit 5), the unit's key
    files stayed, and a retry said the id was taken."""
    db = open_db(data_dir)  # stands in for a running `till-agent run`
    create = ("unit", "create-software", "--id", "dev2", "--data-dir", data_dir)
    assert "another till-agent process is writing" in flat(expect(run(*create), 5).stderr)
    assert not (data_dir / "keys").exists() or _files(data_dir / "keys") == []
    db.close()
    expect(run(*create), 0)
    assert _files(data_dir / "keys") == ["dev2.cert.pem", "dev2.key.pem"]


def test_a_key_file_in_the_way_is_refused_and_kept(run: Run, data_dir: Path) -> None:
    """A certificate left under the unit's name (by an earlier till, say): exit 3, and it
    is kept; no key is written beside it."""
    keys = data_dir / "keys"
    keys.mkdir(parents=True)
    (keys / "dev.cert.pem").write_text("old")
    create = ("unit", "create-software", "--id", "dev", "--json", "--data-dir", data_dir)
    body = json.loads(expect(run(*create), 3).stdout)
    assert (body["field"], body["rule"]) == ("--id", "unit-exists")
    assert _files(keys) == ["dev.cert.pem"]
    assert (keys / "dev.cert.pem").read_text() == "old"


def test_create_software_options_that_describe_no_unit(run: Run, tmp_path: Path) -> None:
    """``--zda XX`` was a pydantic traceback after the key files were written."""
    data_dir = tmp_path / "data"
    create = ("unit", "create-software", "--zda", "XX", "--json", "--data-dir", data_dir)
    body = json.loads(expect(run(*create), 3).stdout)
    assert (body["field"], body["rule"]) == ("--zda", "format")
    assert body["message"].startswith("--zda must be AT0 (closed system)")
    assert _files(tmp_path) == []


# -- 3. unit add-pkcs11: options as clean errors, a PIN file, an id that is taken ------------


@pytest.fixture(name="pkcs11")
def _pkcs11(tmp_path: Path, data_dir: Path) -> tuple[str, ...]:
    """add-pkcs11 options naming a module that does not exist (nothing gets that far)."""
    pin = tmp_path / "pin"
    pin.write_text("1234\n")
    return (
        "unit", "add-pkcs11", "--module", "/x.so", "--token-label", "t", "--key-label", "k",
        "--pin-file", str(pin), "--zda", "AT1", "--data-dir", str(data_dir),
    )  # fmt: skip


def test_add_pkcs11_without_a_certificate_names_the_option(
    run: Run, pkcs11: tuple[str, ...], data_dir: Path
) -> None:
    """An open system needs --certificate: exit 3 naming it, not a ValidationError."""
    body = json.loads(expect(run(*pkcs11, "--id", "h", "--json"), 3).stdout)
    assert body == {
        "error": "InvalidSale",
        "message": "an open system unit needs --certificate",
        "field": "--certificate",
        "rule": "required",
    }
    message = flat(expect(run(*pkcs11, "--id", "h", "--key-id", "a_b"), 3).stderr)
    assert "error: --key-id must be non-empty and must not contain '_' [format]" in message
    assert "Traceback" not in message
    assert not data_dir.exists()


def test_add_pkcs11_with_a_missing_pin_file_answers_json(
    run: Run, pkcs11: tuple[str, ...], tmp_path: Path
) -> None:
    options = list(pkcs11)
    options[options.index("--pin-file") + 1] = str(tmp_path / "nopin")
    body = json.loads(expect(run(*options, "--id", "h", "--json"), 2).stdout)
    assert body == {
        "error": "ConfigurationError",
        "message": f"cannot read the PIN file {tmp_path / 'nopin'}: No such file or directory",
    }


def test_add_pkcs11_refuses_an_id_that_exists(
    run: Run, pkcs11: tuple[str, ...], data_dir: Path
) -> None:
    """The stored unit was silently replaced (INSERT OR REPLACE): exit 3, unit-exists,
    before the module is even loaded; the stored unit is still the software one."""
    expect(run("unit", "create-software", "--id", "dev", "--data-dir", data_dir), 0)
    options = (*pkcs11, "--id", "dev", "--certificate", data_dir / "keys" / "dev.cert.pem")
    body = json.loads(expect(run(*options, "--json"), 3).stdout)
    assert (body["field"], body["rule"]) == ("--id", "unit-exists")
    assert "unit 'dev' already exists" in body["message"]
    listed = json.loads(expect(run("unit", "list", "--json", "--data-dir", data_dir), 0).stdout)
    assert [(u["id"], u["kind"]) for u in listed] == [("dev", "software")]


# -- 4. numbers beyond SQLite's INTEGER are a usage error, not an OverflowError --------------

_HUGE = "99999999999999999999"
_MAX = str(2**63 - 1)


@pytest.mark.parametrize(
    "command",
    [
        ("receipts", "show", "KASSE-1", _HUGE),
        ("outage", "show", _HUGE),
        ("outage", "export", _HUGE),
        ("outage", "report", _HUGE, "--reference", "FON-1"),
        ("reprint", "KASSE-1", _HUGE),
    ],
)
def test_a_number_sqlite_cannot_hold_is_a_usage_error(
    run: Run, till: Path, tmp_path: Path, command: tuple[str, ...]
) -> None:
    """``receipts show KASSE-1 99999999999999999999`` was an OverflowError traceback."""
    config = tmp_path / "till.toml"
    config.write_text(f'data_dir = "{till}"\n', encoding="utf-8")
    where = ("--config", config) if command[0] == "reprint" else ("--data-dir", till)
    result = expect(run(*command, *where), 2)
    assert f"less than or equal to {_MAX}" in box_words(result.stderr)
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_the_largest_number_is_not_found(run: Run, till: Path) -> None:
    show = expect(run("receipts", "show", "KASSE-1", _MAX, "--data-dir", till), 6)
    assert f"register KASSE-1 has no receipt {_MAX}" in flat(show.stderr)
    expect(run("outage", "show", _MAX, "--data-dir", till), 6)


# -- 5. issue reads at most 1 MiB (+1 byte) of a sale, as the spool and the API take ---------

_MIB = 1024 * 1024


def test_issue_refuses_a_sale_over_1_mib_without_reading_it_all(till: Path, tmp_path: Path) -> None:
    """``yes | till-agent issue -`` read stdin until memory ran out: one byte more than
    1 MiB is refused (exit 3, max-size) and the rest is never read (here 16 MiB are
    offered; what the pipe took is counted)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TILL_AGENT_")}
    env["HOME"] = str(tmp_path)
    command = [sys.executable, "-m", "agent", "issue", "-", "--json", "--data-dir", str(till)]
    with subprocess.Popen(
        command, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    ) as process:
        assert process.stdin is not None
        written = 0
        chunk = json.dumps(sale(request_id="big")).encode() + b" " * (64 * 1024)
        try:
            while written < 16 * _MIB:
                written += process.stdin.write(chunk)
                chunk = b" " * (64 * 1024)
        except BrokenPipeError:
            pass  # the command stopped reading and left
        try:
            stdout, stderr = process.communicate(timeout=60)  # (it closes stdin)
        finally:
            process.kill()  # (once it has exited this does nothing)
    assert process.returncode == 3, stderr
    body = json.loads(stdout)
    assert body == {
        "error": "InvalidSale",
        "message": "a sale is at most 1048576 bytes (1 MiB)",
        "field": "(document)",
        "rule": "max-size",
    }
    assert written < 2 * _MIB


def test_issue_takes_a_sale_of_1_mib_and_refuses_one_byte_more(
    run: Run, till: Path, tmp_path: Path
) -> None:
    head = json.dumps(sale(request_id="edge")).encode()
    exact = tmp_path / "exact.json"
    exact.write_bytes(head + b" " * (_MIB - len(head)))
    larger = tmp_path / "larger.json"
    larger.write_bytes(head + b" " * (_MIB + 1 - len(head)))
    message = flat(expect(run("issue", larger, "--data-dir", till), 3).stderr)
    assert "a sale is at most 1048576 bytes (1 MiB) [max-size]" in message
    expect(run("issue", exact, "--data-dir", till), 0)


# -- 6. a mistyped data directory is not a new till ------------------------------------------


@pytest.mark.parametrize(
    "command",
    [
        ("issue", "{sale}"),
        ("special", "KASSE-1", "null"),
        ("outage", "recover", "KASSE-1"),
        ("outage", "report", "1", "--reference", "FON-1"),
        ("checks", "list"),
        ("checks", "done", "KASSE-1", "start", "--reference", "BC-1"),
        ("outage", "show", "1"),
        ("outage", "export", "1", "-o", "{out}"),
        ("receipts", "list", "--register", "KASSE-1"),
        ("receipts", "show", "KASSE-1", "1"),
        ("export", "dep", "--register", "KASSE-1", "-o", "{out}/dep.json"),
        ("export", "crypto-container", "--register", "KASSE-1", "-o", "{out}/c.json"),
        ("unit", "list"),
        ("simulate", "unit", "down"),
        ("reprint", "KASSE-1", "1"),
    ],
)
@pytest.mark.parametrize("exists", [False, True], ids=["missing", "empty"])
def test_commands_on_a_till_create_no_database(
    run: Run, tmp_path: Path, command: tuple[str, ...], exists: bool
) -> None:
    """``issue sale.json --data-dir /tmp/typo`` created till.sqlite3 and agent.lock there
    and then said register-unknown: exit 6 naming the directory, and it stays as it was."""
    typo = tmp_path / "typo"
    if exists:
        typo.mkdir()
    sale_file = tmp_path / "sale.json"
    sale_file.write_text(json.dumps(sale()))
    args = [a.format(sale=sale_file, out=tmp_path / "out") for a in command]
    if args[0] == "reprint":
        config = tmp_path / "till.toml"
        config.write_text(f'data_dir = "{typo}"\n', encoding="utf-8")
        args += ["--config", str(config)]
    else:
        args += ["--data-dir", str(typo)]
    result = expect(run(*args), 6)
    assert f"no till database in {typo}" in flat(result.stderr)
    made = {"sale.json", "till.toml", "typo"} if exists else {"sale.json", "till.toml"}
    assert {p.name for p in tmp_path.iterdir()} <= made  # (no out/, no typo/ made)
    assert not exists or _files(typo) == []


# -- 7. the exit codes in agent/cli.py are the README's ---------------------------------------


def test_the_exit_codes_in_the_cli_docstring_are_the_readmes() -> None:
    """The module docstring listed other codes (2 only usage, 5 only damaged or locked, no
    word of a register that exists or a data directory without a database)."""
    import agent.cli

    readme = flat((Path(__file__).parents[2] / "README.md").read_text(encoding="utf-8"))
    start = readme.index("Exit codes: 0 ok")
    end = readme.index("(there the configuration is the input it checks).", start)
    paragraph = readme[start:end] + "(there the configuration is the input it checks)."
    assert paragraph in flat(agent.cli.__doc__ or "")


# -- 8. config check prints through the CLI's own consoles -----------------------------------


def test_every_command_module_prints_through_the_shared_consoles() -> None:
    """``cli_config`` had Rich consoles of its own, outside what makes output into a pipe
    whole lines (and whatever the shared consoles learn next)."""
    import importlib
    import pkgutil

    from rich.console import Console

    import agent
    from agent.cli_base import err, out

    modules = [m.name for m in pkgutil.iter_modules(agent.__path__) if m.name.startswith("cli")]
    assert "cli_config" in modules
    for name in modules:
        module = importlib.import_module(f"agent.{name}")
        own = [k for k, v in vars(module).items() if isinstance(v, Console) and v not in (out, err)]
        assert own == [], f"agent.{name} has consoles of its own: {own}"


def test_config_check_lines_are_whole_in_a_pipe(
    run: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    blocker = tmp_path / ("x" * 120)
    blocker.write_text("a file, not a directory")
    config = tmp_path / "c.toml"
    config.write_text(f'data_dir = "{blocker}"\n', encoding="utf-8")
    result = expect(run("config", "check", "--config", config), 3)
    assert result.stderr == f"invalid configuration:\ndata_dir: {blocker} is not a directory\n"
    config.write_text(f'data_dir = "{tmp_path / ("y" * 120)}"\n', encoding="utf-8")
    result = expect(run("config", "check", "--config", config), 0)
    assert result.stdout == f"configuration OK: file {config}\n"


def test_add_pkcs11_of_an_open_system_needs_its_provider(
    run: Run, pkcs11: tuple[str, ...], data_dir: Path
) -> None:
    """Without --zda a card was stored as AT1 (A-Trust) whatever issued its certificate, and
    signed R1-AT1 receipts: exit 3 naming --zda and the providers, nothing stored. A closed
    system (--key-id) is AT0 and needs none."""
    options = list(pkcs11)
    del options[options.index("--zda") : options.index("--zda") + 2]
    cert = data_dir.parent / "cert.pem"
    body = json.loads(expect(run(*options, "--id", "h", "--certificate", cert, "--json"), 3).stdout)
    assert (body["field"], body["rule"]) == ("--zda", "zda-required")
    assert "AT1 (A-Trust), AT2 (GlobalTrust) or AT3 (PrimeSign)" in body["message"]
    assert not data_dir.exists()
    key_id = ("--key-id", "U:ATU12345678-K1")
    closed = flat(expect(run(*options, "--id", "h", *key_id), 2).stderr)
    assert "zda" not in closed  # it got past the provider (to the missing module)
