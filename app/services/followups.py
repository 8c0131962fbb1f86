"""The search query of a follow-up question: the model's rewrite when it is usable, else a
deterministic one.

A small model asked to rewrite "And what about weekends?" into a standalone question often returns the
previous answer, the transcript, an empty line or an unrelated question. `usable_rewrite` refuses those;
`deterministic_rewrite` then builds the query from what the conversation is about: the previous user
question, the names the previous answer gave, and the follow-up itself. Retrieval needs the topic's
words, not a well-formed sentence, so this is a strong fallback on its own.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from app.services.attribution import content_terms, facts

# Transcript layout a model may echo back instead of a question.
_TRANSCRIPT = re.compile(r"^\s*(user|assistant|system|question|answer|q|a)\s*:", re.IGNORECASE | re.MULTILINE)
# How answers start, not search queries ("The answer to this question would be ...", "Yes, ...").
_ANSWERISH = re.compile(
    r"^\W*(?:the\s+answer|answer\b|yes\b|no\b|sure\b|based\s+on|according\s+to|i\s|here\b|"
    r"standalone\b|query\b|rewritten\b)",
    re.IGNORECASE,
)
# A rewrite far longer than the conversation's question is a drift, not a rewrite.
MAX_REWRITE_WORDS = 40
# Code a model wrote instead of a question ("SELECT wife FROM people WHERE name = 'Volta';").
_CODE = re.compile(
    r"\b(select\s.+\sfrom|insert\s+into|update\s+\w+\s+set|delete\s+from|create\s+table)\b|"
    r"[`{};]|\w+\s*\(.*\)\s*$|\b\w+\s*==?\s*['\"\d]",
    re.IGNORECASE,
)
# How a question starts, when it does not end with "?".
_QUESTION_START = re.compile(
    r"^\W*(who|whom|whose|what|when|where|which|why|how|is|are|was|were|do|does|did|can|could|"
    r"should|would|will|has|have|had|name|list|tell|describe|explain)\b",
    re.IGNORECASE,
)
# Words that stand for the conversation's subject in a follow-up ("What did it invent in 1800?").
_PRONOUN = re.compile(
    r"\b(it|its|he|him|his|she|her|hers|they|them|their|theirs|this|that|these|those)\b", re.I
)


def _last(history: Sequence[dict[str, str]], role: str) -> str:
    return next((m["content"] for m in reversed(history) if m["role"] == role), "")


def usable_rewrite(rewrite: str, question: str, history: Sequence[dict[str, str]]) -> bool:
    """Whether the model's standalone query can be searched with: a question (not code, not a
    statement), not the transcript, not a copy of an answer, not a drift (it must share a word with the
    follow-up or the last user turn), and, when the follow-up names its subject with a pronoun, naming
    that subject (a word of the conversation before it that the follow-up lacks)."""
    text = rewrite.strip()
    if len(text) < 3 or _TRANSCRIPT.search(text) or len(text.split()) > MAX_REWRITE_WORDS:
        return False
    if _ANSWERISH.match(text) or _CODE.search(text):
        return False
    if not (text.endswith("?") or _QUESTION_START.match(text)):
        return False
    terms = content_terms(text)
    if not terms:
        return False
    for turn in history:
        if turn["role"] == "assistant" and turn["content"].strip():
            answer_terms = content_terms(turn["content"])
            # Mostly the words of an answer, and not a question: the answer copied back.
            if answer_terms and len(terms & answer_terms) / len(terms) >= 0.8 and not text.endswith("?"):
                return False
    anchor = content_terms(question) | content_terms(_last(history, "user"))
    if not terms & anchor:
        return False
    if _PRONOUN.search(question):
        subject = (content_terms(_last(history, "user")) | content_terms(_last(history, "assistant"))) - (
            content_terms(question)
        )
        return bool(terms & subject)
    return True


def deterministic_rewrite(question: str, history: Sequence[dict[str, str]]) -> str:
    """The previous user question, the names of the previous answer, and the follow-up, as one query."""
    previous = _last(history, "user").strip()
    names = [f for f in facts(_last(history, "assistant"), sentence_starts=True) if not f[0].isdigit()][:6]
    parts = [previous, " ".join(n for n in names if n.lower() not in previous.lower()), question.strip()]
    return " ".join(p for p in parts if p)
