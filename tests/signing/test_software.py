"""The software unit's key files: written whole and on disk before they are used."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from agent.signing import create_software_unit


@pytest.fixture(name="synced")
def _synced(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, bool]]:
    """Every ``os.fsync`` (the real one still runs): the inode and whether a directory."""
    calls: list[tuple[int, bool]] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        info = os.fstat(fd)
        calls.append((info.st_ino, stat.S_ISDIR(info.st_mode)))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return calls


@pytest.mark.parametrize("key_id", [None, "U:ATU12345678-K1"], ids=["open", "closed"])
def test_a_new_unit_is_on_disk_when_it_is_returned(
    tmp_path: Path, synced: list[tuple[int, bool]], key_id: str | None
) -> None:
    """A closed system's key is its signature unit: a power cut after its Startbeleg must
    not take it. Each file's contents are synced, then its directory entry."""
    keys = tmp_path / "keys"
    key, cert = create_software_unit(keys, name="u", key_id=key_id)
    files = [key] if cert is None else [key, cert]
    directory = (keys.stat().st_ino, True)
    for file in files:
        contents = synced.index((file.stat().st_ino, False))
        assert directory in synced[contents:], f"{file.name}: its directory was not synced"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert sorted(p.name for p in keys.iterdir()) == sorted(f.name for f in files)  # no temp


def test_an_existing_key_is_never_overwritten(tmp_path: Path) -> None:
    key, _ = create_software_unit(tmp_path, name="u")
    before = key.read_bytes()
    with pytest.raises(FileExistsError):
        create_software_unit(tmp_path, name="u")
    assert key.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["u.cert.pem", "u.key.pem"]


@pytest.mark.parametrize("name", ["../../evil", "a/b", "", ".", "..", "x_y", "a" * 65, "a\x00b"])
def test_a_unit_name_cannot_leave_its_directory(tmp_path: Path, name: str) -> None:
    """The unit id names the key file: a path in it would write keys anywhere."""
    keys = tmp_path / "data" / "keys"
    with pytest.raises(ValueError, match="unit id"):
        create_software_unit(keys, name=name)
    assert list(tmp_path.rglob("*.pem")) == []
