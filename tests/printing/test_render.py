"""render_escpos: the ESC/POS bytes of real receipts, read back command by command."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable

import pytest
from PIL import Image, ImageOps

from agent.contract import ReceiptResult
from agent.printing import EscposOptions, render_escpos
from agent.receipts import ReceiptService
from factories import qr_codes, sale

Query = Callable[..., list[sqlite3.Row]]

INIT_CP858 = b"\x1b@\x1bt\x13"  # ESC @, then ESC t 19 (PC858 in Epson's numbering)
CUT = b"\x1bd\x06\x1dV\x00"  # feed 6 lines, full cut
QR_STORE = b"1P0"  # GS ( k: cn=49 (QR), fn=80 (store the data), m=48
_NOTICE = "Signatur ungewiss: wird geklärt".encode("cp858")  # bold, after the marker


def _qr_payloads(job: bytes) -> list[bytes]:
    """The data of every native QR 'store' command (``GS ( k pL pH 1 P 0 data``)."""
    found, start = [], 0
    while (at := job.find(b"\x1d(k", start)) != -1:
        length = job[at + 3] | job[at + 4] << 8
        body = job[at + 5 : at + 5 + length]
        if body.startswith(QR_STORE):
            found.append(body[len(QR_STORE) :])
        start = at + 5 + length
    return found


def _raster_image(job: bytes) -> Image.Image:
    """The first ``GS v 0`` raster image of a job, black on white with a quiet zone."""
    at = job.index(b"\x1dv0")
    width_bytes = job[at + 4] | job[at + 5] << 8
    height = job[at + 6] | job[at + 7] << 8
    data = job[at + 8 : at + 8 + width_bytes * height]
    bits = Image.frombytes("1", (width_bytes * 8, height), data)  # PIL: 1 = white
    return ImageOps.expand(ImageOps.invert(bits.convert("L")), border=32, fill=255)


class TestStructure:
    def test_a_job_starts_with_init_and_cp858_and_ends_with_a_cut(
        self, standard: ReceiptResult
    ) -> None:
        """ESC @ then ESC t 19 come first, the cut last, and the code page is never switched."""
        job = render_escpos(standard)
        assert job.startswith(INIT_CP858)
        assert job.endswith(CUT)
        assert job.count(b"\x1bt") == 1
        assert job.count(b"\x1b@") == 1

    def test_umlauts_sharp_s_and_euro_are_cp858_bytes(self, standard: ReceiptResult) -> None:
        """ä, ß, ü and € print as CP858 0x84, 0xE1, 0x81 and 0xD5, never as UTF-8."""
        job = render_escpos(standard)
        assert b"K\x84sekrainer gro\xe1" in job
        assert b"Gutschein 5\xd5 M\x81ller" in job
        assert "€".encode() not in job
        assert "ä".encode() not in job

    def test_every_text_line_of_the_receipt_is_printed(self, standard: ReceiptResult) -> None:
        job = render_escpos(standard)
        for line in standard.lines:
            assert line.encode("cp858") + b"\n" in job

    def test_the_qr_command_carries_exactly_the_machine_readable_code(
        self, standard: ReceiptResult
    ) -> None:
        """One native QR code (model 2, error level M), centred, with receipt.qr as data."""
        job = render_escpos(standard)
        assert _qr_payloads(job) == [standard.qr.encode("ascii")]
        assert b"\x1d(k\x04\x001A2\x00" in job  # model 2
        assert b"\x1d(k\x03\x001E1" in job  # error correction M
        assert job.index(b"\x1ba\x01") < job.index(b"\x1d(k") < job.rindex(b"\x1ba\x00")

    def test_the_code_table_number_follows_the_options(self, standard: ReceiptResult) -> None:
        """Printers that number PC858 differently get their own ESC t; the text stays CP858."""
        job = render_escpos(standard, options=EscposOptions(code_table=16))
        assert job.startswith(b"\x1b@\x1bt\x10")
        assert b"K\x84sekrainer" in job

    def test_an_image_qr_decodes_to_the_machine_readable_code(
        self, fallback: ReceiptResult
    ) -> None:
        """For printers without native QR, the raster image decodes back to receipt.qr."""
        job = render_escpos(fallback, options=EscposOptions(qr="image", qr_size=3))
        assert _qr_payloads(job) == []
        assert qr_codes(_raster_image(job)) == [fallback.qr]


class TestDeterminism:
    def test_the_same_receipt_gives_the_same_bytes(self, standard: ReceiptResult) -> None:
        assert render_escpos(standard) == render_escpos(standard)
        assert render_escpos(standard, copy=True) == render_escpos(standard, copy=True)

    def test_the_stored_receipt_renders_like_the_issued_one(
        self, service: ReceiptService, standard: ReceiptResult
    ) -> None:
        """A reprint from the database is byte-identical to the first print."""
        stored = service.get(standard.register_id, standard.number)
        assert render_escpos(stored) == render_escpos(standard)

    def test_an_earlier_job_leaves_no_state_behind(
        self, standard: ReceiptResult, training: ReceiptResult
    ) -> None:
        first = render_escpos(training)
        render_escpos(standard, options=EscposOptions(code_table=2, qr="image"))
        assert render_escpos(training) == first


class TestLabels:
    def test_a_storno_is_labelled(self, storno: ReceiptResult) -> None:
        assert b"\x1bE\x01*** STORNOBUCHUNG ***\n\x1bE\x00" in render_escpos(storno)

    def test_a_training_receipt_is_labelled(self, training: ReceiptResult) -> None:
        assert b"\x1bE\x01*** TRAININGSBUCHUNG ***\n\x1bE\x00" in render_escpos(training)

    def test_a_fallback_receipt_says_the_unit_failed(self, fallback: ReceiptResult) -> None:
        job = render_escpos(fallback)
        assert job.count(b"Sicherheitseinrichtung ausgefallen") == 1
        assert _qr_payloads(job) == [fallback.qr.encode()]

    def test_a_sammelbeleg_is_labelled_and_signed(self, sammelbeleg: ReceiptResult) -> None:
        job = render_escpos(sammelbeleg)
        assert b"*** SAMMELBELEG ***" in job
        assert b"ausgefallen" not in job

    def test_a_signed_receipt_carries_no_failure_notice(self, standard: ReceiptResult) -> None:
        job = render_escpos(standard)
        assert b"ausgefallen" not in job
        assert b"SIGNIERT" not in job

    def test_an_unsigned_receipt_says_its_signature_is_being_cleared_up(
        self, unsigned: ReceiptResult
    ) -> None:
        """A text stored without the notice gets it, bold; it promises no re-signing (the
        receipt may be adopted, reissued or kept as it is)."""
        job = render_escpos(unsigned)
        assert b"\x1bE\x01" + _NOTICE + b"\n\x1bE\x00" in job
        assert b"SIGNIERT" not in job
        assert b"nachgeholt" not in job

    def test_an_unsigned_receipt_stored_with_the_old_promise_prints_the_notice(
        self, unsigned: ReceiptResult
    ) -> None:
        """A text stored by an earlier version ends with "wird nachsigniert oder ersetzt":
        while the receipt waits for its remedy, its copy says the notice instead."""
        marked = [*unsigned.lines, "Sicherheitseinrichtung ausgefallen"]
        promised = [*marked, "Signatur ungewiss:", "wird nachsigniert oder ersetzt"]
        job = render_escpos(unsigned.model_copy(update={"lines": promised}))
        assert job == render_escpos(unsigned.model_copy(update={"lines": marked}))
        assert job.count(_NOTICE) == 1
        assert b"nachsigniert" not in job

    def test_an_unsigned_receipt_says_the_unit_failed(
        self, service: ReceiptService, issued_unsigned: ReceiptResult
    ) -> None:
        """Its code carries the failure marker like a fallback's: the paper says so, bold,
        once, and that its signature is being cleared up; a reprint prints the same."""
        job = render_escpos(issued_unsigned)
        assert job.count(b"Sicherheitseinrichtung ausgefallen") == 1
        assert b"\x1bE\x01Sicherheitseinrichtung ausgefallen\n\x1bE\x00" in job
        assert b"ausgefallen\n\x1bE\x00\x1bE\x01" + _NOTICE + b"\n" in job
        stored = service.get(issued_unsigned.register_id, issued_unsigned.number)
        assert render_escpos(stored) == job

    def test_an_unsigned_receipt_stored_without_the_notice_gets_it(
        self, unsigned: ReceiptResult
    ) -> None:
        """A text stored before unsigned receipts printed it: the guard adds it, bold."""
        assert "Sicherheitseinrichtung ausgefallen" not in unsigned.lines
        job = render_escpos(unsigned)
        assert b"\x1bE\x01Sicherheitseinrichtung ausgefallen\n\x1bE\x00" in job
        assert job.count(b"Sicherheitseinrichtung ausgefallen") == 1

    def test_a_label_missing_from_the_stored_lines_is_added(self, storno: ReceiptResult) -> None:
        """The labels are guarded: lines without them still print them."""
        bare = storno.model_copy(update={"lines": [storno.lines[0]], "signature_state": "fallback"})
        job = render_escpos(bare)
        assert b"*** STORNOBUCHUNG ***" in job
        assert b"Sicherheitseinrichtung ausgefallen" in job


class TestAmountsPerRate:
    def test_the_job_prints_each_rates_net_tax_and_gross(self, standard: ReceiptResult) -> None:
        """2 x 3,10 at 20 % (tax 1,033 -> 1,03) and 5,00 at 0 %, as a table after the sum."""
        job = render_escpos(standard)
        table = (
            b"MwSt             Netto    Steuer    Brutto\n"
            b"  A 20%           5,17      1,03      6,20\n"
            b"  D 0%            5,00      0,00      5,00\n"
        )
        assert b"SUMME EUR                            11,20\n  cash" in job
        assert table in job

    def test_a_storno_prints_them_negative(self, storno: ReceiptResult) -> None:
        job = render_escpos(storno)
        assert b"  A 20%          -5,17     -1,03     -6,20\n" in job
        assert b"  D 0%           -5,00      0,00     -5,00\n" in job

    def test_a_sammelbeleg_prints_no_rates(self, sammelbeleg: ReceiptResult) -> None:
        assert b"MwSt" not in render_escpos(sammelbeleg)
        assert not any("%" in line for line in sammelbeleg.lines)


class TestCopy:
    def test_a_copy_is_marked_and_keeps_the_original_content(self, standard: ReceiptResult) -> None:
        original, copy = render_escpos(standard), render_escpos(standard, copy=True)
        assert b"KOPIE" not in original
        assert b"Kopie - kein Originalbeleg" not in original
        assert b"\x1b!0\x1bE\x01KOPIE\n" in copy  # double size, bold
        assert copy.count(b"Kopie - kein Originalbeleg") == 2  # at the top and the bottom
        assert copy.startswith(INIT_CP858)
        assert copy.endswith(CUT)
        assert _qr_payloads(copy) == _qr_payloads(original)
        for line in standard.lines:
            assert line.encode("cp858") in copy


class TestHostileText:
    def test_control_characters_cannot_reach_the_printer(self, standard: ReceiptResult) -> None:
        """A line smuggling ESC @ or GS V prints them as question marks."""
        evil = standard.model_copy(update={"lines": ["A\x1b@B\x1dV\x00C\x7f"]})
        job = render_escpos(evil)
        assert b"A?@B?V?C?\n" in job
        assert job.count(b"\x1b@") == 1

    @pytest.mark.parametrize(
        ("text", "printed"),
        [
            ("Bäckerei \u2013 \u201eMüller\u201c", b'B\x84ckerei - "M\x81ller"'),
            ("Tee ✓ 日本", b"Tee ? ??"),
            ("Dvořák, Čapek, Łukasz, Erdős", b"Dvor\xa0k, Capek, Lukasz, Erdos"),
            ("Cafe\u0301 q\u0301", b"Caf\x82 q"),  # an accent sent apart: joined, or left out
            ("Kaffee ☕ 😀 ❤\ufe0f", b"Kaffee ? ? ?"),
        ],
    )
    def test_characters_outside_cp858_become_look_alikes_or_question_marks(
        self, standard: ReceiptResult, text: str, printed: bytes
    ) -> None:
        job = render_escpos(standard.model_copy(update={"lines": [text]}))
        assert printed + b"\n" in job

    def test_the_printer_gets_base_letters_and_the_receipt_keeps_the_original(
        self, service: ReceiptService, query: Query
    ) -> None:
        """Only the bytes for the printer change: the result, the stored receipt and the
        journal keep what the POS sent."""
        text, cashier = "Schnitzel für Dvořák 😀", "Łucja Wałęsa"
        doc = sale(request_id="names", cashier=cashier)
        doc["lines"][0]["text"] = text
        result = service.issue(doc)
        job = render_escpos(result)
        assert b"Schnitzel f\x81r Dvor\xa0k ?" in job
        assert b"Bediener: Lucja Walesa\n" in job
        for kept in (result, service.get(result.register_id, result.number)):
            assert any(line.startswith(text) for line in kept.lines)
            assert f"Bediener: {cashier}" in kept.lines
        last = "SELECT data FROM journal WHERE kind = 'receipt.issued' ORDER BY seq DESC LIMIT 1"
        (event,) = query(last)
        assert json.loads(event["data"])["lines"][0][0] == text


class TestWidth:
    def test_a_stored_line_wider_than_the_paper_is_wrapped(self, standard: ReceiptResult) -> None:
        """A receipt stored before lines were kept to 42 columns still prints within them."""
        cashier = "Bediener: " + "Maria-Theresia von Habsburg " * 3
        old = standard.model_copy(update={"lines": [cashier.strip(), "x" * 90]})
        job = render_escpos(old)
        assert b"Bediener: Maria-Theresia von Habsburg\nMaria-Theresia von Habsburg" in job
        assert b"\n" + b"x" * 42 + b"\n" + b"x" * 42 + b"\n" + b"x" * 6 + b"\n" in job

    def test_every_printed_line_of_long_texts_fits_the_paper(self, service: ReceiptService) -> None:
        """An 80-character item and cashier: no text line of the job is wider than 42."""
        text = "Bio-Vollkornbrot mit Sonnenblumenkernen, Kürbiskernen und Leinsamen, 1000 g Laib"
        doc = sale(
            request_id="long",
            cashier="C" * 80,
            lines=[{"text": text, "qty": "1", "unit_price": "1.00", "vat": "normal"}],
            payments=[{"method": "cash", "amount": "1.00"}],
        )
        job = render_escpos(service.issue(doc))
        body = job[len(INIT_CP858) : job.index(b"\x1ba\x01")]  # the text before the QR code
        assert max(len(line) for line in body.split(b"\n")) <= 42
        assert b"K\x81rbiskernen und Leinsamen, 1000 g Laib\n" in job

    def test_only_the_receipts_own_headings_are_bold(self, standard: ReceiptResult) -> None:
        """A POS text that wraps onto a line looking like a label is not printed as one."""
        cashier = "Bediener: " + "x" * 31 + " *** STORNOBUCHUNG ***"
        job = render_escpos(standard.model_copy(update={"lines": [cashier]}))
        assert b"\n*** STORNOBUCHUNG ***\n" in job
        assert b"\x1bE\x01" not in job

    def test_a_wrapped_text_equal_to_a_label_is_not_bold(self, service: ReceiptService) -> None:
        """Issued on a standard receipt, a cashier line reading like the Storno or fallback
        label prints plain: only a Storno's title and a fallback's notice are bold."""
        for n, label in enumerate(("*** STORNOBUCHUNG ***", "Sicherheitseinrichtung ausgefallen")):
            result = service.issue(sale(request_id=f"x{n}", cashier="x" * 31 + " " + label))
            assert label in result.lines
            assert b"\x1bE\x01" not in render_escpos(result)
