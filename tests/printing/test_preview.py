"""render_png: the support preview decodes to the receipt's QR code and is deterministic."""

from __future__ import annotations

import io

from PIL import Image

from agent.contract import ReceiptResult
from agent.printing import render_png
from factories import qr_codes

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class TestPreview:
    def test_the_preview_qr_decodes_to_exactly_the_machine_readable_code(
        self, standard: ReceiptResult
    ) -> None:
        png = render_png(standard)
        assert png.startswith(PNG_SIGNATURE)
        assert qr_codes(png) == [standard.qr]

    def test_a_fallback_preview_decodes_too(self, fallback: ReceiptResult) -> None:
        """The failure marker makes the code longer; it still decodes."""
        assert qr_codes(render_png(fallback)) == [fallback.qr]

    def test_the_same_receipt_gives_the_same_png(self, storno: ReceiptResult) -> None:
        assert render_png(storno) == render_png(storno)
        assert render_png(storno, copy=True) == render_png(storno, copy=True)

    def test_a_copy_preview_differs_and_still_decodes(self, training: ReceiptResult) -> None:
        """The copy marking adds lines above and below: a taller picture, same code."""
        original, copy = render_png(training), render_png(training, copy=True)
        with Image.open(io.BytesIO(original)) as a, Image.open(io.BytesIO(copy)) as b:
            assert a.width == b.width
            assert b.height > a.height
        assert qr_codes(copy) == [training.qr]

    def test_a_receipt_without_code_gives_a_text_only_preview(
        self, standard: ReceiptResult
    ) -> None:
        png = render_png(standard.model_copy(update={"qr": ""}))
        assert qr_codes(png) == []

    def test_a_line_wider_than_the_paper_is_drawn_wrapped(self, standard: ReceiptResult) -> None:
        """A stored line of 90 columns is drawn on three rows, not cut at the edge."""
        wide = standard.model_copy(update={"lines": ["x" * 90]})
        wrapped = standard.model_copy(update={"lines": ["x" * 42, "x" * 42, "x" * 6]})
        assert render_png(wide) == render_png(wrapped)

    def test_letters_outside_cp858_are_drawn_as_on_paper(self, standard: ReceiptResult) -> None:
        """The preview shows what the printer prints: base letters, "?" for an emoji."""
        names = standard.model_copy(update={"lines": ["Dvořák Łukasz Erdős 😀"]})
        paper = standard.model_copy(update={"lines": ["Dvorák Lukasz Erdos ?"]})
        assert render_png(names) == render_png(paper)

    def test_an_unsigned_preview_says_the_unit_failed(self, unsigned: ReceiptResult) -> None:
        """Stored with or without the notice, an unsigned receipt's preview shows it, bold
        (the same picture as its text with the notice as the last stored line)."""
        notice = "Sicherheitseinrichtung ausgefallen"
        assert notice not in unsigned.lines
        marked = unsigned.model_copy(update={"lines": [*unsigned.lines, notice]})
        signed = marked.model_copy(update={"signature_state": "signed"})
        assert render_png(unsigned) == render_png(marked)
        assert render_png(marked) != render_png(signed)
