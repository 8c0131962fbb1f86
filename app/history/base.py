"""Conversation history: the `Turn` record, the `HistoryStore` protocol and token-budget trimming.

Two implementations pass the same contract suite (tests/contract/history_contract.py):
`SQLiteHistoryStore` (one machine) and `RedisHistoryStore` (API replicas share state).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, runtime_checkable

ROLES = ("user", "assistant")

TokenCounter = Callable[[str], float]


@dataclass
class Turn:
    """One message of a conversation.

    `metadata` carries what produced an assistant turn (response_id, citations, prompt name@version, ...);
    it must be JSON-serialisable because both stores keep turns as JSON.
    """

    role: str
    content: str
    created_at: float
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"Turn.role must be one of {ROLES}, got {self.role!r}")

    def to_json(self) -> str:
        """Serialise for storage (unicode kept as-is, so stored text stays readable)."""
        return json.dumps(asdict(self), ensure_ascii=False)

    @classmethod
    def from_json(cls, raw: str | bytes) -> Turn:
        """Inverse of `to_json`."""
        data = json.loads(raw)
        return cls(
            role=data["role"],
            content=data["content"],
            created_at=float(data["created_at"]),
            metadata=data.get("metadata") or {},
        )


class HistoryStoreError(Exception):
    """The store failed or could not be reached (Redis down or hanging, SQLite locked or broken)."""


@runtime_checkable
class HistoryStore(Protocol):
    """Where conversations live between requests.

    Every conversation expires `ttl_s` seconds after its last `append`, and keeps at most `max_turns`
    most recent turns. `append`, `get` and `delete` raise `HistoryStoreError` when the backend fails.
    """

    async def append(self, conversation_id: str, turns: list[Turn]) -> None:
        """Add `turns` (oldest first) to the conversation, creating it if needed.

        Trims to the `max_turns` newest turns and refreshes the TTL, atomically with the insert, so
        concurrent appends never lose turns nor interleave inside one call's batch. An empty `turns`
        list is a no-op (Redis cannot hold an empty list, so neither store creates one).
        """
        ...

    async def get(self, conversation_id: str) -> list[Turn] | None:
        """The turns, oldest first; None when the conversation is unknown or expired."""
        ...

    async def delete(self, conversation_id: str) -> bool:
        """Forget the conversation; False when it was unknown or already expired."""
        ...

    async def ping(self) -> bool:
        """True when the backend answers (for health checks); never raises."""
        ...

    async def aclose(self) -> None:
        """Release connections; the store must not be used afterwards."""
        ...


def approx_token_count(text: str) -> float:
    """Cheap token estimate: whitespace words * 1.3 (sub-word tokenizers split long words)."""
    return len(text.split()) * 1.3


def trim_to_token_budget(
    turns: Sequence[Turn], budget: float, count_tokens: TokenCounter = approx_token_count
) -> list[Turn]:
    """Keep the most recent whole turns whose token count fits in `budget`, oldest first.

    Stops at the first turn (walking back from the newest) that would overflow, so the result is
    always a contiguous suffix: skipping an old long turn but keeping an older short one would hand the
    model a conversation with a hole in it. If the newest turn alone exceeds the budget, returns [].
    Pass the LLM tokenizer's counter as `count_tokens` for exact budgets.
    """
    kept: list[Turn] = []
    used = 0.0
    for turn in reversed(turns):
        used += count_tokens(turn.content)
        if used > budget:
            break
        kept.append(turn)
    kept.reverse()
    return kept
