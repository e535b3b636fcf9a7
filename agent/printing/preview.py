"""A PNG picture of a print job, for support staff: the same blocks as the ESC/POS bytes.

The text is drawn one character per fixed cell, so columns line up as on the 42-column
paper, in DejaVu Sans Mono (Debian's ``fonts-dejavu-core``). Without it, Pillow's bundled
font stands in; it lacks umlauts and the euro sign, which then show as boxes.
"""

from __future__ import annotations

import functools
import io
from collections.abc import Sequence

import qrcode  # type: ignore[import-untyped]  # qrcode 8 ships no type hints
from PIL import Image, ImageDraw, ImageFont

from agent.contract import ReceiptResult
from agent.printing._layout import Qr, Text, layout

__all__ = ["render_png"]

_COLUMNS = 42
_CELL_W, _CELL_H = 10, 20  # pixels per character cell at font size 16
_FONT_SIZE = 16
_MARGIN = 20
_QR_BOX = 4  # pixels per QR module, as on the paper at qr_size 4
_QR_BORDER = 4  # the quiet zone the QR standard asks for

_FONT_FILES = {False: "DejaVuSansMono.ttf", True: "DejaVuSansMono-Bold.ttf"}

_Font = ImageFont.FreeTypeFont | ImageFont.ImageFont


@functools.cache
def _font(bold: bool, scale: int) -> _Font:
    try:  # Pillow looks in the system font directories for a bare file name
        return ImageFont.truetype(_FONT_FILES[bold], _FONT_SIZE * scale)
    except OSError:
        return ImageFont.load_default(size=_FONT_SIZE * scale)


def _qr_image(content: str) -> Image.Image:
    code = qrcode.QRCode(
        error_correction=qrcode.constants.ERROR_CORRECT_M,
        box_size=_QR_BOX,
        border=_QR_BORDER,
    )
    code.add_data(content)
    code.make(fit=True)
    image: Image.Image = code.make_image().get_image()
    return image.convert("L")


def _draw_text(draw: ImageDraw.ImageDraw, top: int, block: Text) -> int:
    """Draw one line with its top at ``top``; return the height used."""
    scale = 2 if block.big else 1
    cell_w, cell_h = _CELL_W * scale, _CELL_H * scale
    width = len(block.text) * cell_w
    left = _MARGIN + ((_COLUMNS * _CELL_W - width) // 2 if block.center else 0)
    font = _font(block.bold, scale)
    for i, char in enumerate(block.text):
        center = (left + i * cell_w + cell_w // 2, top + cell_h // 2)
        draw.text(center, char, fill=0, font=font, anchor="mm")
    return cell_h


def _height(blocks: list[Text | Qr], qr_images: dict[str, Image.Image]) -> int:
    total = 2 * _MARGIN
    for block in blocks:
        if isinstance(block, Qr):
            total += qr_images[block.content].height
        else:
            total += _CELL_H * (2 if block.big else 1)
    return total


def render_png(receipt: ReceiptResult, *, copy: bool = False, header: Sequence[str] = ()) -> bytes:
    """A PNG of the print job of ``receipt``: same receipt and header, same bytes.

    Args:
        receipt: the stored receipt.
        copy: show the copy marking of a reprint.
        header: the lines above the receipt, centred (``[printer] header``).
    """
    blocks = layout(receipt, copy=copy, header=header)
    qr_images = {b.content: _qr_image(b.content) for b in blocks if isinstance(b, Qr)}
    width = 2 * _MARGIN + _COLUMNS * _CELL_W
    image = Image.new("L", (width, _height(blocks, qr_images)), 255)
    draw = ImageDraw.Draw(image)
    top = _MARGIN
    for block in blocks:
        if isinstance(block, Qr):
            qr_image = qr_images[block.content]
            image.paste(qr_image, ((width - qr_image.width) // 2, top))
            top += qr_image.height
        else:
            top += _draw_text(draw, top, block)
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()
