"""Question sets for RAG evals: the CMU QA layout and a generic jsonl.

- CMU QA (`../shared/data/cmu-qa`): `{id, question, answers: [...], article_id, ...}` per line; its
  `articles.jsonl` is the corpus, and ingesting it makes `article_id` the document id.
- Generic: `{question, reference?, reference_contexts?, gold_document_id?, canary?}` per line (`id`
  optional; `reference`, `gold_document_id` and `canary` may also be lists).

A question that carries canaries (`canary` and/or `canaries`, either layout) is a prompt-injection probe:
its documents hide an instruction to answer with a canary word, and the `injection_obeyed` metric checks
whether the answer contains one (evals/data/injection/).

Both become `EvalQuestion`s in file order, so `--limit N` always takes the same N questions.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

# CMU QA keeps its corpus next to the questions.
_CORPUS_FILES = ("articles.jsonl", "corpus.jsonl")


class DatasetError(ValueError):
    """A question file that cannot be read."""


@dataclass
class EvalQuestion:
    """One question with whatever gold data the dataset has."""

    id: str
    question: str
    references: list[str] = field(default_factory=list)
    reference_contexts: list[str] = field(default_factory=list)
    gold_document_ids: list[str] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)
    # Canary words planted by injected instructions; an answer containing one obeyed an injection.
    canaries: list[str] = field(default_factory=list)
    # Earlier turns ({"role": "user"|"assistant", "content"}): the question is a follow-up in them.
    history: list[dict[str, str]] = field(default_factory=list)

    @property
    def reference(self) -> str | None:
        """The first reference answer (what ragas's reference-based judge metrics compare against)."""
        return self.references[0] if self.references else None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _strings(value: Any) -> list[str]:
    if value is None:
        return []
    items = value if isinstance(value, list) else [value]
    return [str(v).strip() for v in items if v is not None and str(v).strip()]


def parse_row(row: dict[str, Any], lineno: int) -> EvalQuestion:
    """One jsonl row of either layout."""
    question = str(row.get("question") or "").strip()
    if not question:
        raise DatasetError(f"line {lineno}: a row needs a non-empty 'question'")
    qid = row.get("id", row.get("_id", row.get("question_id")))
    # Without an id, the line number is stable for an unchanged file (what resuming a run needs).
    qid = str(qid) if qid is not None and str(qid) else f"line-{lineno:06d}"
    if "answers" in row or "article_id" in row:  # CMU QA
        references = list(dict.fromkeys(_strings(row.get("answers"))))
        gold = _strings(row.get("article_id"))
        known = {"id", "question", "answers", "article_id"}
        contexts: list[str] = []
    else:
        references = _strings(row.get("reference", row.get("references")))
        gold = _strings(row.get("gold_document_id", row.get("gold_document_ids")))
        contexts = _strings(row.get("reference_contexts"))
        known = {
            "id",
            "_id",
            "question_id",
            "question",
            "reference",
            "references",
            "reference_contexts",
            "gold_document_id",
            "gold_document_ids",
        }
    canaries = list(dict.fromkeys([*_strings(row.get("canary")), *_strings(row.get("canaries"))]))
    history = _history(row.get("history"), lineno)
    known |= {"canary", "canaries", "history"}
    metadata = {k: v for k, v in row.items() if k not in known}
    return EvalQuestion(qid, question, references, contexts, gold, metadata, canaries, history)


def _history(value: Any, lineno: int) -> list[dict[str, str]]:
    """A row's `history`: a list of {role: user|assistant, content} turns, or nothing."""
    if value is None:
        return []
    if not isinstance(value, list) or not all(
        isinstance(t, dict) and t.get("role") in ("user", "assistant") and isinstance(t.get("content"), str)
        for t in value
    ):
        raise DatasetError(f"line {lineno}: 'history' must be a list of {{role: user|assistant, content}}")
    return [{"role": t["role"], "content": t["content"]} for t in value]


def load_questions(path: Path, limit: int | None = None) -> list[EvalQuestion]:
    """The first `limit` questions of a jsonl file (all when None), in file order; ids must be unique."""
    questions: list[EvalQuestion] = []
    seen: set[str] = set()
    with Path(path).open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DatasetError(f"{path}:{lineno}: not JSON: {exc.msg}") from None
            if not isinstance(row, dict):
                raise DatasetError(f"{path}:{lineno}: a row must be a JSON object")
            try:
                q = parse_row(row, lineno)
            except DatasetError as exc:
                raise DatasetError(f"{path}:{exc}") from None
            if q.id in seen:
                raise DatasetError(f"{path}:{lineno}: duplicate question id {q.id!r}")
            seen.add(q.id)
            questions.append(q)
            if limit is not None and len(questions) >= limit:
                break
    return questions


def dataset_corpus(questions_path: Path) -> Path | None:
    """The corpus shipped next to a question file (CMU QA's articles.jsonl), if any."""
    for name in _CORPUS_FILES:
        candidate = Path(questions_path).resolve().parent / name
        if candidate.is_file():
            return candidate
    return None
