"""The development unit's files are stored relative to the data directory: a restart
stores nothing anew, and a data directory moved elsewhere starts and signs with them."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

from service.conftest import Start, quiet_config

from agent.service import DEV_UNIT, TillService
from factories import journal_events, sale
from storage.db import DB_FILE


def _stored(data_dir: Path) -> dict[str, object]:
    conn = sqlite3.connect(data_dir / DB_FILE)
    try:
        (config,) = conn.execute("SELECT config FROM units WHERE id = ?", (DEV_UNIT,)).fetchone()
    finally:
        conn.close()
    return dict(json.loads(config))


class TestDevelopmentUnitPaths:
    def test_stored_relative_and_not_stored_again(self, start: Start, data_dir: Path) -> None:
        start().stop()
        service = start()
        stored = _stored(data_dir)
        assert stored["key_file"] == f"keys/{DEV_UNIT}.key.pem"
        assert stored["certificate_file"] == f"keys/{DEV_UNIT}.cert.pem"
        assert len(journal_events(service.db, "unit.stored")) == 1

    def test_a_moved_data_directory_signs(
        self, start: Start, data_dir: Path, tmp_path: Path
    ) -> None:
        """Stopped, moved, started on the new directory: its receipts are signed."""
        start().stop()
        moved = tmp_path / "moved"
        shutil.move(data_dir, moved)
        service = TillService(quiet_config(moved))
        try:
            service.start()
            result = service.backend.issue_sale(json.dumps(sale()).encode())
        finally:
            service.stop()
        assert result.signature_state == "signed"
