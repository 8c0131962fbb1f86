"""The metadata filter language: validation, the Chroma `where` it compiles to, and the in-process
predicate BM25 applies (the two must agree; tests/integration/test_bm25_consistency.py checks that
against a real Chroma)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from app.retrieval.filters import FilterError, MetadataFilter, parse_filters

pytestmark = pytest.mark.unit

META = {
    "doc_id": "d1",
    "source": "/data/a.pdf",
    "title": "A",
    "ingested_at": 1_700_000_000.5,
    "chunk_index": 0,
    "page": 3,
    "team": "blue",
    "year": 2021,
    "public": True,
}


def compiled(raw: dict) -> MetadataFilter:
    flt = parse_filters(raw)
    assert flt is not None
    return flt


@pytest.mark.parametrize("raw", [None, {}])
def test_empty_filters_mean_no_filter(raw: dict | None) -> None:
    assert parse_filters(raw) is None


def test_equality_and_document_id_alias() -> None:
    flt = compiled({"document_id": "d1"})
    assert flt.where == {"doc_id": {"$eq": "d1"}}
    assert flt.matches(META)
    assert not flt.matches({**META, "doc_id": "d2"})
    assert compiled({"doc_id": "d1"}).where == flt.where


def test_lists_mean_any_of() -> None:
    flt = compiled({"source": ["/data/a.pdf", "/data/b.pdf"]})
    assert flt.where == {"source": {"$in": ["/data/a.pdf", "/data/b.pdf"]}}
    assert flt.matches(META)
    assert not flt.matches({**META, "source": "/data/c.pdf"})


def test_several_keys_are_and_ed() -> None:
    flt = compiled({"team": "blue", "year": [2020, 2021]})
    assert flt.where == {"$and": [{"team": {"$eq": "blue"}}, {"year": {"$in": [2020, 2021]}}]}
    assert flt.matches(META)
    assert not flt.matches({**META, "team": "red"})
    assert not flt.matches({**META, "year": 2019})


def test_missing_key_never_matches() -> None:
    assert not compiled({"team": "blue"}).matches({"doc_id": "d1"})


def test_types_are_strict_like_chroma() -> None:
    assert not compiled({"year": "2021"}).matches(META)
    assert not compiled({"public": 1}).matches(META)
    assert compiled({"public": True}).matches(META)
    assert not compiled({"page": True}).matches({**META, "page": 1})
    assert compiled({"page": 3.0}).matches(META)


def test_ingested_at_range_with_epoch_and_iso_bounds() -> None:
    epoch = 1_700_000_000.5
    iso = datetime.fromtimestamp(epoch - 60, tz=UTC).isoformat().replace("+00:00", "Z")
    flt = compiled({"ingested_at": {"gte": iso, "lt": epoch + 1}})
    assert flt.where == {"$and": [{"ingested_at": {"$gte": epoch - 60}}, {"ingested_at": {"$lt": epoch + 1}}]}
    assert flt.matches(META)
    assert not compiled({"ingested_at": {"gt": epoch}}).matches(META)
    assert compiled({"ingested_at": {"lte": epoch}}).matches(META)
    # A time without a zone is UTC.
    naive = datetime.fromtimestamp(epoch + 10, tz=UTC).replace(tzinfo=None).isoformat()
    assert compiled({"ingested_at": {"lte": naive}}).matches(META)


def test_range_combined_with_other_keys_flattens_into_one_and() -> None:
    flt = compiled({"source": "/data/a.pdf", "page": {"gte": 2, "lte": 4}})
    assert flt.where == {
        "$and": [{"source": {"$eq": "/data/a.pdf"}}, {"page": {"$gte": 2.0}}, {"page": {"$lte": 4.0}}]
    }
    assert flt.matches(META)
    assert not flt.matches({**META, "page": 5})
    assert not flt.matches({**META, "page": "3"})


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (["d1"], "JSON object"),
        ({"source": []}, "empty"),
        ({"source": {"gte": "a"}}, "must be a number"),
        ({"ingested_at": {"after": 1}}, "unknown range operator"),
        ({"ingested_at": {}}, "empty"),
        ({"ingested_at": 1700000000}, "range object"),
        ({"ingested_at": {"gte": "yesterday"}}, "ISO-8601"),
        ({"team": {"nested": "x"}}, "unknown range operator"),
        ({"team": None}, "strings, numbers or booleans"),
        ({"team": ["a", 1]}, "one type"),
        ({"year": [2020, 2020.5]}, "one type"),
        ({"page": {"gte": True}}, "must be a number"),
        ({"team": [["a"]]}, "strings, numbers or booleans"),
        ({"version": "x"}, "not filterable"),
        ({"$or": []}, "not filterable"),
        ({"": "x"}, "non-empty"),
    ],
)
def test_invalid_filters_raise_filter_error(raw: object, message: str) -> None:
    with pytest.raises(FilterError, match=message):
        parse_filters(raw)  # type: ignore[arg-type]


def test_filter_error_is_a_value_error() -> None:
    assert issubclass(FilterError, ValueError)


def test_integer_fields_see_decimal_bounds_truncated_as_chroma_does() -> None:
    # Chroma compares an integer field with int(bound): page 3 "equals" 3.7 and is ">= 3.5".
    assert compiled({"page": 3.7}).matches(META)
    assert compiled({"page": {"gte": 3.5}}).matches(META)
    assert not compiled({"page": {"gt": 2.5}}).matches({**META, "page": 2})
    assert compiled({"page": {"lt": -1.5}}).matches({**META, "page": -2})  # toward zero: -1
    # A decimal field compares exactly.
    assert not compiled({"score": 3}).matches({"score": 3.5})
    assert compiled({"score": {"gt": 3}}).matches({"score": 3.5})


def test_the_table_mask_agrees_with_matches_row_by_row() -> None:
    """`MetadataColumns.mask` (BM25's vectorised filter) == `matches` on every row, quirks included."""
    from itertools import product

    from app.retrieval.metadata_mask import MetadataColumns

    values = [1, 2, -2, 3, 1.0, 2.0, 2.5, -1.5, True, False, "2", "x", None]
    rows = [{"k": v, "n": i % 3} if v is not None else {"n": 0} for i, v in enumerate(values * 2)]
    rows.append({"k": [1, 2]})  # a value of no filterable type never matches
    columns = MetadataColumns(rows)
    bounds = [2, 2.0, 2.5, -1.5, -2, 1, 0, 3]
    filters: list[dict] = [{"k": v} for v in [*bounds, True, False, "2", "x"]]
    filters += [{"k": [1, 2]}, {"k": [2.5, -1.5]}, {"k": ["2", "x"]}, {"k": [True, False]}]
    filters += [{"k": {op: b}} for op, b in product(("gt", "gte", "lt", "lte"), bounds)]
    filters += [{"k": {"gt": -2, "lte": 2.5}}, {"k": {"gte": 1}, "n": 0}, {"n": [1, 2], "k": 2}]
    filters += [{"missing": 1}, {"missing": {"gte": 0}}]
    for raw in filters:
        flt = compiled(raw)
        assert columns.mask(flt).tolist() == [flt.matches(r) for r in rows], raw
