"""Build a labelled answerability set from CMU QA: questions the collection can answer, and two kinds it
cannot, for fitting and measuring when ragserver abstains.

    python -m evals.make_answerability --questions ../shared/data/cmu-qa/questions-dev.jsonl \
        --articles ../shared/data/cmu-qa/articles.jsonl --out evals/data/answerability/cmu-qa-dev.jsonl

- `answerable`: a question of an article in the collection, with its human answers.
- `absent`: a question about a subject the collection does not hold: every sixth article (by id) is left
  out of the collection (`corpus_excludes` in the first row), and its questions are asked anyway.
- `swapped`: a question of another article of the same topic set with its subject's name replaced by
  this article's ("When did Grant sign the National Banking Act?" asked of Ulysses Grant's article),
  kept only when it is not a yes/no question, its original answer does not occur in this article, and
  it asks about something this article never mentions (a name, or two words, beyond question words and
  the subject's name, whose first four letters begin no word of the article: "National Banking"): a
  question about the right subject whose answer the article does not contain. Without that last rule a
  third of them were answerable after all ("What is the population of Qatar?", "Where is Ford
  buried?"); questions whose words all occur but whose fact is missing cannot be labelled without
  reading, so they are left out.

Rows carry `split` ("train" or "test") by article, so no article's questions are on both sides.
Deterministic: the same input always gives the same file.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

from evals.make_followups import subject_names

ABSENT_EVERY = 6
PER_ARTICLE = {"answerable": 2, "absent": 3, "swapped": 2}
# Words of any question: not what it asks about.
_ASKING = frozenset(
    "what which who whom whose when where why how many much long name named called kind type year years "
    "does did do is are was were has have had been the a an of in on at to for by from with and or its "
    "their his her they it this that these those one also most first some other than into about begin began "
    "become became make made take took give gave known know come came called used still ever".split()
)
_WORDS = re.compile(r"[a-z]+")
TEST_SHARE = 0.3
_YES_NO = frozenset({"yes", "no", "yes.", "no."})


def _stable(text: str) -> float:
    """A number in [0, 1) fixed by `text`."""
    return int(hashlib.sha256(text.encode()).hexdigest()[:8], 16) / 2**32


def _topic(article_id: str) -> str:
    """The topic set of a CMU QA article id (".../S08/data/set3/a4.txt.clean" -> "set3")."""
    match = re.search(r"/(set\d+)/", article_id)
    return match.group(1) if match else ""


def _good(question: dict[str, Any]) -> bool:
    answers = [a for a in question.get("answers") or [] if a and a.strip().upper() != "NULL"]
    text = question["question"].strip()
    return bool(answers) and text.endswith("?") and 4 <= len(text.split()) <= 30


_AUX_START = re.compile(r"^(is|are|was|were|do|does|did|has|have|had|can|could|will|would|should)\b", re.I)


def usable_questions(questions: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The questions with an answer, a question mark and 4-30 words, each text once."""
    seen: set[str] = set()
    out = []
    for q in questions:
        key = q["question"].strip().lower()
        if _good(q) and key not in seen:
            seen.add(key)
            out.append(q)
    return out


def _is_yes_no(question: dict[str, Any]) -> bool:
    """A yes/no or either/or question: asked of another subject its answer is still a guess away."""
    text = question["question"]
    if _AUX_START.match(text.strip()) or " or " in text:
        return True
    return all(a.strip().lower() in _YES_NO for a in question["answers"])


def _prefixes(text: str) -> set[str]:
    """The first four letters of each word of 4+ letters of `text` (lowercased)."""
    return {w[:4] for w in _WORDS.findall(text.lower()) if len(w) >= 4}


