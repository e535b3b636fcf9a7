"""No silent coercion of configuration values: ``port = true`` is not port 1.

Pydantic's lax mode turns ``true`` into ``1``, ``"yes"`` into ``True`` and ``""`` into
the current directory. For a till's configuration each of these is a typo that would
run with a value nobody chose, so the sections validate their scalars with
:func:`refuse_coercion` first.
"""

from __future__ import annotations

import types
from pathlib import Path
from typing import Any, Union, get_args, get_origin

from pydantic import BaseModel, ValidationInfo
from pydantic_core import PydanticCustomError

__all__ = ["refuse_coercion"]


def _kinds(annotation: Any) -> set[Any]:
    if get_origin(annotation) in (Union, types.UnionType):
        return set(get_args(annotation))
    return {annotation}


def refuse_coercion(model: type[BaseModel], value: Any, info: ValidationInfo) -> Any:
    """A ``mode="before"`` validator for every field of ``model``."""
    name = info.field_name
    if name is None or value is None:
        return value
    kinds = _kinds(model.model_fields[name].annotation)
    if bool in kinds:
        if not isinstance(value, bool):
            raise PydanticCustomError("bool_type", "must be true or false")
    elif kinds & {int, float} and isinstance(value, bool):
        raise PydanticCustomError("number_type", "must be a number, not true or false")
    elif Path in kinds and isinstance(value, str):
        if not value.strip():
            raise PydanticCustomError("path_empty", "must not be empty")
        if "\x00" in value:
            raise PydanticCustomError("path_nul", "must not contain a NUL character")
    return value
