"""Labelled sets for the routing chain's classifier stage: INTENT (which topic area, and so which team, a
question is about) and SCOPE (`answerable` from the documents, `small_talk`, or `out_of_scope`).

The classifier is a logistic regression on sentence embeddings; it needs labelled questions to be fitted and
measured on. The documents are the 130 CMU QA Wikipedia articles, which may not be copied into this
repository, so the repository holds only what is ours, and this module joins it with the dataset at run time:

- `evals/data/routing/categories.json`: every article title mapped to a category (`us_presidents`,
  `scientists`, `artists`, `animals`, `countries`, `cities`, `languages`, `instruments`). Titles are
  compared normalised (underscores as spaces, case-folded): articles.jsonl says "polar bear", the questions'
  `article_title` says "polar_bear".
- `evals/data/routing/small_talk.jsonl`, `out_of_scope.jsonl`: hand-written rows `{"text", "label"}`, the
  questions and chatter a documents assistant should not search for.

    python -m evals.routing_labels intents --questions ../shared/data/cmu-qa/questions-dev.jsonl --out X.jsonl
    python -m evals.routing_labels scope --questions ../shared/data/cmu-qa/questions-dev.jsonl --out Y.jsonl

Each writes JSON lines `{"text", "label"}`; the last line printed is JSON with the rows per label. Texts are
deduplicated (the first kept); a question whose article title has no category is skipped and counted.
Deterministic: the same inputs (and seed) always give the same file.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

DATA_DIR = Path(__file__).resolve().parent / "data" / "routing"
DEFAULT_CATEGORIES = DATA_DIR / "categories.json"
DEFAULT_SMALL_TALK = DATA_DIR / "small_talk.jsonl"
DEFAULT_OUT_OF_SCOPE = DATA_DIR / "out_of_scope.jsonl"
# ../shared/data next to the repository: read at run time, never copied in.
DEFAULT_QUESTIONS = Path(__file__).resolve().parents[2] / "shared" / "data" / "cmu-qa" / "questions-dev.jsonl"

ANSWERABLE = "answerable"
SMALL_TALK = "small_talk"
OUT_OF_SCOPE = "out_of_scope"
SCOPE_LABELS = (ANSWERABLE, SMALL_TALK, OUT_OF_SCOPE)


def normalise_title(title: str) -> str:
    """The form titles are compared in: "Gray_Wolf" and "gray wolf" are one title."""
    return " ".join(title.replace("_", " ").split()).casefold()


def _text_key(text: str) -> str:
    """Texts that differ only in surrounding or repeated whitespace are the same text."""
    return " ".join(text.split())


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The JSON objects of a JSON-lines file, blank lines skipped."""
    rows: list[dict[str, Any]] = []
    with Path(path).open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            row = json.loads(line)
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{n}: expected a JSON object")
            rows.append(row)
    return rows


def load_categories(path: Path = DEFAULT_CATEGORIES) -> dict[str, str]:
    """Normalised title -> category. Two spellings of one title ("Otter", "otter") must agree."""
    raw = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a JSON object of title -> category")
    categories: dict[str, str] = {}
    for title, category in raw.items():
        if not isinstance(category, str) or not category:
            raise ValueError(f"{path}: {title!r} has no category")
        key = normalise_title(title)
        if categories.get(key, category) != category:
            raise ValueError(f"{path}: {title!r} is mapped to both {categories[key]!r} and {category!r}")
        categories[key] = category
    return categories


def label_intents(
    questions: Iterable[Mapping[str, Any]], categories: Mapping[str, str]
) -> tuple[list[dict[str, str]], Counter[str]]:
    """Each question -> {"text": question, "label": its article's category}, and the titles that had none.

    `categories` is keyed by normalised title (`load_categories`). Identical texts are kept once (the
    first); empty questions are dropped; a question of an unmapped title is skipped and counted.
    """
    rows: list[dict[str, str]] = []
    seen: set[str] = set()
    unmapped: Counter[str] = Counter()
    for q in questions:
        text = _text_key(str(q.get("question") or ""))
        if not text:
            continue
        category = categories.get(normalise_title(str(q.get("article_title") or "")))
        if category is None:
            unmapped[str(q.get("article_title") or "")] += 1
            continue
        if text in seen:
            continue
        seen.add(text)
        rows.append({"text": text, "label": category})
    return rows, unmapped


def build_intents(
    questions_path: Path,
    categories_path: Path = DEFAULT_CATEGORIES,
    *,
    unmapped: Counter[str] | None = None,
) -> list[dict[str, str]]:
    """The INTENT set: each CMU QA question labelled with its article's category.

    Questions of a title without a category are skipped; pass `unmapped` to receive their titles and
    counts (main() reports the total).
    """
    rows, missing = label_intents(read_jsonl(questions_path), load_categories(categories_path))
    if unmapped is not None:
        unmapped.update(missing)
    return rows


