"""Chroma's rules for metadata, in Python: what it will store, and how a filter compares a stored value.

`ingest.memory_index.MemoryIndex` evaluates filters with these, so the in-memory index and Chroma agree
on what a `MetadataFilter` (ingest/filters.py) selects. Each rule was checked against Chroma 1.5, and the
contract suite (tests/contract/vector_index_contract.py, `FILTER_CASES`) pins the ones callers meet.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable
from typing import Any

from ingest.filters import Condition, MetadataFilter

_I64_MIN, _I64_MAX = -(2**63), 2**63 - 1
_OPS: dict[str, Callable[[Any, Any], bool]] = {
    "eq": operator.eq,
    "gt": operator.gt,
    "gte": operator.ge,
    "lt": operator.lt,
    "lte": operator.le,
}
_SCALARS = (str, int, float, bool)


def storable(metadata: dict[str, Any]) -> dict[str, Any]:
    """`metadata` if Chroma would store it, else ValueError: a non-empty dict whose keys are not reserved
    and whose values are scalars, None (an upsert removes the key) or non-empty lists of one scalar type."""
    if not isinstance(metadata, dict) or not metadata:
        raise ValueError("metadata must be a non-empty dict")
    for key, value in metadata.items():
        if not isinstance(key, str) or not key or key.startswith("#") or key == "chroma:document":
            raise ValueError(f"metadata key {key!r} is not allowed")
        if isinstance(value, list):
            if not value or len({type(v) for v in value}) != 1 or not isinstance(value[0], _SCALARS):
                raise ValueError(f"metadata list {key!r} must be non-empty and of one scalar type")
        elif value is not None and not isinstance(value, _SCALARS):
            raise ValueError(f"metadata value of {key!r} must be a str, int, float, bool, list or None")
    return metadata


def passes(metadata: dict[str, Any], flt: MetadataFilter) -> bool:
    """Whether stored metadata passes every condition of `flt` (an empty filter passes everything)."""
    return all(holds(metadata, c) for c in flt.conditions)


def holds(metadata: dict[str, Any], condition: Condition) -> bool:
    """Whether one condition holds: equal to any of its values, or inside every bound of its range."""
    value = metadata.get(condition.key)
    if condition.ops:
        return all(_compare(value, op, bound) for op, bound in condition.ops)
    return any(_compare(value, "eq", v) for v in condition.values)


def _compare(value: Any, op: str, operand: Any) -> bool:
    """Chroma's test of a stored value against a filter operand. Types never mix (a string never equals
    a number, nor a boolean a number; a missing key or a list never matches), except numbers: an integer
    field sees a decimal operand as Rust's `as i64` casts it, and a decimal field sees an integer operand
    as a decimal."""
    stored, given = _kind(value), _kind(operand)
    if stored is None or given is None:
        return False
    if stored is int and given is float:
        operand = _truncate(operand)
    elif stored is float and given is int:
        operand = float(operand)
    elif stored is not given:
        return False
    return _OPS[op](value, operand)


def _truncate(number: float) -> int:
    """A decimal as Rust's `as i64` reads it: toward zero, saturating at 64 bits (NaN: 0)."""
    if math.isnan(number):
        return 0
    if math.isinf(number):
        return _I64_MAX if number > 0 else _I64_MIN
    return min(max(int(number), _I64_MIN), _I64_MAX)


def _kind(value: Any) -> type | None:
    # bool first: True is an int to Python, never to Chroma.
    for kind in (bool, int, float, str):
        if isinstance(value, kind):
            return kind
    return None
