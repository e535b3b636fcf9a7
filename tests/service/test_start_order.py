"""``TillService.start``: what a wrong configuration makes fail (the API's address) fails
before the register is created and its signed Startbeleg issued."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from service.conftest import Start

from agent.errors import ConfigurationError
from storage.db import open_till_db


@pytest.fixture(name="taken_port")
def _taken_port() -> Iterator[int]:
    """A loopback port another process listens on."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
        yield int(sock.getsockname()[1])


def _fiscal_rows(data_dir: Path) -> dict[str, int]:
    db = open_till_db(data_dir, writer=False)
    try:
        with db.read_connection() as conn:
            return {
                table: int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])
                for table in ("registers", "receipts", "waiting_specials")
            }
    finally:
        db.close()


NOTHING = {"registers": 0, "receipts": 0, "waiting_specials": 0}


class TestApiAddress:
    def test_a_taken_port_fails_the_start_before_the_register(
        self, start: Start, data_dir: Path, taken_port: int
    ) -> None:
        """The start fails naming the address; no register, no Startbeleg."""
        with pytest.raises(ConfigurationError, match=f"cannot listen on 127.0.0.1:{taken_port}"):
            start(api={"port": taken_port})
        assert _fiscal_rows(data_dir) == NOTHING

    def test_a_missing_socket_directory_fails_the_start_before_the_register(
        self, start: Start, data_dir: Path, tmp_path: Path
    ) -> None:
        socket_path = tmp_path / "no-such-dir" / "api.sock"
        with pytest.raises(ConfigurationError, match="cannot listen on"):
            start(api={"unix_socket": str(socket_path)})
        assert _fiscal_rows(data_dir) == NOTHING

    def test_a_file_in_the_sockets_place_fails_the_start_and_is_kept(
        self, start: Start, data_dir: Path, tmp_path: Path
    ) -> None:
        path = tmp_path / "api.sock"
        path.write_text("mine")
        with pytest.raises(ConfigurationError, match="exists and is not a socket"):
            start(api={"unix_socket": str(path)})
        assert _fiscal_rows(data_dir) == NOTHING
        assert path.read_text() == "mine"

    def test_once_the_address_is_free_the_register_is_created(
        self, start: Start, data_dir: Path
    ) -> None:
        """A refused start leaves nothing in the way: the next one creates the register
        and its Startbeleg, and the API (on a socket left over from the check) listens."""
        path = data_dir.parent / "api.sock"
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as stale:
            stale.bind(str(path))  # a crashed agent's
        service = start(api={"unix_socket": str(path)})
        assert service.api is not None
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.connect(str(path))
        assert _fiscal_rows(data_dir) == {**NOTHING, "registers": 1, "receipts": 1}
