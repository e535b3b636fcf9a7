"""Defects of the command line found by a user audit, each pinned by the test that found it:
a service whose local API cannot be reached, exports into missing directories, exit codes,
``export dep`` dates, output into pipes and files, and the flags in ``--help``."""

from __future__ import annotations

import json
import re
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from typer.testing import Result

from agent.errors import NotFound
from agent.receipts import ReceiptService
from factories import VECTORS, Run, box_words, expect, flat, sale
from storage import TillDB


def _help(result: Result) -> str:
    """The words of a Rich help screen, without its box (its lines may break anywhere)."""
    return box_words(expect(result, 0).stdout)


# -- 1. the service's local API cannot be reached -------------------------------------------


@pytest.fixture(name="locked")
def _locked(data_dir: Path, open_db: Callable[..., TillDB]) -> Path:
    """A data directory whose writer lock another holder (standing in for `till-agent run`)
    has, with the API token the service would have written."""
    open_db(data_dir)
    (data_dir / "api-token").write_text("token\n", encoding="utf-8")
    return data_dir


@pytest.fixture(name="refusing_port")
def _refusing_port() -> Iterator[int]:
    """A loopback port that is bound but not listening: a connection is refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield int(sock.getsockname()[1])


def _serve(handle: Callable[[socket.socket, threading.Event], None]) -> Iterator[int]:
    """A loopback TCP server that hands each connection to ``handle`` (with the event set
    when the server stops); yields its port."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.05)  # accept() looks at ``stop`` this often
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            with conn:
                handle(conn, stop)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield int(server.getsockname()[1])
    finally:
        stop.set()
        thread.join(timeout=5)
        server.close()


@pytest.fixture(name="hanging_port")
def _hanging_port() -> Iterator[int]:
    """A server that reads the request and never answers (the client times out)."""

    def hang(conn: socket.socket, stop: threading.Event) -> None:
        conn.recv(65536)
        stop.wait(30)

    yield from _serve(hang)


@pytest.fixture(name="closing_port")
def _closing_port() -> Iterator[int]:
    """A server that closes every connection without a word (a protocol error)."""
    yield from _serve(lambda conn, _: conn.recv(65536) and None)


def _config(tmp_path: Path, data_dir: Path, api: str) -> Path:
    path = tmp_path / "till.toml"
    path.write_text(f'data_dir = "{data_dir}"\n[api]\n{api}\n', encoding="utf-8")
    return path


def test_reprint_names_the_unreachable_api_and_how_to_point_at_it(
    run: Run, locked: Path, refusing_port: int, tmp_path: Path
) -> None:
    """Nothing listens where the configuration says: exit 2 naming the address and the
    ways to name the service's configuration, not a traceback."""
    config = _config(tmp_path, locked, f"port = {refusing_port}")
    result = expect(run("reprint", "KASSE-1", "2", "--config", config), 2)
    message = flat(result.stderr)
    assert f"http://127.0.0.1:{refusing_port}" in message
    assert "ConnectError" in message
    assert "--config FILE (or TILL_AGENT_CONFIG)" in message
    assert "TILL_AGENT_API__PORT" in message
    body = json.loads(
        expect(run("reprint", "KASSE-1", "2", "--config", config, "--json"), 2).stdout
    )
    assert body["error"] == "ConfigurationError"
    assert f"http://127.0.0.1:{refusing_port}" in body["message"]


