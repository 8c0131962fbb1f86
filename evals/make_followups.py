"""Build a follow-up question set from CMU QA: pairs of questions on one article where the second refers
back to the article's subject with a pronoun, as a conversation turn.

    python -m evals.make_followups --questions ../shared/data/cmu-qa/questions-dev.jsonl \
        --articles ../shared/data/cmu-qa/articles.jsonl --out evals/data/followups/cmu-qa-dev.jsonl

For each article, a question naming the subject ("When did Lincoln begin his political career?") gets the
name replaced by the pronoun the article itself uses most for its subject ("When did he begin his
political career?"), and is preceded by another question on the same article that names the subject,
with its human answer, as history. The gold article of the follow-up is the article: `eval rag` runs the
set (its `history` makes every row a follow-up turn) and its hit rate is the follow-up hit rate.
Deterministic: the same input always gives the same file.
"""

from __future__ import annotations

import argparse
import json
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

PER_ARTICLE = 3
# (subject, possessive, object) forms.
_PRONOUNS = {
    "he": ("he", "his", "him"),
    "she": ("she", "her", "her"),
    "it": ("it", "its", "it"),
    "they": ("they", "their", "them"),
}
# After these words a pronoun takes its object form ("named after him").
_OBJECT_AFTER = frozenset(
    "to of after by for with about from at on in into than like against between among toward towards "
    "under over behind before beside near called named honored honoured visited met married elected "
    "defeated succeeded influenced including".split()
)
_QUESTION_WORDS = frozenset("was is did does do who what when where why how which were are has had".split())


def subject_names(title: str) -> list[str]:
    """Ways a question names the article's subject, longest first: "Abraham Lincoln", "Lincoln"."""
    words = [w for w in title.replace("_", " ").split() if w]
    names = [" ".join(words)]
    if len(words) > 1 and len(words[-1]) >= 4 and words[-1][0].isupper():
        names.append(words[-1])
    return list(dict.fromkeys(names))


# Words that may follow a subject name in a question ("When did Lincoln die?", "Is Ghana a republic?").
_VERBS_AFTER_SUBJECT = frozenset(
    "is was are were has have had did does do die died born begin began become became lose lost win won "
    "sign signed live lived work worked study studied write wrote grow grew get got make made take took "
    "achieve achieved gain gained call called graduate graduated suggest suggested attend attended marry "
    "married serve served hold held move moved return returned publish published discover discovered "
    "receive received use used run ran leave left join joined first also ever still a an the in at "
    "of on to for by during after before".split()
)


def pronoun_of(text: str) -> tuple[str, str, str]:
    """The pronoun the article uses most for its subject: (subject, possessive, object) forms."""
    sample = f" {text[:20000].lower()} "
    counts = {
        key: sum(sample.count(f" {w} ") for w in forms[:2])
        for key, forms in _PRONOUNS.items()
        if key != "they"
    }
    best = max(counts, key=lambda k: counts[k])
    return _PRONOUNS[best]


def refer_back(question: str, names: list[str], pronoun: tuple[str, str, str]) -> str | None:
    """`question` with its one mention of the subject replaced by a pronoun; None when it names the
    subject not exactly once, or only as part of another name ("Lorenzo ... Avogadro", "the Celsius
    crater"), or as a common noun without "the" ("a beetle"): then it is not a clean follow-up."""
    for name in names:
        proper = name[0].isupper()
        # "the" before a proper name is optional ("(the) Gray Wolf"); a common noun needs it ("the beetle").
        article = r"(?:the\s+)?" if proper else r"(?:the\s+)"
        pattern = re.compile(rf"\b{article}{re.escape(name)}(?:\s?['’]s)?\b", 0 if proper else re.IGNORECASE)
        found = list(pattern.finditer(question))
        if len(found) != 1:
            continue
        match = found[0]
        before = question[: match.start()].split()
        after = question[match.end() :].split()
        if before and before[-1][:1].isupper() and before[-1].lower() not in _QUESTION_WORDS:
            continue  # the end of a longer name
        if after and after[0][:1].isupper():
            continue  # the start of a longer name
        possessive = match.group(0).lower().endswith(("'s", "’s"))
        if after and not possessive and after[0].isalpha() and after[0].islower():
            # "the Celsius crater": the name qualifies a noun; keep only verbs and function words after it.
            if after[0].lower() not in _VERBS_AFTER_SUBJECT:
                continue
        if possessive:
            word = pronoun[1]
        elif before and before[-1].lower() in _OBJECT_AFTER:
            word = pronoun[2]
        else:
            word = pronoun[0]
        start = match.start()
        rewritten = question[:start] + word + question[match.end() :]
        if start == 0:
            rewritten = rewritten[0].upper() + rewritten[1:]
        if any(re.search(rf"\b{re.escape(n)}\b", rewritten, re.IGNORECASE) for n in names):
            return None
        return rewritten
    return None


def build(questions: list[dict[str, Any]], articles: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    by_article: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for q in questions:
        by_article[q["article_id"]].append(q)
    rows: list[dict[str, Any]] = []
    for article_id, group in by_article.items():
        article = articles.get(article_id)
        if article is None:
            continue
        names = subject_names(group[0]["article_title"])
        pronoun = pronoun_of(article["text"])
        naming = [
            q for q in group if any(re.search(rf"\b{re.escape(n)}\b", q["question"], re.I) for n in names)
        ]
        # The first turn: a question naming the subject with an answer that is not yes/no, if any.
        openers = [q for q in naming if q["answers"] and q["answers"][0].strip().lower() not in ("yes", "no")]
        made = 0
        for q in naming:
            if made >= PER_ARTICLE:
                break
            follow = refer_back(q["question"], names, pronoun)
            opener = next((o for o in openers or naming if o["id"] != q["id"]), None)
            if follow is None or opener is None:
                continue
            rows.append(
                {
                    "id": f"followup-{q['id']}",
                    "question": follow,
                    "history": [
                        {"role": "user", "content": opener["question"]},
                        {"role": "assistant", "content": opener["answers"][0]},
                    ],
                    "answers": q["answers"],
                    "article_id": article_id,
                    "article_title": q["article_title"],
                    "original_question": q["question"],
                }
            )
            made += 1
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--questions", type=Path, default=Path("../shared/data/cmu-qa/questions-dev.jsonl"))
    parser.add_argument("--articles", type=Path, default=Path("../shared/data/cmu-qa/articles.jsonl"))
    parser.add_argument("--out", type=Path, default=Path("evals/data/followups/cmu-qa-dev.jsonl"))
    args = parser.parse_args(argv)
    questions = [json.loads(line) for line in args.questions.open() if line.strip()]
    articles = {a["_id"]: a for a in map(json.loads, args.articles.open()) if a}
    rows = build(questions, articles)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("w") as out:
        for row in rows:
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
    print(
        json.dumps(
            {"followups": len(rows), "articles": len({r["article_id"] for r in rows}), "out": str(args.out)}
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
