"""Question classifiers for the routing chain: scikit-learn logistic regression on the embedder's
vectors, trained on labelled questions (`ragserver routes train --labels FILE --out DIR`).

The model is saved as JSON (its classes, weights and fitted thresholds) beside a card: never a pickle, so
loading one named in a chain runs no code. Each class has a fitted confidence threshold: the smallest
predicted probability at which that class's predictions reached `min_precision` in 5-fold cross-validated
predictions on the training split; a prediction below its class's threshold hands the question on
instead of guessing. The card holds the data's hash, counts, held-out per-class precision / recall / F1,
the confusion matrix, and the same with the thresholds applied (how many were handed on).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

MODEL_FILE = "classifier.json"
CARD_FILE = "card.json"


@dataclass
class RouteClassifier:
    classes: list[str]
    coef: np.ndarray  # (n_classes, dim), or (1, dim) for two classes (sigmoid)
    intercept: np.ndarray
    thresholds: dict[str, float]
    embedder: str  # the model id of the embedder it was trained on: only that one can serve it
    card: dict[str, Any] = field(default_factory=dict)

    def probabilities(self, vectors: np.ndarray) -> np.ndarray:
        """Class probabilities, as scikit-learn's predict_proba gives them."""
        scores = vectors @ self.coef.T + self.intercept
        if len(self.classes) == 2:  # binary: one score, the second class's log-odds
            p = 1.0 / (1.0 + np.exp(-scores[:, 0]))
            return np.stack([1.0 - p, p], axis=1)
        scores = scores - scores.max(axis=1, keepdims=True)
        e = np.exp(scores)
        return e / e.sum(axis=1, keepdims=True)  # type: ignore[no-any-return]

    def predict(self, vectors: np.ndarray) -> list[tuple[str, float, bool]]:
        """(label, confidence, confident) per vector: `confident` when at or over the class's threshold."""
        out = []
        for row in self.probabilities(vectors):
            i = int(np.argmax(row))
            label, p = self.classes[i], float(row[i])
            out.append((label, p, p >= self.thresholds.get(label, 0.0)))
        return out

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        model = {
            "classes": self.classes,
            "coef": self.coef.tolist(),
            "intercept": self.intercept.tolist(),
            "thresholds": self.thresholds,
            "embedder": self.embedder,
        }
        (directory / MODEL_FILE).write_text(json.dumps(model), encoding="utf-8")
        (directory / CARD_FILE).write_text(json.dumps(self.card, indent=2), encoding="utf-8")

    @classmethod
    def load(cls, directory: str | Path) -> RouteClassifier:
        path = Path(directory)
        model = json.loads((path / MODEL_FILE).read_text(encoding="utf-8"))
        card_path = path / CARD_FILE
        return cls(
            classes=list(model["classes"]),
            coef=np.asarray(model["coef"], dtype=np.float32),
            intercept=np.asarray(model["intercept"], dtype=np.float32),
            thresholds={k: float(v) for k, v in model["thresholds"].items()},
            embedder=str(model["embedder"]),
            card=json.loads(card_path.read_text(encoding="utf-8")) if card_path.is_file() else {},
        )


