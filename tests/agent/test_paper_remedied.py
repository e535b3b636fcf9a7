"""What the views and the paper say about an unsigned receipt once it is remedied.

The chain service is the real fake on loopback; the receipt stays as it was stored (its
marker JWS, its text), and the views add how it was resolved: the result's
``resolution``, ``replaced_by`` and ``voided_by``, and lines that end with what happened
instead of the note that the signature is uncertain.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from agent.api import ApiServer, create_app, serve
from agent.api_backend import ServiceBackend
from agent.at_rksv import FALLBACK_TEXT
from agent.clock import FrozenClock
from agent.contract import ReceiptResult
from agent.fakes.chain_service import ChainServiceFake, Mode
from agent.print_worker import PrintWorker
from agent.printing import FilePrinter
from agent.printing._layout import Qr, Text, layout
from agent.receipts import ReceiptService
from factories import Run, db_rows, expect, sale

REGISTER = "KASSE-1"
NOTICE = "Signatur ungewiss: wird geklärt"
TOKEN = "test-token-0123456789abcdef"


@pytest.fixture(name="chain_hold")
def _chain_hold() -> float:
    """A lost answer holds its connection briefly: the signing times out at 1.5 s anyway."""
    return 0.2


def _lose(service: ReceiptService, chain: ChainServiceFake, mode: Mode) -> ReceiptResult:
    """Receipt 2, a sale whose request (``lose_request``) or answer (``lose_response``)
    the chain service lost; the service answers again afterwards."""
    chain.mode = mode
    lost = service.issue(sale(request_id="a1"))
    assert (lost.number, lost.signature_state) == (2, "unsigned")
    chain.mode = "up"
    return lost


def _paper(result: ReceiptResult, *, copy: bool = True) -> list[str]:
    return [b.text for b in layout(result, copy=copy) if isinstance(b, Text)]


class TestTheOriginal:
    def test_the_paper_promises_no_re_signing(
        self, chain_service: ReceiptService, chain: ChainServiceFake
    ) -> None:
        """A lost receipt may be adopted, reissued or kept: its paper says the signature is
        uncertain and will be cleared up, after the unit's failure, and nothing more."""
        lost = _lose(chain_service, chain, "lose_request")
        assert lost.lines[-2:] == [FALLBACK_TEXT, NOTICE]
        assert lost.resolution is None
        paper = _paper(lost, copy=False)
        assert paper[-3:-1] == [FALLBACK_TEXT, NOTICE]  # then the QR code
        assert not [line for line in paper if "SIGNIERT" in line or "nachgeholt" in line]


class TestAdopted:
    def test_the_views_say_the_service_signed_it(
        self, chain_service: ReceiptService, chain: ChainServiceFake
    ) -> None:
        """GET and the POS's retry name the resolution; the lines end with it instead of
        the note. The receipt stays as stored: the marker JWS and its QR, which the DEP
        keeps and the next receipt chains over (the service's JWS is the resolution's)."""
        lost = _lose(chain_service, chain, "lose_response")
        assert chain_service.recover(REGISTER) is not None
        got = chain_service.get(REGISTER, 2)
        again = chain_service.issue(sale(request_id="a1"))
        assert got == again
        assert (got.signature_state, got.resolution) == ("unsigned", "adopted")
        assert (got.replaced_by, got.voided_by) == (None, None)
        assert (got.jws, got.qr, got.ocr) == (lost.jws, lost.qr, lost.ocr)
        assert got.lines == [*lost.lines[:-1], "Geklärt: vom Signaturdienst signiert"]
        assert db_rows(chain_service.db, "SELECT jws FROM receipts WHERE number = 2")[0][0] == (
            lost.jws
        )

    def test_a_copy_says_so_and_keeps_the_stored_code(
        self, chain_service: ReceiptService, chain: ChainServiceFake
    ) -> None:
        lost = _lose(chain_service, chain, "lose_response")
        chain_service.recover(REGISTER)
        copy = layout(chain_service.get(REGISTER, 2), copy=True)
        texts = [b.text for b in copy if isinstance(b, Text)]
        assert "Geklärt: vom Signaturdienst signiert" in texts
        assert FALLBACK_TEXT in texts  # its code carries the marker still
        assert NOTICE not in texts
        assert [b.content for b in copy if isinstance(b, Qr)] == [lost.qr]


class TestSuperseded:
    def test_the_views_name_the_replacement_and_the_storno(
        self, chain_service: ReceiptService, chain: ChainServiceFake
    ) -> None:
        """Reissued as 6 after the remedy's Storno 5: GET of 2 says so; the POS asking
        again gets 6, as before."""
        _lose(chain_service, chain, "lose_request")
        issued = chain_service.recover(REGISTER) or []
        assert [(r.number, r.kind) for r in issued][-2:] == [(5, "storno"), (6, "standard")]
        got = chain_service.get(REGISTER, 2)
        assert (got.resolution, got.replaced_by, got.voided_by) == ("superseded", 6, 5)
        assert got.lines[-3:] == [
            FALLBACK_TEXT,
            "Geklärt: ersetzt durch Beleg 6",
            "storniert durch Beleg 5",
        ]
        assert _paper(got)[-4:-2] == ["Geklärt: ersetzt durch Beleg 6", "storniert durch Beleg 5"]
        assert chain_service.issue(sale(request_id="a1")).number == 6
        # the replacement and the Storno are signed receipts: nothing to resolve there
        assert chain_service.get(REGISTER, 6).resolution is None

    def test_a_sale_the_pos_voided_names_only_its_storno(
        self, chain_service: ReceiptService, chain: ChainServiceFake
    ) -> None:
        """The POS voided the unsigned sale meanwhile (Storno 3, a fallback): no
        replacement; its retry gets the original, which says it was voided by 3."""
        _lose(chain_service, chain, "lose_request")
        storno = chain_service.issue(
            {"request_id": "s", "register": REGISTER, "kind": "storno", "voids": 2}
        )
        assert (storno.number, storno.signature_state) == (3, "fallback")
        chain_service.recover(REGISTER)
        again = chain_service.issue(sale(request_id="a1"))
        assert (again.number, again.resolution, again.replaced_by, again.voided_by) == (
            2,
            "superseded",
            None,
            3,
        )
        assert again.lines[-1] == "Geklärt: storniert durch Beleg 3"


