"""Fit and measure when ragserver abstains, on a labelled answerability set (`evals/make_answerability.py`);
the server side of the evals (it reads `app.services.answerability`, which `evals` may not import).

`ragserver eval answerability` (app/cli/eval_answerability.py) answers every question through the
chat pipeline, recording the evidence of `app.services.answerability` per question; `fit` trains a
logistic regression (scikit-learn) on the training split's evidence and picks the lowest threshold
that abstains on at most `max_answerable_abstained` of the training split's answerable questions;
`measure` reports, per split and kind, how often each would abstain.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from app.services.answerability import FEATURES, AnswerabilityModel, Evidence
from evals.retrieval_eval import file_sha256


def load_set(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _matrix(rows: Sequence[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray([[float(r["evidence"][f]) for f in FEATURES] for r in rows], dtype=np.float64)
    y = np.asarray([r["label"] == "unanswerable" for r in rows], dtype=np.int64)
    return x, y


def fit(
    rows: Sequence[dict[str, Any]], set_path: Path, *, max_answerable_abstained: float = 0.08
) -> AnswerabilityModel:
    """A logistic regression on the train split's evidence, its threshold set on the same split."""
    from sklearn.linear_model import LogisticRegression

    train = [r for r in rows if r["split"] == "train" and "evidence" in r]
    x, y = _matrix(train)
    mean, scale = x.mean(axis=0), x.std(axis=0)
    scale[scale == 0] = 1.0
    model = LogisticRegression(C=1.0, class_weight="balanced", max_iter=1000)
    model.fit((x - mean) / scale, y)
    p = model.predict_proba((x - mean) / scale)[:, 1]
    dont_know = x[:, FEATURES.index("dont_know")] > 0
    answerable = y == 0
    # The lowest threshold whose abstentions (the model's own "I don't know" included) stay within the
    # allowance on the answerable questions.
    # Halfway between the last probability kept and the first that would break the allowance.
    threshold, accepted = 1.0, None
    for t in sorted(set(p.tolist()), reverse=True):
        abstains = (p >= t) | dont_know
        if abstains[answerable].mean() > max_answerable_abstained:
            threshold = (accepted + t) / 2 if accepted is not None else min(1.0, t + 1e-6)
            break
        accepted = threshold = t
    card = {
        "fitted_at": time.strftime("%Y-%m-%d"),
        "set": str(set_path),
        "set_sha256": file_sha256(set_path),
        "train_rows": len(train),
        "train_unanswerable": int(y.sum()),
        "max_answerable_abstained": max_answerable_abstained,
        "estimator": "sklearn LogisticRegression(C=1, class_weight=balanced) on standardized evidence",
    }
    return AnswerabilityModel(
        weights={f: round(float(w), 6) for f, w in zip(FEATURES, model.coef_[0], strict=True)},
        bias=round(float(model.intercept_[0]), 6),
        mean={f: round(float(m), 6) for f, m in zip(FEATURES, mean, strict=True)},
        scale={f: round(float(s), 6) for f, s in zip(FEATURES, scale, strict=True)},
        threshold=round(float(threshold), 6),
        card=card,
    )


def measure(rows: Sequence[dict[str, Any]], model: AnswerabilityModel | None) -> dict[str, Any]:
    """Per split: the share abstained of the answerable and of the unanswerable questions (and per kind)."""
    out: dict[str, Any] = {}
    for split in ("train", "test"):
        mine = [r for r in rows if r["split"] == split and "evidence" in r]
        if not mine:
            continue
        decided = []
        for r in mine:
            ev = Evidence(**r["evidence"])
            abstained = model.abstain(ev)[0] if model is not None else ev.dont_know
            decided.append((r, abstained))
        figures: dict[str, Any] = {}
        for label in ("answerable", "unanswerable"):
            picked = [a for r, a in decided if r["label"] == label]
            figures[f"{label}_abstained"] = round(sum(picked) / len(picked), 4) if picked else None
            figures[f"{label}_n"] = len(picked)
        for kind in sorted({r["kind"] for r in mine}):
            picked = [a for r, a in decided if r["kind"] == kind]
            figures[f"{kind}_abstained"] = round(sum(picked) / len(picked), 4)
        out[split] = figures
    return out
