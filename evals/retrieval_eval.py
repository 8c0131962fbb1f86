"""Retrieval evaluation on a BEIR-style dataset: loaders, a timed runner over any search callable, and
metrics computed by ranx (nDCG@10, recall@100, MRR@10) with latency percentiles.

`ragserver eval retrieval` fills the corpus collection (`app/evaluation/corpus.py:
ensure_corpus_collection`) and runs the server's retriever through `evaluate_search` per mode
(`app/evaluation/retrieval_run.py: evaluate_mode`).
"""

from __future__ import annotations

import hashlib
import json
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

METRICS = ("ndcg@10", "recall@100", "mrr@10")
DEFAULT_MODES = ("dense", "bm25", "hybrid")
_WARMUP_QUERIES = 3


# -- dataset loaders -----------------------------------------------------------------------------


def load_queries(path: Path) -> dict[str, str]:
    """BEIR queries.jsonl: `{_id, text}` per line -> {query id: text}."""
    queries: dict[str, str] = {}
    with Path(path).open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            row = json.loads(line)
            if "_id" not in row or "text" not in row:
                raise ValueError(f"{path}:{lineno}: a query row needs '_id' and 'text'")
            queries[str(row["_id"])] = str(row["text"])
    return queries


def load_qrels(path: Path) -> dict[str, dict[str, int]]:
    """BEIR qrels .tsv (`query-id corpus-id score`, header optional) -> {query id: {doc id: grade}}.

    Query ids keep the file's order (so --limit-queries takes the first N judged queries).
    """
    qrels: dict[str, dict[str, int]] = {}
    with Path(path).open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            parts = line.strip().split("\t") if "\t" in line else line.split()
            if not parts or not parts[0]:
                continue
            if len(parts) == 4:  # TREC style: qid iter docid grade
                parts = [parts[0], parts[2], parts[3]]
            if len(parts) != 3:
                raise ValueError(f"{path}:{lineno}: expected 'query-id corpus-id score'")
            try:
                grade = int(float(parts[2]))
            except ValueError:
                if lineno == 1:  # the header line
                    continue
                raise ValueError(f"{path}:{lineno}: score {parts[2]!r} is not a number") from None
            qrels.setdefault(parts[0], {})[parts[1]] = grade
    return qrels


def judged_queries(
    queries: dict[str, str], qrels: dict[str, dict[str, int]], limit: int | None = None
) -> list[tuple[str, str]]:
    """(id, text) of the queries that have at least one positive judgement, in qrels order."""
    picked = [
        (qid, queries[qid]) for qid, judged in qrels.items() if qid in queries and max(judged.values()) > 0
    ]
    return picked[:limit] if limit else picked


# -- metrics -------------------------------------------------------------------------------------


def ranking_metrics(
    qrels: dict[str, dict[str, int]], run: dict[str, list[str]], metrics: Sequence[str] = METRICS
) -> dict[str, float]:
    """Mean metrics over the queries of `run` (doc ids best first), computed by ranx."""
    from ranx import Qrels, Run, evaluate

    judged = {q: qrels[q] for q in run}
    # ranx ranks by score; strictly decreasing scores keep our order exactly (ties would be re-sorted).
    scored = {q: {d: float(len(docs) - i) for i, d in enumerate(docs)} for q, docs in run.items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # numba type-safety chatter
        result = evaluate(Qrels.from_dict(judged), Run.from_dict(scored), list(metrics), make_comparable=True)
    if isinstance(result, dict):
        return {m: float(result[m]) for m in metrics}
    return {metrics[0]: float(result)}


def percentile_ms(latencies_s: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(latencies_s) * 1000.0, q)) if latencies_s else 0.0


def file_sha256(path: Path) -> str:
    """The file's sha256 (hex): what identifies a corpus or data file in markers and model cards."""
    h = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# -- the runner ----------------------------------------------------------------------------------


@dataclass
class ModeResult:
    """One mode's figures over the evaluated queries."""

    mode: str
    metrics: dict[str, float]
    latencies_s: list[float] = field(repr=False, default_factory=list)
    run: dict[str, list[str]] = field(repr=False, default_factory=dict)

    @property
    def p50_ms(self) -> float:
        return percentile_ms(self.latencies_s, 50)

    @property
    def p99_ms(self) -> float:
        return percentile_ms(self.latencies_s, 99)

    def summary(self) -> dict[str, float]:
        return {
            **{m: round(v, 4) for m, v in self.metrics.items()},
            "p50_ms": round(self.p50_ms, 2),
            "p99_ms": round(self.p99_ms, 2),
        }


def evaluate_search(
    mode: str,
    search: Callable[[str], Sequence[str]],
    queries: Sequence[tuple[str, str]],
    qrels: dict[str, dict[str, int]],
    *,
    progress: Callable[[Iterable[Any]], Iterable[Any]] | None = None,
) -> ModeResult:
    """Run every query through `search` (query text -> document ids, best first), timed one at a time,
    and score the run as `mode`."""
    for _, text in queries[:_WARMUP_QUERIES]:  # first calls load indexes and warm caches: not timed
        search(text)
    run: dict[str, list[str]] = {}
    latencies: list[float] = []
    for qid, text in progress(queries) if progress else queries:
        started = time.perf_counter()
        doc_ids = search(text)
        latencies.append(time.perf_counter() - started)
        run[qid] = list(doc_ids)
    return ModeResult(mode, ranking_metrics(qrels, run), latencies, run)


def format_result(result: ModeResult) -> str:
    m = result.metrics
    return (
        f"{result.mode:<8} nDCG@10 {m['ndcg@10']:.4f}  recall@100 {m['recall@100']:.4f}  "
        f"MRR@10 {m['mrr@10']:.4f}  p50 {result.p50_ms:.1f} ms  p99 {result.p99_ms:.1f} ms"
    )
