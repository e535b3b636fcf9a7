"""canonical_json with its C encoder built once gives what JSONEncoder.encode gave."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from storage import canonical
from storage.canonical import canonical_json

PROPERTY = settings(database=None, max_examples=300)

_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()  # NaN and the infinities included: allowed, as json.dumps allows them
    | st.text()  # non-ASCII, controls and lone surrogates
)
_values = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


def _reference(data: Any) -> str:
    """The form canonical_json had: a JSONEncoder's encode, which builds its encoder per call."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


@PROPERTY
@given(st.dictionaries(st.text(), _values, max_size=6))
def test_canonical_json_is_the_form_it_had(data: dict[str, Any]) -> None:
    assert canonical_json(data) == _reference(data)


def test_without_the_c_encoder_it_is_the_same(monkeypatch: pytest.MonkeyPatch) -> None:
    data = {"b": [1.5, float("nan"), None, True], "a": {"Käse": "€\u2028"}, "c": -0.0}
    fast = canonical_json(data)
    monkeypatch.setattr(canonical, "_c_encode", None)
    assert canonical_json(data) == fast == _reference(data)


def test_a_value_json_cannot_write_is_refused_as_before() -> None:
    data = {"a": [1, {"b": object()}]}
    with pytest.raises(TypeError) as before:
        _reference(data)
    with pytest.raises(TypeError) as now:
        canonical_json(data)
    assert str(now.value) == str(before.value)
    assert canonical_json({"a": 1}) == '{"a":1}'  # and the encoder still works afterwards
