"""Gold-article hit rate of follow-up questions by search query, retrieval only (no model needed):

- `raw`: the follow-up as asked ("When did he begin his political career?"),
- `deterministic`: the fallback rewrite the chat service uses when the model's rewrite is unusable
  (previous question + names of the previous answer + the follow-up),
- `original`: the question before the subject was replaced by a pronoun (an upper bound).

    RAGSERVER_DATA_DIR=/tmp/evaldata python -m app.evaluation.followup_retrieval --collection eval-articles

A hit (`evals/followup_retrieval.py`): the gold article, or a copy with its title, among the top-k
chunks' documents. The model's own rewrite is measured end to end by
`ragserver eval rag --questions evals/data/followups/cmu-qa-dev.jsonl`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from app.container import open_container_sync
from app.services.followups import deterministic_rewrite
from app.settings import Settings
from evals.followup_retrieval import hit_rates

QUERIES = {
    "raw": lambda r: r["question"],
    "deterministic": lambda r: deterministic_rewrite(r["question"], r["history"]),
    "original": lambda r: r["original_question"],
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--questions", type=Path, default=Path("evals/data/followups/cmu-qa-dev.jsonl"))
    parser.add_argument("--collection", default="eval-articles")
    parser.add_argument("--top-k", type=int, default=5)
    args = parser.parse_args(argv)
    rows: list[dict[str, Any]] = [json.loads(line) for line in args.questions.open() if line.strip()]
    with open_container_sync(Settings()) as container:

        def search(text: str) -> list[tuple[str, str]]:
            found = container.retriever.retrieve(args.collection, text, top_k=args.top_k)
            return [(h.doc_id, str(h.metadata.get("title", ""))) for h in found]

        result = hit_rates(rows, QUERIES, search)
    print(json.dumps({"pairs": len(rows), "top_k": args.top_k, "hit_rate": result}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