# httpcore 1.0.9 leaves the socket of a failed unix-socket connect to the garbage collector
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_outage_report_names_the_unreachable_unix_socket(
    run: Run, locked: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``outage report`` finds the service through TILL_AGENT_CONFIG and says so."""
    socket_path = tmp_path / "nobody.sock"
    monkeypatch.setenv(
        "TILL_AGENT_CONFIG", str(_config(tmp_path, locked, f'unix_socket = "{socket_path}"'))
    )
    args = ("outage", "report", "1", "--reference", "X", "--data-dir", locked)
    message = flat(expect(run(*args), 2).stderr)
    assert str(socket_path) in message
    assert "TILL_AGENT_CONFIG naming the service's configuration" in message
    body = json.loads(expect(run(*args, "--json"), 2).stdout)
    assert str(socket_path) in body["message"]


@pytest.mark.parametrize(
    "command",
    [
        ("outage", "report", "1", "--reference", "X"),
        ("checks", "done", "KASSE-1", "start", "--reference", "X"),
    ],
)
def test_a_service_without_its_api_is_a_clean_error(
    run: Run,
    locked: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    command: tuple[str, ...],
) -> None:
    """The service holds the data directory with ``[api] enabled = false``: nobody can take
    the reference; exit 2 saying so and what to do, not a DataDirLocked traceback."""
    monkeypatch.setenv("TILL_AGENT_CONFIG", str(_config(tmp_path, locked, "enabled = false")))
    result = expect(run(*command, "--data-dir", locked), 2)
    message = flat(result.stderr)
    assert "its local API is disabled" in message
    assert "enable [api]" in message
    assert "Traceback" not in result.stderr


def test_port_0_names_the_address_file(
    run: Run, locked: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With ``port = 0`` the message names the file the service writes its address to,
    not a meaningless ``http://127.0.0.1:0``."""
    monkeypatch.setenv("TILL_AGENT_CONFIG", str(_config(tmp_path, locked, "port = 0")))
    args = ("outage", "report", "1", "--reference", "X", "--data-dir", locked)
    message = flat(expect(run(*args), 2).stderr)
    assert "127.0.0.1:0" not in message
    assert f"named in {locked / 'api-address'}" in message


def test_a_service_that_hangs_up_or_never_answers_is_a_clean_error(
    run: Run, locked: Path, closing_port: int, hanging_port: int, tmp_path: Path
) -> None:
    """Any transport error (here a closed connection, then the client's timeout) is the
    same clean exit 2 naming the address."""
    config = _config(tmp_path, locked, f"port = {closing_port}")
    message = flat(expect(run("reprint", "KASSE-1", "2", "--config", config), 2).stderr)
    assert f"http://127.0.0.1:{closing_port}" in message
    assert "RemoteProtocolError" in message

    config = _config(tmp_path, locked, f"port = {hanging_port}")
    body = json.loads(
        expect(run("reprint", "KASSE-1", "2", "--config", config, "--json"), 2).stdout
    )
    assert f"http://127.0.0.1:{hanging_port}" in body["message"]
    assert "ReadTimeout" in body["message"]


def test_an_unreadable_api_token_is_a_clean_error(
    run: Run, locked: Path, refusing_port: int, tmp_path: Path
) -> None:
    """The token file of the service cannot be read: exit 2 naming it."""
    (locked / "api-token").unlink()
    config = _config(tmp_path, locked, f"port = {refusing_port}")
    message = flat(expect(run("reprint", "KASSE-1", "2", "--config", config), 2).stderr)
    assert f"cannot read the local API token {locked / 'api-token'}" in message


def test_a_reference_is_not_sent_to_the_service_of_another_data_directory(
    run: Run, locked: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """TILL_AGENT_CONFIG names another till's service than the one holding --data-dir:
    exit 2 naming both directories, and that service hears nothing (it would record the
    check or outage report in its own journal, for its register of the same name)."""
    heard: list[bytes] = []

    def answer(conn: socket.socket, _: threading.Event) -> None:
        heard.append(conn.recv(65536))
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}")

    other = tmp_path / "other-till"
    other.mkdir()
    (other / "api-token").write_text("token\n", encoding="utf-8")
    for port in _serve(answer):
        monkeypatch.setenv("TILL_AGENT_CONFIG", str(_config(tmp_path, other, f"port = {port}")))
        for args in (
            ("checks", "done", "KASSE-1", "start", "--reference", "BC-1"),
            ("outage", "report", "1", "--reference", "FON-1"),
        ):
            body = json.loads(expect(run(*args, "--data-dir", locked, "--json"), 2).stdout)
            assert str(locked) in body["message"]
            assert str(other) in body["message"]
    assert heard == []


@pytest.mark.parametrize(
    ("answer", "code", "words"),
    [
        ((b"500 Internal Server Error", b"Internal Server Error"), 1, "HTTP 500"),
        ((b"503 Service Unavailable", b"Service Unavailable"), 1, "HTTP 503"),
        (
            (
                b"503 Service Unavailable",
                b'{"field": "(till)", "rule": "storage", "message": "the disk is full"}',
            ),
            5,
            "the disk is full",
        ),
        (
            (
                b"404 Not Found",
                b'{"field": "(path)", "rule": "not-found", "message": "the service\'s words"}',
            ),
            6,
            "the service's words",
        ),
    ],
    ids=["500-text", "503-text", "503-storage", "404-not-found"],
)
def test_a_service_error_is_its_exit_code_not_a_traceback(
    run: Run,
    locked: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    answer: tuple[bytes, bytes],
    code: int,
    words: str,
) -> None:
    """The service fails the request (a 500, uvicorn's plain 503 when it is saturated, a
    storage failure, a check it does not know): `checks done` exits with the matching code
    and says so, in the service's words."""
    status, text = answer

    def reply(conn: socket.socket, _: threading.Event) -> None:
        conn.recv(65536)
        head = b"HTTP/1.1 %s\r\nContent-Length: %d\r\nConnection: close\r\n\r\n"
        conn.sendall(head % (status, len(text)) + text)

    for port in _serve(reply):
        monkeypatch.setenv("TILL_AGENT_CONFIG", str(_config(tmp_path, locked, f"port = {port}")))
        args = ("checks", "done", "KASSE-1", "start", "--reference", "BC-1", "--data-dir", locked)
        assert words in json.loads(expect(run(*args, "--json"), code).stdout)["message"]


# -- 2. export files: missing directories and paths that cannot be written ------------------


def _export(run: Run, till: Path, what: str, output: Path, *extra: str) -> Result:
    return run("export", what, "--register", "KASSE-1", "-o", output, "--data-dir", till, *extra)


def test_exports_create_their_directories(run: Run, till: Path, tmp_path: Path) -> None:
    """``-o`` into directories that do not exist yet creates them, as ``outage export`` and
    ``simulate scenario`` do, and the export verifies."""
    dep = tmp_path / "new" / "deeper" / "dep.json"
    container = tmp_path / "other" / "c.json"
    assert "2 receipts written" in _export(run, till, "dep", dep).stdout
    expect(_export(run, till, "crypto-container", container), 0)
    assert container.stat().st_mode & 0o777 == 0o600
    expect(run("verify", dep, container), 0)
    assert sorted(p.name for p in dep.parent.iterdir()) == ["dep.json"]


@pytest.mark.parametrize("what", ["dep", "crypto-container"])
def test_an_output_that_cannot_be_written_is_a_clean_error(
    run: Run, till: Path, tmp_path: Path, what: str
) -> None:
    """``-o`` naming a directory, or a path under a file: exit 2 naming the path, and no
    partial or temporary file is left behind."""
    target = tmp_path / "target"
    target.mkdir()
    message = flat(expect(_export(run, till, what, target), 2).stderr)
    assert f"cannot write {target}: Is a directory" in message
    assert list(target.iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "target"]

    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    under = blocker / "dep.json"
    body = json.loads(expect(_export(run, till, what, under, "--json"), 2).stdout)
    assert body["message"] == f"cannot write {under}: {blocker}: not a directory"
    deeper = blocker / "sub" / "dep.json"
    message = flat(expect(_export(run, till, what, deeper), 2).stderr)
    assert f"cannot write {deeper}: {blocker / 'sub'}: Not a directory" in message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "file", "target"]


