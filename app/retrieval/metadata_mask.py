"""Evaluate a `MetadataFilter` over a whole chunk table at once (the BM25 stage's filter).

Testing every chunk's metadata in Python costs ~10 us a chunk, which is most of a filtered BM25 query
on a 10k-chunk collection. `MetadataColumns` instead builds, per filtered key and on first use, an
inverted index (value -> row numbers) and sorted numeric columns, so equality is a dict lookup and a
range is a binary search. It must agree with `MetadataFilter.matches` row by row, Chroma's rules
included (tests/unit/test_filters.py checks that on a grid of values).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from app.retrieval.filters import Condition, MetadataFilter

_EMPTY = np.zeros(0, dtype=np.int64)


@dataclass
class _Column:
    """One metadata key across the table."""

    exact: dict[tuple[str, Any], np.ndarray]  # (type tag, value) -> row numbers
    ints: tuple[np.ndarray, np.ndarray]  # sorted int values, their rows
    floats: tuple[np.ndarray, np.ndarray]  # sorted float values, their rows


class MetadataColumns:
    """Row masks for filters over a fixed list of metadata dicts (one BM25 snapshot)."""

    def __init__(self, metadatas: Sequence[Mapping[str, Any]]):
        self._metadatas = metadatas
        self._columns: dict[str, _Column] = {}
        self._lock = threading.Lock()

    def mask(self, flt: MetadataFilter) -> np.ndarray:
        """A boolean array: True where `flt.matches(metadata)`."""
        mask = np.ones(len(self._metadatas), dtype=bool)
        for condition in flt.conditions:
            rows = self._rows(condition)
            keep = np.zeros_like(mask)
            keep[rows] = True
            mask &= keep
        return mask

    def _rows(self, c: Condition) -> np.ndarray:
        column = self._column(c.key)
        if not c.ops:
            parts = [column.exact.get(tag_value, _EMPTY) for v in c.values for tag_value in _lookup_keys(v)]
            return np.concatenate(parts) if parts else _EMPTY
        picked = []
        for (values, rows), truncate in ((column.ints, True), (column.floats, False)):
            lo, hi = 0, len(values)
            for op, bound in c.ops:
                # Chroma compares an integer field with a decimal bound's integer part.
                b = math.trunc(bound) if truncate and isinstance(bound, float) else bound
                if op == "gt":
                    lo = max(lo, int(np.searchsorted(values, b, side="right")))
                elif op == "gte":
                    lo = max(lo, int(np.searchsorted(values, b, side="left")))
                elif op == "lt":
                    hi = min(hi, int(np.searchsorted(values, b, side="left")))
                else:
                    hi = min(hi, int(np.searchsorted(values, b, side="right")))
            if lo < hi:
                picked.append(rows[lo:hi])
        return np.concatenate(picked) if picked else _EMPTY

    def _column(self, key: str) -> _Column:
        column = self._columns.get(key)
        if column is None:
            with self._lock:
                column = self._columns.get(key) or self._build(key)
                self._columns[key] = column
        return column

    def _build(self, key: str) -> _Column:
        exact: dict[tuple[str, Any], list[int]] = {}
        ints: list[tuple[int, int]] = []
        floats: list[tuple[float, int]] = []
        for row, meta in enumerate(self._metadatas):
            if key not in meta:
                continue
            value = meta[key]
            tag = _tag(value)
            if tag is None:
                continue
            exact.setdefault((tag, value), []).append(row)
            if tag == "i":
                ints.append((value, row))
            elif tag == "f":
                floats.append((value, row))
        return _Column(
            {k: np.asarray(v, dtype=np.int64) for k, v in exact.items()},
            _sorted(ints, np.int64),
            _sorted(floats, np.float64),
        )


def _tag(value: Any) -> str | None:
    if isinstance(value, bool):
        return "b"
    if isinstance(value, int):
        return "i"
    if isinstance(value, float):
        return "f"
    if isinstance(value, str):
        return "s"
    return None


def _lookup_keys(wanted: Any) -> list[tuple[str, Any]]:
    """Stored (type tag, value) pairs that Chroma counts as equal to `wanted`."""
    if isinstance(wanted, bool):
        return [("b", wanted)]
    if isinstance(wanted, int):
        return [("i", wanted), ("f", float(wanted))]
    if isinstance(wanted, float):
        return [("i", math.trunc(wanted)), ("f", wanted)]
    return [("s", wanted)]


def _sorted(pairs: list[tuple[Any, int]], dtype: type) -> tuple[np.ndarray, np.ndarray]:
    if not pairs:
        return np.zeros(0, dtype=dtype), _EMPTY
    pairs.sort(key=lambda p: p[0])
    return np.asarray([p[0] for p in pairs], dtype=dtype), np.asarray([p[1] for p in pairs], dtype=np.int64)