def test_a_kept_monatsbeleg_no_longer_promises_a_signature(
    chain_service: ReceiptService, chain: ChainServiceFake, clock: FrozenClock
) -> None:
    """A lost Monatsbeleg stands with the failure marker: resolved ``kept``; its copy
    says it stays unsigned, with no promise of a re-signing."""
    chain.mode = "lose_request"
    clock.set(dt.datetime(2026, 3, 31, 21, 59, 30, tzinfo=dt.UTC))
    [lost] = chain_service.run_closings()
    assert (lost.kind, lost.signature_state) == ("monthly", "unsigned")
    chain.mode = "up"
    clock.set(dt.datetime(2026, 4, 2, 8, 0, tzinfo=dt.UTC))
    chain_service.recover(REGISTER)
    got = chain_service.get(REGISTER, lost.number)
    assert (got.resolution, got.replaced_by, got.voided_by) == ("kept", None, None)
    assert got.lines[-2:] == [FALLBACK_TEXT, "Geklärt: bleibt ohne Signatur"]
    assert NOTICE not in _paper(got)


def test_a_reprint_on_the_printer_says_what_happened(
    chain_service: ReceiptService, chain: ChainServiceFake, tmp_path: Path
) -> None:
    """The worker's copy (the bytes the printer gets, rendered when asked) is of the
    receipt as it stands: the outcome, not the note; the original job is as issued."""
    jobs = tmp_path / "jobs"
    worker = PrintWorker(chain_service, FilePrinter(jobs))
    worker.run_once()  # printing is set up: from here on every receipt is printed
    _lose(chain_service, chain, "lose_request")
    assert worker.run_once() == 1  # receipt 2, unsigned
    chain_service.recover(REGISTER)
    assert worker.run_once() == 4  # 3 to 6
    assert worker.reprint(REGISTER, 2) == 1
    assert worker.run_once() == 1
    original, *_, copy = sorted(jobs.glob("*.bin"))
    assert b"Beleg 2\n" in original.read_bytes()
    assert "wird geklärt".encode("cp858") in original.read_bytes()
    assert b"KOPIE" in copy.read_bytes()
    assert "Geklärt: ersetzt durch Beleg 6".encode("cp858") in copy.read_bytes()
    assert "wird geklärt".encode("cp858") not in copy.read_bytes()


class TestTheLocalApi:
    @pytest.fixture(name="client")
    def _client(self, chain_service: ReceiptService) -> Iterator[httpx.Client]:
        app = create_app(ServiceBackend(chain_service), token=TOKEN)
        server: ApiServer
        with (
            serve(app, port=0) as server,
            httpx.Client(
                base_url=server.url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10
            ) as client,
        ):
            yield client

    def test_get_and_a_repeated_request_carry_the_resolution(
        self, chain_service: ReceiptService, chain: ChainServiceFake, client: httpx.Client
    ) -> None:
        _lose(chain_service, chain, "lose_response")
        chain_service.recover(REGISTER)
        got = client.get(f"/v1/receipts/{REGISTER}/2")
        assert got.status_code == 200
        assert got.json()["resolution"] == "adopted"
        assert got.json()["signature_state"] == "unsigned"
        again = client.post("/v1/receipts", content=json.dumps(sale(request_id="a1")))
        assert (again.status_code, again.json()) == (200, got.json())
        signed = client.get(f"/v1/receipts/{REGISTER}/1").json()
        assert (signed["resolution"], signed["replaced_by"], signed["voided_by"]) == (
            None,
            None,
            None,
        )


class TestTheCommandLine:
    def test_receipts_show_and_list_name_the_resolution(
        self, chain_service: ReceiptService, chain: ChainServiceFake, run: Run, data_dir: Path
    ) -> None:
        _lose(chain_service, chain, "lose_request")
        chain_service.recover(REGISTER)
        shown = expect(run("receipts", "show", REGISTER, "2", "--data-dir", data_dir), 0)
        assert "resolution: superseded by 6, voided by 5" in shown.stdout
        assert "Geklärt: ersetzt durch Beleg 6" in shown.stdout
        assert NOTICE not in shown.stdout
        as_json = json.loads(
            expect(
                run("receipts", "show", REGISTER, "2", "--json", "--data-dir", data_dir), 0
            ).stdout
        )
        assert (as_json["resolution"], as_json["replaced_by"], as_json["voided_by"]) == (
            "superseded",
            6,
            5,
        )
        listed = run("receipts", "list", "--register", REGISTER, "--json", "--data-dir", data_dir)
        items = {i["number"]: i for i in json.loads(expect(listed, 0).stdout)}
        assert (items[2]["resolution"], items[2]["replaced_by"], items[2]["voided_by"]) == (
            "superseded",
            6,
            5,
        )
        assert items[6]["resolution"] is None
        table = expect(run("receipts", "list", "--register", REGISTER, "--data-dir", data_dir), 0)
        assert "superseded by 6, voided by 5" in " ".join(table.stdout.split())