@pytest.mark.usefixtures("vectors")
def test_simulate_scenario_that_cannot_write_its_results(run: Run, tmp_path: Path) -> None:
    """``simulate scenario`` creates --out as the exports do; one that cannot be written is
    exit 2 naming the path, not a traceback."""
    scenario = VECTORS / "official" / "TESTSUITE_TEST_SZENARIO_1.json"
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    message = flat(expect(run("simulate", "scenario", scenario, "--out", blocker / "x"), 2).stderr)
    assert f"cannot write {blocker / 'x'}: Not a directory" in message
    taken = tmp_path / "out" / "dep-export.json"
    taken.mkdir(parents=True)
    body = json.loads(
        expect(run("simulate", "scenario", scenario, "--out", taken.parent, "--json"), 2).stdout
    )
    assert body["message"] == f"cannot write {taken}: Is a directory"


def test_outage_export_that_cannot_write_its_pack(
    run: Run, with_outage: Path, tmp_path: Path
) -> None:
    """``outage export -o`` under a file, or onto a name taken by a directory: exit 2 naming
    the path, not a traceback."""
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    export = ("outage", "export", "1", "--data-dir", with_outage, "-o")
    message = flat(expect(run(*export, blocker / "pack"), 2).stderr)
    assert f"cannot write {blocker / 'pack'}: Not a directory" in message
    taken = tmp_path / "pack" / "outage-1.json"
    taken.mkdir(parents=True)
    body = json.loads(expect(run(*export, taken.parent, "--json"), 2).stdout)
    assert body["message"] == f"cannot write {taken}: Is a directory"


