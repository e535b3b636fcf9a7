"""An exact set of Belegnummern that stays small for the numbers registers really use.

The verifier must notice a Belegnummer used twice anywhere in a DEP, so it remembers
every one it has seen. A ``set`` of strings costs about 100 bytes per receipt (100 MB
for a million). Registers number their receipts 1, 2, 3, ... (ours do, and so do most),
so :class:`ReceiptIdSet` keeps canonical decimal numbers as runs of consecutive values,
two machine integers per run, and only other ids (``R-17``, ``007``) as strings.
"""

from __future__ import annotations

from array import array
from bisect import bisect_right

__all__ = ["ReceiptIdSet"]

_MAX_RUN_VALUE = 2**62  # larger numbers are kept as strings: the runs are int64 arrays


def _as_number(receipt_id: str) -> int | None:
    """The value of a canonical decimal Belegnummer (ASCII digits, no sign, no leading
    zero), else ``None``: ``"007"`` and ``"7"`` are different Belegnummern."""
    if not (receipt_id.isascii() and receipt_id.isdigit()):
        return None
    if len(receipt_id) > 1 and receipt_id[0] == "0":
        return None
    value = int(receipt_id)
    return value if value < _MAX_RUN_VALUE else None


class ReceiptIdSet:
    """Remembers Belegnummern; :meth:`add` tells whether one was new.

    Numbers live in sorted, disjoint, inclusive runs ``starts[i]..ends[i]``; a number
    next to a run extends it, and two runs that meet are merged. A register numbering
    in order needs one run for all its receipts.
    """

    def __init__(self) -> None:
        self._starts = array("q")
        self._ends = array("q")
        self._others: set[str] = set()

    def __len__(self) -> int:
        spans = sum(end - start + 1 for start, end in zip(self._starts, self._ends, strict=True))
        return spans + len(self._others)

    def __contains__(self, receipt_id: object) -> bool:
        if not isinstance(receipt_id, str):
            return False
        value = _as_number(receipt_id)
        if value is None:
            return receipt_id in self._others
        i = bisect_right(self._starts, value) - 1
        return i >= 0 and value <= self._ends[i]

    @property
    def runs(self) -> int:
        """How many runs of consecutive numbers are kept (what the memory grows with)."""
        return len(self._starts)

    def add(self, receipt_id: str) -> bool:
        """Remember ``receipt_id``; ``False`` when it was seen before."""
        value = _as_number(receipt_id)
        if value is None:
            if receipt_id in self._others:
                return False
            self._others.add(receipt_id)
            return True
        starts, ends = self._starts, self._ends
        if starts and ends[-1] + 1 == value:  # the usual case: the next number
            ends[-1] = value
            return True
        i = bisect_right(starts, value) - 1  # the run starting at or before value
        if i >= 0 and value <= ends[i]:
            return False
        joins_left = i >= 0 and ends[i] + 1 == value
        joins_right = i + 1 < len(starts) and starts[i + 1] == value + 1
        if joins_left and joins_right:
            ends[i] = ends[i + 1]
            del starts[i + 1]
            del ends[i + 1]
        elif joins_left:
            ends[i] = value
        elif joins_right:
            starts[i + 1] = value
        else:
            starts.insert(i + 1, value)
            ends.insert(i + 1, value)
        return True
