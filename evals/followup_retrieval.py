"""Gold-article hits of follow-up questions: did a search query find the article the follow-up asks about?

A hit: the gold article (`article_id`), or a copy with its title (`article_title`), among the documents of
the top-k chunks. The queries compared and the retriever they run on are the server's
(`python -m app.evaluation.followup_retrieval`); this module only scores what they found.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

Found = Sequence[tuple[str, str]]
"""(document id, title) of each chunk a search returned."""


def gold_found(row: dict[str, Any], found: Found) -> bool:
    """Whether `found` holds the row's gold article, by id or by title."""
    title = row["article_title"].replace("_", " ").casefold()
    return any(doc_id == row["article_id"] or doc_title.casefold() == title for doc_id, doc_title in found)


def hit_rates(
    rows: Sequence[dict[str, Any]],
    queries: Mapping[str, Callable[[dict[str, Any]], str]],
    search: Callable[[str], Found],
) -> dict[str, float]:
    """Per named query (row -> search text), the share of rows whose search found the gold article."""
    hits: dict[str, list[bool]] = {name: [] for name in queries}
    for row in rows:
        for name, query in queries.items():
            hits[name].append(gold_found(row, search(query(row))))
    return {name: round(sum(v) / len(v), 4) for name, v in hits.items()}
