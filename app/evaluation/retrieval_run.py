"""The server's retriever over judged queries: one retrieval mode's run, scored by `evals.retrieval_eval`."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from evals.retrieval_eval import ModeResult, evaluate_search

if TYPE_CHECKING:
    from app.retrieval.retriever import Retriever
    from ingest.filters import MetadataFilter


def evaluate_mode(
    retriever: Retriever,
    collection: str,
    mode: str,
    queries: Sequence[tuple[str, str]],
    qrels: dict[str, dict[str, int]],
    *,
    top_k: int = 100,
    rerank: bool | None = False,
    filters: MetadataFilter | None = None,
    progress: Callable[[Iterable[Any]], Iterable[Any]] | None = None,
) -> ModeResult:
    """Run every query through `retriever.retrieve_documents` (timed, one at a time) and score the run."""

    def search(text: str) -> list[str]:
        docs = retriever.retrieve_documents(
            collection, text, top_k=top_k, mode=mode, filters=filters, rerank=rerank
        )
        return [d.doc_id for d in docs]

    return evaluate_search(mode, search, queries, qrels, progress=progress)
