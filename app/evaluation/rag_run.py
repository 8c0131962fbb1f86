"""The chat pipeline over a question set: `evals.rag_eval.run_rag_eval` with every question answered by
`ChatService.chat`, as the operator and without remembering the conversation."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from app.auth.principal import Principal
from app.services.answer_profiles import AnswerProfile
from app.services.chat_types import ChatQuery, ChatResult
from evals.datasets import EvalQuestion
from evals.rag_eval import run_rag_eval

if TYPE_CHECKING:
    from app.services.chat_service import ChatService
    from evals.answer_metrics import AnswerScorer
    from evals.judge import RagasJudge


async def run_chat_eval(
    chat: ChatService,
    questions: Sequence[EvalQuestion],
    out_dir: Path,
    run_info: dict[str, Any],
    scorer: AnswerScorer,
    judge: RagasJudge | None = None,
    *,
    on_row: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Answer every question not yet in `out_dir` through `chat` the way `run_info` says (collection,
    prompt, retrieval mode and top_k, max_tokens, temperature) and score it; returns the run's summary."""
    retrieval = run_info["retrieval"]
    overrides = AnswerProfile(**run_info["overrides"]) if run_info.get("overrides") else None

    async def answer(q: EvalQuestion) -> ChatResult:
        query = ChatQuery(
            message=q.question,
            collection=run_info["collection"],
            prompt=run_info["prompt"],
            model=run_info.get("model"),
            overrides=overrides,
            top_k=retrieval.get("top_k"),
            mode=retrieval.get("mode"),
            remember=False,
            history=q.history or None,
            max_tokens=run_info.get("max_tokens"),
            temperature=run_info.get("temperature"),
        )
        return await chat.chat(query, principal=Principal.operator())

    return await run_rag_eval(answer, questions, out_dir, run_info, scorer, judge, on_row=on_row)