# -- 3. exit codes as the README's table and the local API have them -------------------------


def test_a_register_closed_by_its_schlussbeleg_refuses_with_exit_4(run: Run, till: Path) -> None:
    """The local API answers 409 (the register's state forbids it): a fiscal refusal, exit
    4, for a zero receipt and for a sale alike; the rule still says why."""
    expect(run("special", "KASSE-1", "closing", "--yes", "--data-dir", till), 0)
    body = json.loads(
        expect(run("special", "KASSE-1", "null", "--json", "--data-dir", till), 4).stdout
    )
    assert (body["field"], body["rule"]) == ("register", "register-closed")
    result = expect(
        run("issue", "-", "--data-dir", till, input=json.dumps(sale(request_id="req-2"))), 4
    )
    assert "closed by its Schlussbeleg" in flat(result.stderr)


def test_a_duplicate_unit_id_is_invalid_input_like_a_duplicate_register(
    run: Run, data_dir: Path
) -> None:
    """The user's input collides: exit 3 naming the id, as ``init`` of an existing register."""
    create = ("unit", "create-software", "--id", "dev", "--data-dir", data_dir)
    expect(run(*create), 0)
    assert "unit 'dev' already exists" in flat(expect(run(*create), 3).stderr)
    body = json.loads(expect(run(*create, "--json"), 3).stdout)
    assert (body["field"], body["rule"]) == ("--id", "unit-exists")
    assert "'dev'" in body["message"]


# -- 4. export dep --from/--to: documented, and an empty export is pointed out ----------------


def test_export_dates_are_documented(run: Run) -> None:
    """``--from``/``--to`` say they are dates, their format, inclusive, and the time zone."""
    text = _help(run("export", "dep", "--help"))
    assert "--from YYYY-MM-DD First day to export (inclusive), a date as 2026-01-31." in text
    assert "the local date in the register's time zone" in text
    assert "--to YYYY-MM-DD Last day to export (inclusive)" in text


def test_export_dates_are_inclusive_local_dates(run: Run, till: Path, tmp_path: Path) -> None:
    """A range from the first receipt's printed date to the last one's holds both."""
    listed = run("receipts", "list", "--register", "KASSE-1", "--json", "--data-dir", till)
    days = sorted(r["issued_at"][:10] for r in json.loads(expect(listed, 0).stdout))
    dep = tmp_path / "dep.json"
    result = _export(run, till, "dep", dep, "--from", days[0], "--to", days[-1], "--json")
    assert json.loads(expect(result, 0).stdout)["receipts"] == 2
    assert result.stderr == ""


def test_an_export_without_receipts_warns(run: Run, till: Path, tmp_path: Path) -> None:
    """A range holding no receipt exports 0 receipts (exit 0) with a warning on stderr."""
    dep = tmp_path / "dep.json"
    dates = ("--from", "2030-01-01", "--to", "2030-01-31")
    result = expect(_export(run, till, "dep", dep, *dates), 0)
    assert "0 receipts written" in result.stdout
    warning = (
        "warning: the export holds no receipt: KASSE-1 has none dated 2030-01-01 to 2030-01-31"
    )
    assert warning in flat(result.stderr)
    body = json.loads(expect(_export(run, till, "dep", dep, *dates, "--json"), 0).stdout)
    assert body["receipts"] == 0


# -- 5. into a pipe or a file: no blank line from the progress bar, no cut or wrapped table ---