def _asks_about_absent(question: str, subject: str, article_text: str, donor_text: str) -> bool:
    """Whether the question asks about something the article never mentions: a name (a capitalised word
    past the first), or two words, of 4+ letters, not question words and not the subject's name, whose
    first four letters begin no word of the article but some word of the question's own article (so a
    typo, "poulation", does not count). One common word is not enough: "What is Becquerel most famous
    for?" is answerable without the word "famous"."""
    named = set(_WORDS.findall(subject.lower()))
    mine, theirs = _prefixes(article_text), _prefixes(donor_text)
    missing = [
        w
        for w in re.findall(r"[A-Za-z]+", question)[1:]
        if len(w) >= 4
        and w.lower() not in _ASKING | named
        and w.lower()[:4] not in mine
        and w.lower()[:4] in theirs
    ]
    return len(missing) >= 2 or any(w[0].isupper() for w in missing)


def _named(question: str, title: str) -> str | None:
    """The name of the article's subject the question uses (longest first), if any."""
    for name in subject_names(title):
        if re.search(rf"\b{re.escape(name)}\b", question):
            return name
    return None


def build(questions: list[dict[str, Any]], articles: list[dict[str, Any]]) -> list[dict[str, Any]]:
    by_id = {a["_id"]: a for a in articles}
    ordered = sorted(by_id)
    absent = {aid for i, aid in enumerate(ordered) if i % ABSENT_EVERY == ABSENT_EVERY - 1}
    split = {aid: "test" if _stable(aid) < TEST_SHARE else "train" for aid in ordered}
    per_article: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for q in usable_questions(questions):
        if q.get("article_id") in by_id:
            per_article[q["article_id"]].append(q)
    rows: list[dict[str, Any]] = []

    def add(kind: str, aid: str, question: str, answers: list[str], source: str) -> None:
        rows.append(
            {
                "id": f"{kind}-{hashlib.sha256((aid + question).encode()).hexdigest()[:10]}",
                "question": question,
                "label": "answerable" if kind == "answerable" else "unanswerable",
                "kind": kind,
                "article_id": aid,
                "article_title": by_id[aid]["title"],
                "answers": answers,
                "from_question": source,
                "split": split[aid],
            }
        )

    for aid in ordered:
        mine = sorted(per_article[aid], key=lambda q: _stable(q["id"]))
        if aid in absent:
            for q in mine[: PER_ARTICLE["absent"]]:
                add("absent", aid, q["question"], [], q["id"])
            continue
        for q in mine[: PER_ARTICLE["answerable"]]:
            add("answerable", aid, q["question"], q["answers"], q["id"])
        title = by_id[aid]["title"]
        text = by_id[aid]["text"].lower()
        topic = _topic(aid)
        donors = sorted(
            (
                q
                for other in ordered
                if other != aid and other not in absent and _topic(other) == topic
                for q in per_article[other]
            ),
            key=lambda q: _stable(aid + q["id"]),
        )
        made = 0
        for q in donors:
            if made == PER_ARTICLE["swapped"]:
                break
            if _is_yes_no(q) or any(a.strip().lower().rstrip(".") in text for a in q["answers"]):
                continue
            name = _named(q["question"], by_id[q["article_id"]]["title"])
            if name is None:
                continue
            mine_name = subject_names(title)[0 if " " in name else -1]
            swapped = re.sub(rf"\b{re.escape(name)}\b", mine_name, q["question"])
            if not _asks_about_absent(swapped, title, text, by_id[q["article_id"]]["text"]):
                continue
            add("swapped", aid, swapped, [], q["id"])
            made += 1
    if rows:
        rows[0]["corpus_excludes"] = sorted(absent)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=Path, required=True)
    parser.add_argument("--articles", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    questions = [json.loads(line) for line in args.questions.read_text().splitlines() if line.strip()]
    articles = [json.loads(line) for line in args.articles.read_text().splitlines() if line.strip()]
    rows = build(questions, articles)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    counts: dict[str, int] = defaultdict(int)
    for r in rows:
        counts[f"{r['split']}/{r['kind']}"] += 1
    print(json.dumps({"rows": len(rows), **dict(sorted(counts.items()))}))


if __name__ == "__main__":
    main()
