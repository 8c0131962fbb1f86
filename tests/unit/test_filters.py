"""The metadata filter language: validation and the Chroma `where` it compiles to. What a filter
matches is evaluated by the vector index alone; its semantics are in the VectorIndex contract
(tests/contract/vector_index_contract.py, FILTER_CASES)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from ingest.filters import FilterError, MetadataFilter, parse_filters

pytestmark = pytest.mark.unit


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
    assert compiled({"doc_id": "d1"}).where == flt.where


def test_lists_mean_any_of() -> None:
    flt = compiled({"source": ["/data/a.pdf", "/data/b.pdf"]})
    assert flt.where == {"source": {"$in": ["/data/a.pdf", "/data/b.pdf"]}}


def test_several_keys_are_and_ed() -> None:
    flt = compiled({"team": "blue", "year": [2020, 2021]})
    assert flt.where == {"$and": [{"team": {"$eq": "blue"}}, {"year": {"$in": [2020, 2021]}}]}


def test_ingested_at_range_with_epoch_and_iso_bounds() -> None:
    epoch = 1_700_000_000.5
    iso = datetime.fromtimestamp(epoch - 60, tz=UTC).isoformat().replace("+00:00", "Z")
    flt = compiled({"ingested_at": {"gte": iso, "lt": epoch + 1}})
    assert flt.where == {"$and": [{"ingested_at": {"$gte": epoch - 60}}, {"ingested_at": {"$lt": epoch + 1}}]}
    # A time without a zone is UTC.
    naive = datetime.fromtimestamp(epoch + 10, tz=UTC).replace(tzinfo=None).isoformat()
    assert compiled({"ingested_at": {"lte": naive}}).where == {"ingested_at": {"$lte": epoch + 10}}


def test_range_combined_with_other_keys_flattens_into_one_and() -> None:
    flt = compiled({"source": "/data/a.pdf", "page": {"gte": 2, "lte": 4}})
    assert flt.where == {
        "$and": [{"source": {"$eq": "/data/a.pdf"}}, {"page": {"$gte": 2.0}}, {"page": {"$lte": 4.0}}]
    }


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
