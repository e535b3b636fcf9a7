"""A pull reader for one large JSON document: values are decoded one at a time.

The standard library decodes each value (``JSONDecoder.raw_decode``); this module only
walks the punctuation between them, reading the file in chunks, so that an array of a
million strings is read holding one chunk and one string. The encoding is detected as
``json.loads`` does for bytes (UTF-8 with or without BOM, UTF-16, UTF-32).

Every way a document can be broken, including nesting deeper than the decoder can
recurse, integers longer than ``int()`` converts and the ``NaN``, ``Infinity`` and
``-Infinity`` that ``json`` reads but JSON does not have, raises :class:`JsonStreamError`
(:func:`json_error`), naming the line and column in the whole document where the reader
knows it; :func:`load` reads a small document whole the same way.
"""

from __future__ import annotations

import codecs
import json
import re
import sys
from collections.abc import Callable, Iterator
from typing import IO, NoReturn

__all__ = ["JsonReader", "JsonStreamError", "json_error", "load", "refuse_constant"]

_SPACE = re.compile(r"[ \t\n\r]*")
# a string, or a constant that is not JSON: outside strings, N and I begin nothing else
_CONSTANT = re.compile(r'"(?:[^"\\]|\\.)*"|(-?Infinity|NaN)', re.DOTALL)


class _NotJson(ValueError):
    """``json`` met ``NaN``, ``Infinity`` or ``-Infinity``."""

    def __init__(self, name: str) -> None:
        super().__init__(f"{name} is not a JSON value")
        self.name = name


def refuse_constant(name: str) -> NoReturn:
    """``parse_constant`` for :mod:`json`: ``NaN`` and the infinities are not JSON."""
    raise _NotJson(name)


_DECODER = json.JSONDecoder(parse_constant=refuse_constant)
MAX_VALUE = 1 << 24  # characters: no single value of a DEP comes near (a receipt: ~400)


class JsonStreamError(ValueError):
    """The document is not valid JSON, or not the structure the caller expects."""


def json_error(exc: ValueError | RecursionError) -> JsonStreamError:
    """The :class:`JsonStreamError` for what ``json`` raised while decoding a document."""
    if isinstance(exc, RecursionError):
        return JsonStreamError("not valid JSON: nested too deeply")
    if isinstance(exc, json.JSONDecodeError | UnicodeDecodeError | _NotJson):
        return JsonStreamError(f"not valid JSON: {exc}")
    # the one other ValueError of decoding: int() refuses a longer number (CVE-2020-10735)
    limit = sys.get_int_max_str_digits()
    return JsonStreamError(f"not valid JSON: a number has more than {limit} digits")


def load(fp: IO[bytes] | IO[str]) -> object:
    """Decode the one JSON document in ``fp`` as :meth:`JsonReader.value` decodes a value:
    at most :data:`MAX_VALUE` characters are held, whatever the file holds.

    Raises:
        JsonStreamError: ``fp`` is not one JSON document.
    """
    reader = JsonReader(fp)
    document = reader.value()
    reader.end()
    return document