def read_labels(path: Path) -> tuple[list[str], list[str], str]:
    """Texts, labels and the sha256 of a labels file (JSON lines `{"text": ..., "label": ...}`);
    ValueError naming the first bad line."""
    texts, labels = [], []
    raw = path.read_bytes()
    for number, line in enumerate(raw.decode("utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            text, label = row["text"], row["label"]
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f'{path}:{number}: expected {{"text": ..., "label": ...}}') from exc
        if not isinstance(text, str) or not isinstance(label, str) or not text.strip() or not label:
            raise ValueError(f"{path}:{number}: text and label must be non-empty strings")
        texts.append(text)
        labels.append(label)
    if len(set(labels)) < 2:
        raise ValueError(f"{path}: a classifier needs at least two labels")
    return texts, labels, hashlib.sha256(raw).hexdigest()


def report(classes: Sequence[str], truth: Sequence[str], predicted: Sequence[str | None]) -> dict[str, Any]:
    """Per-class precision / recall / F1 / support, macro-F1, accuracy and the confusion matrix
    (`None` predictions: handed on, counted as misses and shown as their own column)."""
    per_class = {}
    for c in classes:
        tp = sum(1 for t, p in zip(truth, predicted, strict=True) if t == c and p == c)
        fp = sum(1 for t, p in zip(truth, predicted, strict=True) if t != c and p == c)
        support = sum(1 for t in truth if t == c)
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[c] = {
            "precision": round(precision, 4),
            "recall": round(recall, 4),
            "f1": round(f1, 4),
            "support": support,
        }
    columns = [*classes, None] if any(p is None for p in predicted) else list(classes)
    confusion = {t: {str(p) if p is not None else "handed_on": 0 for p in columns} for t in classes}
    for t, p in zip(truth, predicted, strict=True):
        if t in confusion:
            confusion[t][str(p) if p is not None else "handed_on"] += 1
    correct = sum(1 for t, p in zip(truth, predicted, strict=True) if t == p)
    return {
        "macro_f1": round(float(np.mean([v["f1"] for v in per_class.values()])), 4),
        "accuracy": round(correct / len(truth), 4) if truth else 0.0,
        "handed_on": sum(1 for p in predicted if p is None),
        "per_class": per_class,
        "confusion": confusion,
    }


def _estimator(seed: int) -> Any:
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(max_iter=2000, C=4.0, random_state=seed)


def _fit(vectors: np.ndarray, labels: Sequence[str], seed: int) -> Any:
    return _estimator(seed).fit(vectors, list(labels))


def _thresholds(
    classes: Sequence[str], labels: Sequence[str], probabilities: np.ndarray, min_precision: float
) -> dict[str, float]:
    """Per class: the smallest confidence whose predictions of that class reach `min_precision`."""
    predicted = np.asarray(classes)[probabilities.argmax(axis=1)]
    confidence = probabilities.max(axis=1)
    truth = np.asarray(labels)
    out = {}
    for c in classes:
        mine = predicted == c
        best = 1.0
        for t in sorted(set(confidence[mine].tolist())):
            taken = mine & (confidence >= t)
            if taken.sum() and (truth[taken] == c).mean() >= min_precision:
                best = float(t)
                break
        out[c] = round(best, 4)
    return out


def train(
    texts: Sequence[str],
    labels: Sequence[str],
    embed: Callable[[list[str]], np.ndarray],
    *,
    embedder: str,
    data_hash: str = "",
    seed: int = 0,
    test_share: float = 0.3,
    min_precision: float = 0.95,
) -> RouteClassifier:
    """Fit on a stratified split, thresholds from 5-fold predictions on the training part, and a card
    scored on the held-out part."""
    from sklearn.model_selection import StratifiedKFold, cross_val_predict, train_test_split

    vectors = np.asarray(embed(list(texts)), dtype=np.float32)
    index = np.arange(len(texts))
    train_i, test_i = train_test_split(index, test_size=test_share, random_state=seed, stratify=list(labels))
    y_train = [labels[i] for i in train_i]
    folds = StratifiedKFold(n_splits=5, shuffle=True, random_state=seed)
    cv = cross_val_predict(
        _estimator(seed),
        vectors[train_i],
        y_train,
        cv=folds,
        method="predict_proba",
    )
    fitted = _fit(vectors[train_i], y_train, seed)
    classes = [str(c) for c in fitted.classes_]
    thresholds = _thresholds(classes, y_train, cv, min_precision)
    model = RouteClassifier(
        classes=classes,
        coef=np.asarray(fitted.coef_, dtype=np.float32),
        intercept=np.asarray(fitted.intercept_, dtype=np.float32),
        thresholds=thresholds,
        embedder=embedder,
    )
    truth = [labels[i] for i in test_i]
    held_out = model.predict(vectors[test_i])
    model.card = {
        "trained_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "data_sha256": data_hash,
        "embedder": embedder,
        "model": "sklearn LogisticRegression(C=4, max_iter=2000) on the embedder's normalised vectors",
        "seed": seed,
        "counts": {c: sum(1 for label in labels if label == c) for c in classes},
        "train": len(train_i),
        "held_out": len(test_i),
        "min_precision": min_precision,
        "thresholds": thresholds,
        "held_out_report": report(classes, truth, [p for p, _, _ in held_out]),
        "held_out_report_thresholded": report(classes, truth, [p if ok else None for p, _, ok in held_out]),
    }
    return model


def evaluate(model: RouteClassifier, labels: Sequence[str], vectors: np.ndarray) -> dict[str, Any]:
    """`report` of `model` on a labelled set, without and with its thresholds."""
    predicted = model.predict(vectors)
    return {
        **report(model.classes, list(labels), [p for p, _, _ in predicted]),
        "thresholded": report(model.classes, list(labels), [p if ok else None for p, _, ok in predicted]),
    }
