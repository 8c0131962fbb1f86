"""The metadata filter language shared by the API, the CLI and chat, for both retrieval stages.

A filter is a JSON object; every key must match (AND):

    {"document_id": "x" | ["x", "y"],           # alias: doc_id
     "source": "a.pdf" | ["a.pdf", "b.pdf"],
     "ingested_at": {"gte": 1700000000, "lt": "2024-06-01T00:00:00Z"},
     "<user metadata key>": value | [values] | {"gt": .., "gte": .., "lt": .., "lte": ..}}

A scalar means equality, a list means "any of" (all of one type), an object is a range (its bounds
AND-ed). Values are strings, numbers or booleans. `ingested_at` bounds may be epoch seconds or ISO-8601
(a time without a zone is UTC). `parse_filters` checks the object once and returns a `MetadataFilter`.

A filter is bounded (`FilterLimits`: keys, values, one value's length, bytes) before anything evaluates it:
Chroma turns each key into a node of one expression tree, and a few thousand keys crash its Rust bindings
(a segfault, the whole server gone). The language is flat by construction (a key holds a scalar, a list of
scalars or one range object of numbers), so nesting deeper than that is refused as a wrong type.
The vector index is the one place that evaluates it (`VectorIndex.nearest` and `matching_ids`), so the
dense and the BM25 stage cannot disagree on what a filter means: BM25 receives the allowed chunk ids.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from ingest.errors import DomainError

Scalar = str | int | float | bool

_ALIASES = {"document_id": "doc_id"}
_RANGE_OPS = {"gt": "$gt", "gte": "$gte", "lt": "$lt", "lte": "$lte"}
# Chunk metadata that describes storage, not content: filtering on it is almost surely a mistake.
_NOT_FILTERABLE = frozenset({"content_hash", "version"})


class FilterError(DomainError, ValueError):
    """A filter object that is not valid; the message says which key and why (the API answers 400)."""

    kind, code = "invalid", "invalid_filter"


@dataclass(frozen=True)
class FilterLimits:
    """How large a filter may be. The defaults are the ceilings the settings may raise a limit to
    (`limits.max_filter_*`): what the retriever enforces for a caller that did not check with its own."""

    max_keys: int = 256
    max_values: int = 4096  # every value of every list, all keys together
    max_value_chars: int = 4096
    max_bytes: int = 262_144  # the filter object as compact JSON
    # Where the numbers come from, for the message ("limits.max_filter_keys").
    prefix: str = "the filter limit"

    def name(self, what: str) -> str:
        return f"limits.max_filter_{what}" if self.prefix == "limits" else self.prefix


# The structural backstop every parse applies; the servers check the (smaller) configured limits first.
CEILINGS = FilterLimits()


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


def parse_filters(
    raw: Mapping[str, Any] | MetadataFilter | None, limits: FilterLimits = CEILINGS
) -> MetadataFilter | None:
    """Check a filter object against `limits` and compile it; None or {} means no filter. Raises
    FilterError, naming the limit a filter is over, before any value is looked at in depth."""
    if raw is None or isinstance(raw, MetadataFilter):
        return raw or None
    if not isinstance(raw, Mapping):
        raise FilterError(f"filters must be a JSON object, not {type(raw).__name__}")
    if len(raw) > limits.max_keys:
        raise FilterError(
            f"filters has {len(raw)} keys, over the limit of {limits.max_keys} ({limits.name('keys')})"
        )
    budget = _Budget(limits)
    conditions: list[Condition] = []
    for name, value in raw.items():
        if not isinstance(name, str) or not name:
            raise FilterError("filter keys must be non-empty strings")
        budget.text(name, name)
        key = _ALIASES.get(name, name)
        if key in _NOT_FILTERABLE or key.startswith("$"):
            raise FilterError(f"filter key {_shown(name)!r} is not filterable")
        conditions.append(_condition(name, key, value, budget))
    # Every part is a checked scalar now, so the encoding is flat and cheap to measure.
    size = len(json.dumps(raw, separators=(",", ":"), ensure_ascii=False).encode())
    if size > limits.max_bytes:
        raise FilterError(
            f"filters is {size} bytes as JSON, over the limit of {limits.max_bytes} ({limits.name('bytes')})"
        )
    return MetadataFilter(tuple(conditions)) if conditions else None


class _Budget:
    """Counts a filter's values against its limits while it is parsed."""

    def __init__(self, limits: FilterLimits):
        self.limits = limits
        self.values = 0

    def text(self, name: str, value: str) -> None:
        if len(value) > self.limits.max_value_chars:
            raise FilterError(
                f"filter {_shown(name)!r}: a key or value of {len(value)} characters, over the limit of "
                f"{self.limits.max_value_chars} ({self.limits.name('value_chars')})"
            )

    def count(self, name: str, n: int) -> None:
        self.values += n
        if self.values > self.limits.max_values:
            raise FilterError(
                f"filter {_shown(name)!r}: more than {self.limits.max_values} values in all "
                f"({self.limits.name('values')})"
            )