def _hand_written(path: Path, label: str) -> list[dict[str, str]]:
    """The rows of one hand-written file; every row must carry `label` and a non-empty text."""
    rows = []
    for n, row in enumerate(read_jsonl(path), 1):
        text = _text_key(str(row.get("text") or ""))
        if not text:
            raise ValueError(f"{path}: row {n} has no text")
        if row.get("label") != label:
            raise ValueError(f"{path}: row {n} is labelled {row.get('label')!r}, not {label!r}")
        rows.append({"text": text, "label": label})
    return rows


def build_scope(
    questions_path: Path,
    small_talk_path: Path = DEFAULT_SMALL_TALK,
    out_of_scope_path: Path = DEFAULT_OUT_OF_SCOPE,
    *,
    answerable_per_label: int | None = None,
    seed: int = 0,
) -> list[dict[str, str]]:
    """The SCOPE set: CMU QA questions as `answerable`, plus the hand-written small talk and out-of-scope.

    With `answerable_per_label`, the answerable rows are a seeded sample of that many (in file order), to
    keep the classes closer in size; the hand-written rows are always all kept. Identical texts are kept
    once; a text written under two labels is an error, since the set would contradict itself.
    """
    answerable: list[dict[str, str]] = []
    seen: set[str] = set()
    for q in read_jsonl(questions_path):
        text = _text_key(str(q.get("question") or ""))
        if text and text not in seen:
            seen.add(text)
            answerable.append({"text": text, "label": ANSWERABLE})
    if answerable_per_label is not None:
        if answerable_per_label < 0:
            raise ValueError("answerable_per_label must be >= 0")
        if answerable_per_label < len(answerable):
            keep = sorted(random.Random(seed).sample(range(len(answerable)), answerable_per_label))
            answerable = [answerable[i] for i in keep]

    rows: list[dict[str, str]] = []
    labels: dict[str, str] = {}
    for row in [
        *answerable,
        *_hand_written(small_talk_path, SMALL_TALK),
        *_hand_written(out_of_scope_path, OUT_OF_SCOPE),
    ]:
        earlier = labels.get(row["text"])
        if earlier is None:
            labels[row["text"]] = row["label"]
            rows.append(row)
        elif earlier != row["label"]:
            raise ValueError(f"{row['text']!r} is labelled both {earlier!r} and {row['label']!r}")
    return rows


def write_jsonl(rows: Iterable[Mapping[str, Any]], out: Path) -> None:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps({"text": row["text"], "label": row["label"]}, ensure_ascii=False) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("task", choices=["intents", "scope"])
    parser.add_argument("--questions", type=Path, default=DEFAULT_QUESTIONS, help="CMU QA questions JSONL")
    parser.add_argument("--out", type=Path, required=True, help="where to write the JSON lines")
    parser.add_argument("--categories", type=Path, default=DEFAULT_CATEGORIES)
    parser.add_argument("--small-talk", type=Path, default=DEFAULT_SMALL_TALK)
    parser.add_argument("--out-of-scope", type=Path, default=DEFAULT_OUT_OF_SCOPE)
    parser.add_argument("--answerable-per-label", type=int, default=None, help="scope: sample this many")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--merge",
        action="append",
        default=[],
        metavar="LABEL:INTO",
        help="intents: relabel LABEL as INTO (repeatable), e.g. cities:places countries:places for one "
        "geography team",
    )
    args = parser.parse_args(argv)
    merges = dict(m.split(":", 1) for m in args.merge if ":" in m)
    if len(merges) != len(args.merge):
        sys.exit("--merge takes LABEL:INTO")
    if not args.questions.is_file():
        sys.exit(f"{args.questions} not found: pass --questions (the CMU QA set lives in ../shared/data)")

    summary: dict[str, Any] = {"task": args.task}
    if args.task == "intents":
        unmapped: Counter[str] = Counter()
        rows = [
            {**r, "label": merges.get(r["label"], r["label"])}
            for r in build_intents(args.questions, args.categories, unmapped=unmapped)
        ]
        summary["skipped_unmapped"] = sum(unmapped.values())
        if unmapped:
            print(f"no category for: {dict(unmapped)}", file=sys.stderr)
    else:
        rows = build_scope(
            args.questions,
            args.small_talk,
            args.out_of_scope,
            answerable_per_label=args.answerable_per_label,
            seed=args.seed,
        )
    write_jsonl(rows, args.out)
    summary["rows"] = len(rows)
    summary["labels"] = dict(sorted(Counter(r["label"] for r in rows).items()))
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
