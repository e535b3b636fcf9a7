"""``till-agent demo``: the scripted business day, its summary, files and verification."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

import agent.cli_demo  # noqa: F401 - registers `demo` until agent/cli.py imports it
from agent.cli import app
from agent.contract import ReceiptResult
from agent.demo import CONTAINER_FILE, DEP_FILE, DemoResult, run_demo
from factories import qr_codes

DAY = [  # number, kind, state, note
    (1, "start", "signed", ""),
    (2, "standard", "signed", ""),
    (3, "standard", "signed", ""),
    (4, "standard", "fallback", "opens outage 1"),
    (5, "standard", "fallback", "in outage 1"),
    (6, "sammelbeleg", "signed", "Sammelbeleg closes outage 1"),
    (7, "standard", "signed", ""),
    (8, "standard", "unsigned", "opens outage 2; superseded by 13"),
    (9, "standard", "fallback", "in outage 2"),
    (10, "null", "signed", "Nullbeleg: the unit signs again"),
    (11, "sammelbeleg", "signed", "Sammelbeleg closes outage 2"),
    (12, "storno", "signed", "Storno of 8"),  # takes the unsigned 8 back: it counted
    (13, "standard", "signed", "reissue of 8"),
    (14, "storno", "signed", "Storno of 3"),
]


class _Recorder:
    def __init__(self) -> None:
        self.steps: list[tuple[str, str]] = []
        self.receipts: list[ReceiptResult] = []

    def step(self, at: str, text: str) -> None:
        self.steps.append((at, text))

    def receipt(self, result: ReceiptResult) -> None:
        self.receipts.append(result)


def _invoke(*args: str | Path) -> Result:
    return CliRunner().invoke(app, [str(a) for a in args], prog_name="till-agent")


@pytest.fixture(name="played", scope="module")
def _played(tmp_path_factory: pytest.TempPathFactory) -> tuple[DemoResult, _Recorder, Path]:
    """One day played through the API with --out, shared by the tests of the result."""
    out_dir = tmp_path_factory.mktemp("demo") / "out"
    recorder = _Recorder()
    return run_demo(out_dir, recorder), recorder, out_dir


class TestTheDay:
    def test_the_day_has_every_kind_of_trouble_and_its_remedy(
        self, played: tuple[DemoResult, _Recorder, Path]
    ) -> None:
        """Fallback receipts and their Sammelbeleg, an unsigned receipt voided by a Storno and
        superseded by its reissue after a Nullbeleg: receipts and notes are always the same."""
        result, _, _ = played
        assert [(r.number, r.kind, r.state, r.note) for r in result.rows] == DAY
        assert result.rows[7].amount_cents == result.rows[12].amount_cents == 1090
        assert result.rows[11].amount_cents == -1090
        assert result.rows[13].amount_cents == -result.rows[2].amount_cents
        # the turnover counts every sale once: the reissue does not add receipt 8 again
        counted = [r.amount_cents for r in result.rows if r.kind in ("standard", "storno")]
        sales_once = sum(r.amount_cents for r in result.rows if r.number in (2, 3, 4, 5, 7, 8, 9))
        assert sum(counted) == sales_once - result.rows[2].amount_cents

    def test_the_dep_verifies(self, played: tuple[DemoResult, _Recorder, Path]) -> None:
        result, _, _ = played
        assert (result.ok, result.verified_receipts, result.findings) == (True, 14, ())

    def test_every_receipt_is_previewed_once_in_order(
        self, played: tuple[DemoResult, _Recorder, Path]
    ) -> None:
        result, recorder, _ = played
        assert [r.number for r in recorder.receipts] == [row.number for row in result.rows]
        assert "Storno zu Beleg 8" in recorder.receipts[11].lines
        assert "Ersatz für unsignierten Beleg 8" in recorder.receipts[12].lines
        times = [at for at, _ in recorder.steps]
        assert times == sorted(times)  # the narration walks forward through the day

    def test_png_previews_carry_the_qr_code(
        self, played: tuple[DemoResult, _Recorder, Path]
    ) -> None:
        """DIR/previews/ holds one PNG per receipt; its QR code is the receipt's."""
        result, recorder, out_dir = played
        assert [p.name for p in result.previews] == [f"receipt-{n:03d}.png" for n in range(1, 15)]
        assert all(p.parent == out_dir / "previews" for p in result.previews)
        assert qr_codes(result.previews[11]) == [recorder.receipts[11].qr]

    def test_without_out_nothing_is_left(self) -> None:
        result = run_demo()
        assert (result.ok, result.out_dir, result.previews) == (True, None, ())
        assert result.as_dict()["files"] is None


class TestDemoCommand:
    def test_the_command_narrates_summarises_and_leaves_verifiable_files(
        self, tmp_path: Path
    ) -> None:
        out_dir = tmp_path / "out"
        result = _invoke("demo", "--out", out_dir)
        assert result.exit_code == 0, result.output
        text = result.stdout
        assert "DEP verified: 14 receipts, 0 findings" in text
        for word in ("fallback", "sammelbeleg", "unsigned", "superseded", "reissue of 8"):
            assert word in text
        assert "SAMMELBELEG" in text  # the receipt preview
        assert "QR code payload:" in text
        assert "_R1-AT1_DEMO-1_1_2026-03-13T08:00:00_" in text
        verified = _invoke("verify", out_dir / DEP_FILE, out_dir / CONTAINER_FILE, "--json")
        assert verified.exit_code == 0, verified.output
        assert json.loads(verified.stdout)["receipts"] == 14
        assert (out_dir / CONTAINER_FILE).stat().st_mode & 0o077 == 0

    def test_json_is_a_machine_summary(self) -> None:
        """--json prints only the summary: every receipt, its state and note, the verdict."""
        result = _invoke("demo", "--json")
        assert result.exit_code == 0, result.output
        data = json.loads(result.stdout)
        assert data["ok"] is True
        assert data["dep"] == {"receipts": 14, "findings": []}
        receipts = data["receipts"]
        assert [(r["number"], r["kind"], r["state"], r["note"]) for r in receipts] == DAY

    def test_python_m_agent_demo_out(self, tmp_path: Path) -> None:
        """The module entry point runs the whole day in a fresh process."""
        out_dir = tmp_path / "out"
        done = subprocess.run(
            [sys.executable, "-m", "agent", "demo", "--out", str(out_dir)],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        assert "DEP verified: 14 receipts, 0 findings" in done.stdout
        check = subprocess.run(
            [
                sys.executable,
                "-m",
                "agent",
                "verify",
                str(out_dir / DEP_FILE),
                str(out_dir / CONTAINER_FILE),
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert check.returncode == 0, check.stdout + check.stderr
        assert "valid: 14 receipts checked" in check.stdout