def _shown(name: str) -> str:
    """A key as an error message may quote it (a long key is cut, never echoed whole)."""
    return name if len(name) <= 64 else name[:61] + "..."


def _condition(name: str, key: str, value: Any, budget: _Budget) -> Condition:
    if isinstance(value, Mapping):
        return Condition(key, ops=_range(name, key, value, budget))
    if key == "ingested_at":
        raise FilterError('filter "ingested_at" takes a range object, e.g. {"gte": "2024-01-01T00:00:00Z"}')
    if isinstance(value, list | tuple):
        if not value:
            raise FilterError(f"filter {_shown(name)!r}: the list of values is empty")
        budget.count(name, len(value))
        values = tuple(_scalar(name, v, budget) for v in value)
        if len({_kind(v) for v in values}) > 1:
            raise FilterError(
                f"filter {_shown(name)!r}: list values must all be of one type "
                "(integers and decimals are two types)"
            )
        return Condition(key, values=values)
    budget.count(name, 1)
    return Condition(key, values=(_scalar(name, value, budget),))


def _range(
    name: str, key: str, bounds: Mapping[str, Any], budget: _Budget
) -> tuple[tuple[str, int | float], ...]:
    if not bounds:
        raise FilterError(f"filter {_shown(name)!r}: the range object is empty")
    unknown = sorted(str(op)[:20] for op in set(bounds) - set(_RANGE_OPS))
    if unknown:
        raise FilterError(
            f"filter {_shown(name)!r}: unknown range operator(s) {unknown[:5]}; use gt, gte, lt, lte"
        )
    ops: list[tuple[str, int | float]] = []
    for op, bound in bounds.items():
        number: int | float
        if key == "ingested_at" and isinstance(bound, str):
            budget.text(name, bound)
            number = _parse_time(name, bound)
        elif _is_number(bound):
            number = _finite(name, bound)
        else:
            raise FilterError(
                f"filter {_shown(name)!r}: range bound {op!r} must be a number, got {type(bound).__name__}"
            )
        ops.append((op, number))
    return tuple(ops)


def _parse_time(name: str, text: str) -> float:
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00") if text.endswith("Z") else text)
    except ValueError as exc:
        raise FilterError(
            f"filter {_shown(name)!r}: {_shown(text)!r} is not epoch seconds or an ISO-8601 time"
        ) from exc
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def _scalar(name: str, value: Any, budget: _Budget) -> Scalar:
    if isinstance(value, str):
        budget.text(name, value)
        return value
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        return _finite(name, value)
    raise FilterError(
        f"filter {_shown(name)!r}: values must be strings, numbers or booleans, got {type(value).__name__}"
    )


def _finite(name: str, value: int | float) -> int | float:
    """`value` when the store can hold it: a finite float, or an integer that fits in 64 bits."""
    if isinstance(value, float) and not math.isfinite(value):
        raise FilterError(f"filter {_shown(name)!r}: numbers must be finite")
    if isinstance(value, int) and not -(2**63) <= value < 2**63:
        raise FilterError(f"filter {_shown(name)!r}: integers must fit in 64 bits")
    return value


def _kind(value: Scalar) -> type:
    return type(value)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