class JsonReader:
    """Walks one JSON document in ``fp``: :meth:`start_object` / :meth:`members`,
    :meth:`start_array` / :meth:`elements`, and :meth:`value` for anything else.

    Args:
        fp: the document, binary or text.
        chunk: how much to read at a time.
        on_read: called with the size of every chunk read (progress).
    """

    def __init__(
        self,
        fp: IO[bytes] | IO[str],
        *,
        chunk: int = 1 << 18,
        on_read: Callable[[int], None] | None = None,
    ) -> None:
        self._fp = fp
        self._chunk = chunk
        self._on_read = on_read
        self._decode: Callable[[bytes, bool], str] | None = None
        self._buf = ""
        self._pos = 0
        self._eof = False
        # where the buffer begins in the document: characters, lines, and its line's start
        self._offset = 0
        self._line = 1
        self._line_start = 0

    # -- reading ------------------------------------------------------------------------

    def _more(self) -> bool:
        """Append the next chunk to the buffer (dropping what was consumed)."""
        if self._eof:
            return False
        data = self._fp.read(self._chunk)
        if self._on_read is not None:
            self._on_read(len(data))
        text = data if isinstance(data, str) else self._text(data)
        if not data:
            self._eof = True
        lines = self._buf.count("\n", 0, self._pos)
        if lines:
            self._line += lines
            self._line_start = self._offset + self._buf.rindex("\n", 0, self._pos) + 1
        self._offset += self._pos
        self._buf = self._buf[self._pos :] + text
        self._pos = 0
        return bool(data)

    def _error(self, message: str, pos: int) -> JsonStreamError:
        """``message`` at index ``pos`` of the buffer, placed in the whole document as
        ``json`` places an error in a string: line, column and character (from 0)."""
        char = self._offset + pos
        newline = self._buf.rfind("\n", 0, pos)
        line = self._line + self._buf.count("\n", 0, pos)
        column = pos - newline if newline >= 0 else char - self._line_start + 1
        return JsonStreamError(
            f"not valid JSON: {message}: line {line} column {column} (char {char})"
        )

    def _constant_at(self, name: str) -> int:
        """The index in the buffer of the constant ``name`` the value just read holds."""
        for match in _CONSTANT.finditer(self._buf, self._pos):
            if match.group(1) == name:
                return match.start()
        return self._pos  # not reached: the decoder found it in the buffer

    def _text(self, data: bytes) -> str:
        if self._decode is None:
            decoder = codecs.getincrementaldecoder(json.detect_encoding(data))("surrogatepass")
            self._decode = decoder.decode
        try:
            return self._decode(data, not data)
        except UnicodeDecodeError as exc:
            raise JsonStreamError(f"not valid JSON: {exc}") from exc

    def _peek(self) -> str:
        """The next character that is not white space ("" at the end)."""
        while True:
            self._pos = _SPACE.match(self._buf, self._pos).end()  # type: ignore[union-attr]
            if self._pos < len(self._buf):
                return self._buf[self._pos]
            if not self._more():
                return ""

    def _take(self, char: str) -> bool:
        if self._peek() != char:
            return False
        self._pos += 1
        return True

    # -- the document -------------------------------------------------------------------

    def value(self) -> object:
        """Decode the next complete value (at most :data:`MAX_VALUE` characters, so that
        memory stays bounded also when the document is broken)."""
        self._peek()
        while True:
            try:
                value, end = _DECODER.raw_decode(self._buf, self._pos)
            except json.JSONDecodeError as exc:
                if len(self._buf) - self._pos <= MAX_VALUE and self._more():
                    continue  # cut off by the chunk boundary, most likely
                raise self._error(exc.msg, exc.pos) from exc
            except _NotJson as exc:
                raise self._error(str(exc), self._constant_at(exc.name)) from exc
            except (ValueError, RecursionError) as exc:  # more text will not help
                raise json_error(exc) from exc
            if end == len(self._buf) and self._more():
                continue  # a number or literal may go on in the next chunk
            self._pos = end
            return value

    def start_object(self) -> bool:
        """Enter an object if one comes next; ``False`` (nothing consumed) if not."""
        return self._take("{")

    def start_array(self) -> bool:
        """Enter an array if one comes next; ``False`` (nothing consumed) if not."""
        return self._take("[")

    def members(self) -> Iterator[str]:
        """The keys of the object just entered; consume each key's value before the next."""
        if self._take("}"):
            return
        while True:
            key = self.value()
            if not isinstance(key, str) or not self._take(":"):
                raise JsonStreamError("not valid JSON: expected a key and ':' in an object")
            yield key
            if self._take("}"):
                return
            if not self._take(","):
                raise JsonStreamError("not valid JSON: expected ',' or '}' in an object")

    def elements(self) -> Iterator[int]:
        """Indexes of the array just entered; consume each item before the next."""
        if self._take("]"):
            return
        index = 0
        while True:
            yield index
            if self._take("]"):
                return
            if not self._take(","):
                raise JsonStreamError("not valid JSON: expected ',' or ']' in an array")
            index += 1

    def end(self) -> None:
        """Only white space may follow the document."""
        if self._peek():
            raise JsonStreamError("not valid JSON: extra data after the document")
