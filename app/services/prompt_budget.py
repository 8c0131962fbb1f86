"""Fit a chat prompt to the model's context window without ever losing its system message or question.

What gives way, in order: the conversation history, oldest turn first; then the sources, lowest-ranked
first. The template is re-rendered and counted after each cut (with the model's tokenizer when it has
one), so the result is measured, not guessed; the per-item costs only decide how much to cut at once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from app.llm.base import Messages, approx_tokens
from app.services.errors import PayloadTooLarge

S = TypeVar("S")

History = list[dict[str, str]]


class PromptTooLong(PayloadTooLarge):
    """Even with no history and no sources, the system message and question leave no room to answer."""


@dataclass(frozen=True)
class FittedPrompt(Generic[S]):
    messages: Messages
    history: History
    sources: list[S]
    tokens: int


def fit_prompt(
    render: Callable[[History, list[S]], Messages],
    count: Callable[[Messages], int],
    history: Sequence[dict[str, str]],
    sources: Sequence[S],
    budget: int,
    *,
    source_text: Callable[[S], str] = str,
) -> FittedPrompt[S]:
    """The prompt `render(history, sources)` with as much of `history` (newest kept) and `sources`
    (best-ranked kept: they come best first) as fits `budget` tokens by `count`.

    Raises PromptTooLong when the prompt does not fit with both gone.
    """
    kept_history, kept_sources = list(history), list(sources)
    while True:
        messages = render(kept_history, kept_sources)
        tokens = count(messages)
        if tokens <= budget:
            return FittedPrompt(messages, kept_history, kept_sources, tokens)
        over = tokens - budget
        if kept_history:
            cut = _enough(over, [approx_tokens(m["content"]) for m in kept_history])
            kept_history = kept_history[cut:]
        elif kept_sources:
            cut = _enough(over, [approx_tokens(source_text(s)) for s in reversed(kept_sources)])
            kept_sources = kept_sources[: len(kept_sources) - cut]
        else:
            raise PromptTooLong(
                f"the question needs {tokens} prompt tokens, over the {budget} the model's context window "
                "leaves beside max_tokens: shorten the question or ask for fewer max_tokens"
            )


def _enough(over: int, costs: list[int]) -> int:
    """How many items, taken from the front of `costs`, free at least `over` tokens (at least one)."""
    freed = 0
    for n, cost in enumerate(costs, start=1):
        freed += cost
        if freed >= over:
            return n
    return len(costs)
