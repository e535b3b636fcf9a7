"""The verifier's memory of Belegnummern: exact like a set, small for numbered registers."""

from __future__ import annotations

import tracemalloc

from hypothesis import given
from hypothesis import strategies as st

from agent.at_rksv.idset import ReceiptIdSet

_IDS = st.one_of(
    st.integers(min_value=0, max_value=60).map(str),  # runs that grow, meet and merge
    st.integers(min_value=0, max_value=2**64).map(str),  # beyond the int64 runs
    st.sampled_from(["007", "00", "0", "-1", "+1", "1.0", "R-17", "١٢", "²", " 1", ""]),
    st.text(max_size=4),
)


@given(st.lists(_IDS, max_size=200))
def test_it_answers_as_a_set_of_strings_does(ids: list[str]) -> None:
    seen = ReceiptIdSet()
    plain: set[str] = set()
    for receipt_id in ids:
        assert seen.add(receipt_id) == (receipt_id not in plain), receipt_id
        plain.add(receipt_id)
        assert receipt_id in seen
    assert len(seen) == len(plain)
    for probe in ["0", "1", "61", "007", "x", "18446744073709551616"]:
        assert (probe in seen) == (probe in plain)


def test_leading_zeros_and_other_digits_are_other_belegnummern() -> None:
    seen = ReceiptIdSet()
    assert seen.add("7")
    assert seen.add("007")  # a different Belegnummer, not the 7 again
    assert seen.add("\u0667")  # an Arabic-Indic seven
    assert not seen.add("007")
    assert not seen.add("7")


def test_runs_merge_when_the_gap_between_them_fills() -> None:
    seen = ReceiptIdSet()
    for number in [1, 2, 3, 7, 8, 5]:
        assert seen.add(str(number))
    assert seen.runs == 3  # 1-3, 5, 7-8
    assert seen.add("4")
    assert seen.add("6")
    assert seen.runs == 1
    assert not any(seen.add(str(n)) for n in range(1, 9))


def test_a_million_numbered_receipts_take_one_run() -> None:
    """What ``set`` held in about 100 MB is one run of two integers."""
    seen = ReceiptIdSet()
    tracemalloc.start()
    try:
        for number in range(1, 1_000_001):
            seen.add(str(number))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert seen.runs == 1
    assert len(seen) == 1_000_000
    assert not seen.add("500000")
    assert peak < 100_000