@pytest.fixture(name="narrow")
def _narrow(monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever the terminal that runs the tests, Rich would lay out for 80 columns."""
    monkeypatch.setenv("COLUMNS", "80")


def test_export_and_verify_print_only_their_line(
    run: Run, till: Path, tmp_path: Path, narrow: None
) -> None:
    """The progress bar is for a terminal: into a pipe it printed a blank line on stderr."""
    dep, container = tmp_path / "dep.json", tmp_path / "c.json"
    exported = expect(_export(run, till, "dep", dep), 0)
    assert (exported.stdout, exported.stderr) == (f"2 receipts written to {dep}\n", "")
    expect(_export(run, till, "crypto-container", container), 0)
    verified = expect(run("verify", dep, container), 0)
    assert (verified.stdout, verified.stderr) == ("valid: 2 receipts checked\n", "")


def test_tables_into_a_pipe_are_whole(run: Run, with_outage: Path, narrow: None) -> None:
    """``outage list`` (eight columns) cut its dates to ``2026-12-0…`` at 80 columns; into a
    pipe every value is whole, one row a line."""
    data_dir = with_outage
    reference = "FON-2026-12-02-0001-outage-report-of-the-till-in-the-back-office"
    report = ("outage", "report", "1", "--reference", reference, "--data-dir", data_dir)
    expect(run(*report), 0)
    [outage] = json.loads(expect(run("outage", "list", "--json", "--data-dir", data_dir), 0).stdout)
    lines = expect(run("outage", "list", "--data-dir", data_dir), 0).stdout.splitlines()
    [row] = [line for line in lines if "KASSE-1" in line]
    assert outage["started_at"][:19] in row
    assert reference in row
    assert "…" not in row
    assert len(lines) == 5  # top border, header, rule, the row, bottom border


# -- 6. flags in --help take no value ----------------------------------------------------------


@pytest.mark.parametrize(
    ("command", "flags"),
    [
        ((), ["--version", "--help"]),
        (("export", "dep"), ["--json", "--help"]),
        (("receipts", "list"), ["--json", "--help"]),
        (("special",), ["--yes", "--json"]),
        (("outage", "report"), ["--end", "--json"]),
        (("simulate", "scenario"), ["--closed --no-closed", "--json"]),
        (("unit", "create-software"), ["--simulate", "--json"]),
    ],
)
def test_flags_show_no_value_placeholder(
    run: Run, command: tuple[str, ...], flags: list[str]
) -> None:
    """typer 0.29 showed every flag as ``--json <bool>``, as if it took a value."""
    text = _help(run(*command, "--help"))
    assert "<bool>" not in text
    for flag in flags:
        assert re.search(rf"{flag} (?!<)", text), (flag, text)
    assert "<path>" in text or not command  # options that take a value still show its type


def test_reprint_of_an_unknown_receipt_via_the_service_is_the_cores_not_found(
    run: Run, service: ReceiptService, data_dir: Path, tmp_path: Path
) -> None:
    """While the service holds the data directory, ``reprint`` asks its local API: a receipt
    the register does not have is exit 6 in the core's words (the CLI wrote its own copy)."""
    from agent.api import create_app, serve
    from agent.api_backend import ServiceBackend
    from agent.print_worker import PrintWorker
    from agent.printing import FilePrinter

    worker = PrintWorker(service, FilePrinter(tmp_path / "prints"), retry_s=0.0)

    class Printing(ServiceBackend):
        def reprint(self, register: str, number: int) -> int:
            return worker.reprint(register, number)

    (data_dir / "api-token").write_text("token\n", encoding="utf-8")
    with serve(create_app(Printing(service), token="token"), port=0) as server:
        config = _config(tmp_path, data_dir, f"port = {server.port}")
        refused = json.loads(
            expect(run("reprint", "KASSE-1", "99", "--config", config, "--json"), 6).stdout
        )
        copied = json.loads(
            expect(run("reprint", "KASSE-1", "1", "--config", config, "--json"), 0).stdout
        )
    with pytest.raises(NotFound) as core:
        service.row("KASSE-1", 99)
    assert refused == {"error": "NotFound", "message": str(core.value)}
    assert copied == {"register": "KASSE-1", "number": 1, "copy": 1}
