"""Turn feedback into a regression set: `ragserver feedback export` writes questions that
`ragserver eval rag --questions FILE --collection C` runs as they are.

One row per response with feedback: the question, its conversation context when it was a follow-up
(`history`), the corrections as `references`, the documents an up-vote confirmed as `gold_document_ids`
(the ones the answer cited), and the source `response_id` (kept in the eval's metadata).
"""

from __future__ import annotations

from typing import Any

from app.traces.store import Trace
from ingest.vector_index import split_store_name


def regression_row(trace: Trace) -> dict[str, Any]:
    corrections = list(
        dict.fromkeys(f.correction.strip() for f in trace.feedback if f.correction and f.correction.strip())
    )
    confirmed = any(f.rating == "up" or (f.score is not None and f.score >= 0.5) for f in trace.feedback)
    gold = (
        list(dict.fromkeys(str(c["document_id"]) for c in trace.citations if c.get("document_id")))
        if confirmed
        else []
    )
    row: dict[str, Any] = {
        "id": trace.response_id,
        "question": trace.question,
        "response_id": trace.response_id,
        "collection": split_store_name(trace.collection)[1],
        "ratings": [f.rating for f in trace.feedback if f.rating],
        "answer_given": trace.answer,
    }
    if trace.history:
        row["history"] = trace.history
    if corrections:
        row["references"] = corrections
    if gold:
        row["gold_document_ids"] = gold
    comments = [f.comment for f in trace.feedback if f.comment]
    if comments:
        row["comments"] = comments
    return row
