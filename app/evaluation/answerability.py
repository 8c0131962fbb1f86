"""Fit and measure when ragserver abstains, on a labelled answerability set (`evals/make_answerability.py`);
the server side of the evals (it reads `app.services.answerability`, which `evals` may not import).

`ragserver eval answerability` (app/cli/eval_answerability.py) answers every question through the
chat pipeline and records, per question, the answer and the sources it was given; `recompute` derives
the evidence of `app.services.answerability` from them (so a changed feature needs no new answers);
`fit` trains one logistic regression (scikit-learn) per stage on the training split's evidence and
picks the pair of thresholds that abstains on the most unanswerable training questions while abstaining
on at most `max_answerable_abstained` of the answerable ones (the model's own "I don't know" counted);
`measure` reports, per split and kind, how often the model would abstain, and at which stage. A `pool`
of more answerable questions (every usable question of the set's articles, `--pool`) is judged before
generation from its retrieved sources; the pool questions that were also answered (`--pool-drafts N`,
`"drafted": true`) count like the set's answerable questions: trained on, and both stages' allowance
checked on them.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from app.services.answerability import (
    STAGE_FEATURES,
    AnswerabilityModel,
    Evidence,
    Stage,
    evidence,
)
from evals.retrieval_eval import file_sha256

_GRID = np.round(np.arange(0.05, 1.0001, 0.01), 2)  # the thresholds tried, per stage


def load_set(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def recompute(row: dict[str, Any]) -> Evidence | None:
    """The evidence of an answered row, from the answer and sources it recorded (None for a row of an
    older run without them). A draft that said "I don't know" was recorded as the abstention text, so
    that flag comes from the evidence recorded at the time."""
    if "sources" not in row:
        return None
    sources = [SimpleNamespace(**s) for s in row["sources"]]
    cited = [SimpleNamespace(**s) for s in row.get("cited") or []]
    query = row.get("search_query") or row["question"]
    found = evidence(query, row["answer"], sources, cited)
    dont_know = bool((row.get("evidence") or {}).get("dont_know")) or found.dont_know
    return Evidence(**{**asdict(found), "dont_know": dont_know})


def _usable(rows: Sequence[dict[str, Any]]) -> list[tuple[dict[str, Any], Evidence]]:
    out = []
    for row in rows:
        ev = recompute(row)
        if ev is not None:
            out.append((row, ev))
    return out


def _fit_stage(name: str, evs: Sequence[Evidence], y: np.ndarray) -> tuple[Stage, np.ndarray]:
    from sklearn.linear_model import LogisticRegression

    features = STAGE_FEATURES[name]
    x = np.asarray([[ev.values()[f] for f in features] for ev in evs], dtype=np.float64)
    mean, scale = x.mean(axis=0), x.std(axis=0)
    scale[scale == 0] = 1.0
    model = LogisticRegression(C=1.0, class_weight="balanced", max_iter=1000)
    model.fit((x - mean) / scale, y)
    stage = Stage(
        features=features,
        weights={f: round(float(w), 6) for f, w in zip(features, model.coef_[0], strict=True)},
        bias=round(float(model.intercept_[0]), 6),
        mean={f: round(float(m), 6) for f, m in zip(features, mean, strict=True)},
        scale={f: round(float(s), 6) for f, s in zip(features, scale, strict=True)},
        threshold=1.0,
    )
    return stage, np.asarray([stage.probability(ev.values()) for ev in evs])


def fit(
    rows: Sequence[dict[str, Any]],
    set_path: Path,
    *,
    max_answerable_abstained: float = 0.10,
    pool: Sequence[dict[str, Any]] = (),
) -> AnswerabilityModel:
    """A logistic regression per stage on the train split's evidence, the thresholds set on the same split
    (a grid of pairs). `pool`: more answerable questions of the train split's articles; the drafted ones
    are trained on and counted like the set's answerable questions, the others (no draft: no after-stage
    evidence) only keep the before stage within the allowance."""
    pool_train = [(r, ev) for r, ev in _usable(pool) if r["split"] == "train"]
    pooled = [ev for r, ev in pool_train if not r.get("drafted")]
    drafted = [(r, ev) for r, ev in pool_train if r.get("drafted")]
    train = [(r, ev) for r, ev in _usable(rows) if r["split"] == "train"] + drafted
    if not train:
        raise ValueError("no answered rows with their sources in the train split: nothing to fit")
    evs = [ev for _, ev in train]
    y = np.asarray([r["label"] == "unanswerable" for r, _ in train], dtype=np.int64)
    before, p_before = _fit_stage("before", evs, y)
    after, p_after = _fit_stage("after", evs, y)
    p_pool = np.asarray([before.probability(ev.values()) for ev in pooled])
    dont_know = np.asarray([ev.dont_know for ev in evs])
    answerable = y == 0
    # Of the pairs within the allowance: the most unanswerable questions caught, then the fewest answerable
    # ones lost, then the most caught before generation (no draft streamed and withdrawn, no LLM time).
    best: tuple[float, float, float, float] | None = None
    thresholds = (1.0, 1.0)
    for t_before in _GRID:
        early = p_before >= t_before
        if len(p_pool) and float((p_pool >= t_before).mean()) > max_answerable_abstained:
            continue
        for t_after in _GRID:
            abstains = dont_know | early | (p_after >= t_after)
            lost = float(abstains[answerable].mean())
            if lost > max_answerable_abstained:
                continue
            key = (
                float(abstains[~answerable].mean()),
                -lost,
                float(early[~answerable].mean()),
                float(t_after),
            )
            if best is None or key > best:
                best, thresholds = key, (float(t_before), float(t_after))
    t_before, t_after = thresholds
    card = {
        "fitted_at": time.strftime("%Y-%m-%d"),
        "set": str(set_path),
        "set_sha256": file_sha256(set_path),
        "train_rows": len(train),
        "train_unanswerable": int(y.sum()),
        "train_pool": len(pooled) + len(drafted),
        "train_pool_drafted": len(drafted),
        "max_answerable_abstained": max_answerable_abstained,
        "estimator": "sklearn LogisticRegression(C=1, class_weight=balanced) on standardized evidence, "
        "one per stage",
    }
    return AnswerabilityModel(
        before=Stage(**{**asdict(before), "threshold": t_before}),
        after=Stage(**{**asdict(after), "threshold": t_after}),
        card=card,
    )


def decide(model: AnswerabilityModel | None, ev: Evidence) -> str | None:
    """At which point the model abstains on `ev`: "before" generation, "after" it, or None (answers)."""
    if model is not None and model.abstain_before(ev)[0]:
        return "before"
    if ev.dont_know or (model is not None and model.abstain(ev)[0]):
        return "after"
    return None


def measure(rows: Sequence[dict[str, Any]], model: AnswerabilityModel | None) -> dict[str, Any]:
    """Per split: the share abstained of the answerable and of the unanswerable questions (and per kind,
    and the share decided before generation)."""
    out: dict[str, Any] = {}
    usable = _usable(rows)
    for split in ("train", "test"):
        decided = [(r, decide(model, ev)) for r, ev in usable if r["split"] == split]
        mine = [(r, d) for r, d in decided if r["kind"] != "pool"]
        if not mine:
            continue
        figures: dict[str, Any] = {}
        pooled = [d for r, d in decided if r["kind"] == "pool"]
        if pooled:  # every pool question, judged before generation
            figures["pool_abstained_before"] = round(sum(d == "before" for d in pooled) / len(pooled), 4)
            figures["pool_n"] = len(pooled)
        drafted = [d for r, d in decided if r["kind"] == "pool" and r.get("drafted")]
        if drafted:  # the pool questions that were answered: both stages
            figures["pool_drafted_abstained"] = round(sum(d is not None for d in drafted) / len(drafted), 4)
            figures["pool_drafted_n"] = len(drafted)
        for label in ("answerable", "unanswerable"):
            picked = [d for r, d in mine if r["label"] == label]
            figures[f"{label}_abstained"] = (
                round(sum(d is not None for d in picked) / len(picked), 4) if picked else None
            )
            figures[f"{label}_abstained_before"] = (
                round(sum(d == "before" for d in picked) / len(picked), 4) if picked else None
            )
            figures[f"{label}_n"] = len(picked)
        for kind in sorted({r["kind"] for r, _ in mine}):
            picked = [d for r, d in mine if r["kind"] == kind]
            figures[f"{kind}_abstained"] = round(sum(d is not None for d in picked) / len(picked), 4)
        out[split] = figures
    return out
