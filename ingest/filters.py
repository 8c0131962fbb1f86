"""The metadata filter language shared by the API, the CLI and chat, for both retrieval stages.

A filter is a JSON object; every key must match (AND):

    {"document_id": "x" | ["x", "y"],           # alias: doc_id
     "source": "a.pdf" | ["a.pdf", "b.pdf"],
     "ingested_at": {"gte": 1700000000, "lt": "2024-06-01T00:00:00Z"},
     "<user metadata key>": value | [values] | {"gt": .., "gte": .., "lt": .., "lte": ..}}

A scalar means equality, a list means "any of" (all of one type), an object is a range (its bounds
AND-ed). Values are strings, numbers or booleans. `ingested_at` bounds may be epoch seconds or ISO-8601
(a time without a zone is UTC). `parse_filters` checks the object once and returns a `MetadataFilter`.
The vector index is the one place that evaluates it (`VectorIndex.nearest` and `matching_ids`), so the
dense and the BM25 stage cannot disagree on what a filter means: BM25 receives the allowed chunk ids.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

Scalar = str | int | float | bool

_ALIASES = {"document_id": "doc_id"}
_RANGE_OPS = {"gt": "$gt", "gte": "$gte", "lt": "$lt", "lte": "$lte"}
# Chunk metadata that describes storage, not content: filtering on it is almost surely a mistake.
_NOT_FILTERABLE = frozenset({"content_hash", "version"})
_MAX_VALUES = 1000


class FilterError(ValueError):
    """A filter object that is not valid; the message says which key and why (the API answers 400)."""


@dataclass(frozen=True)
class Condition:
    """One key's test: equality with any of `values`, or a range (`ops` maps gt/gte/lt/lte to a number)."""

    key: str
    values: tuple[Scalar, ...] = ()
    ops: tuple[tuple[str, int | float], ...] = ()

    def to_where(self) -> dict[str, Any]:
        if self.ops:
            parts = [{self.key: {_RANGE_OPS[op]: bound}} for op, bound in self.ops]
            return parts[0] if len(parts) == 1 else {"$and": parts}
        if len(self.values) == 1:
            return {self.key: {"$eq": self.values[0]}}
        return {self.key: {"$in": list(self.values)}}


@dataclass(frozen=True)
class MetadataFilter:
    """A parsed filter; `where` is its Chroma form (the Chroma adapter is its one evaluator)."""

    conditions: tuple[Condition, ...]

    @property
    def where(self) -> dict[str, Any] | None:
        parts = [c.to_where() for c in self.conditions]
        # Chroma wants a bare condition for one key and $and for several.
        flat: list[dict[str, Any]] = []
        for part in parts:
            flat.extend(part["$and"] if "$and" in part else [part])
        if not flat:
            return None
        return flat[0] if len(flat) == 1 else {"$and": flat}

    def __bool__(self) -> bool:
        return bool(self.conditions)


def parse_filters(raw: Mapping[str, Any] | MetadataFilter | None) -> MetadataFilter | None:
    """Check a filter object and compile it; None or {} means no filter. Raises FilterError."""
    if raw is None or isinstance(raw, MetadataFilter):
        return raw or None
    if not isinstance(raw, Mapping):
        raise FilterError(f"filters must be a JSON object, not {type(raw).__name__}")
    conditions: list[Condition] = []
    for name, value in raw.items():
        if not isinstance(name, str) or not name:
            raise FilterError("filter keys must be non-empty strings")
        key = _ALIASES.get(name, name)
        if key in _NOT_FILTERABLE or key.startswith("$"):
            raise FilterError(f"filter key {name!r} is not filterable")
        conditions.append(_condition(name, key, value))
    return MetadataFilter(tuple(conditions)) if conditions else None


def _condition(name: str, key: str, value: Any) -> Condition:
    if isinstance(value, Mapping):
        return Condition(key, ops=_range(name, key, value))
    if key == "ingested_at":
        raise FilterError('filter "ingested_at" takes a range object, e.g. {"gte": "2024-01-01T00:00:00Z"}')
    if isinstance(value, list | tuple):
        if not value:
            raise FilterError(f"filter {name!r}: the list of values is empty")
        if len(value) > _MAX_VALUES:
            raise FilterError(f"filter {name!r}: at most {_MAX_VALUES} values")
        values = tuple(_scalar(name, v) for v in value)
        if len({_kind(v) for v in values}) > 1:
            raise FilterError(
                f"filter {name!r}: list values must all be of one type (integers and decimals are two types)"
            )
        return Condition(key, values=values)
    return Condition(key, values=(_scalar(name, value),))


def _range(name: str, key: str, bounds: Mapping[str, Any]) -> tuple[tuple[str, int | float], ...]:
    if not bounds:
        raise FilterError(f"filter {name!r}: the range object is empty")
    unknown = sorted(set(bounds) - set(_RANGE_OPS))
    if unknown:
        raise FilterError(f"filter {name!r}: unknown range operator(s) {unknown}; use gt, gte, lt, lte")
    ops: list[tuple[str, int | float]] = []
    for op, bound in bounds.items():
        number: int | float
        if key == "ingested_at" and isinstance(bound, str):
            number = _parse_time(name, bound)
        elif _is_number(bound):
            number = bound
        else:
            raise FilterError(f"filter {name!r}: range bound {op!r} must be a number, got {bound!r}")
        ops.append((op, number))
    return tuple(ops)


def _parse_time(name: str, text: str) -> float:
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00") if text.endswith("Z") else text)
    except ValueError as exc:
        raise FilterError(f"filter {name!r}: {text!r} is not epoch seconds or an ISO-8601 time") from exc
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def _scalar(name: str, value: Any) -> Scalar:
    if isinstance(value, str | bool | int | float) and value is not None:
        return value
    raise FilterError(f"filter {name!r}: values must be strings, numbers or booleans, got {value!r}")


def _kind(value: Scalar) -> type:
    return type(value)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
