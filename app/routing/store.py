"""Routing chains and curated answers in the system of record (`routing_chains`, `curated_answers`)."""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from app.db.tables import curated_answers as curated_t
from app.db.tables import routing_chains as chains_t
from app.routing.chain import RoutingChain

CURATED_STATUSES = ("candidate", "approved", "stale", "rejected")


class ChainStore:
    def __init__(self, engine: Engine):
        self.engine = engine

    def get(self, store: str) -> RoutingChain | None:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(chains_t.c.chain_json).where(chains_t.c.collection == store)).first()
        return RoutingChain.model_validate_json(row.chain_json) if row else None

    def put(self, store: str, chain: RoutingChain | None) -> None:
        """Store `chain` for `store` (None: remove it)."""
        with self.engine.begin() as conn:
            conn.execute(sa.delete(chains_t).where(chains_t.c.collection == store))
            if chain is not None:
                conn.execute(
                    sa.insert(chains_t).values(
                        collection=store,
                        chain_json=chain.model_dump_json(exclude_none=True),
                        updated_at=time.time(),
                    )
                )


@dataclass
class CuratedAnswer:
    collection: str  # store name
    question: str
    answer: str
    citations: list[dict[str, Any]] = field(default_factory=list)
    documents: dict[str, str] = field(default_factory=dict)  # document id -> content hash at approval
    embedding: list[float] | None = None
    status: str = "candidate"
    source_response_id: str | None = None
    note: str | None = None
    id: str = field(default_factory=lambda: f"cur_{secrets.token_hex(8)}")
    created_at: float = field(default_factory=time.time)
    updated_at: float = field(default_factory=time.time)
    approved_by: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """As the admin API shows it (the embedding left out)."""
        return {k: v for k, v in asdict(self).items() if k != "embedding"}


class CuratedStore:
    def __init__(self, engine: Engine):
        self.engine = engine

    def save(self, item: CuratedAnswer) -> None:
        item.updated_at = time.time()
        values = {
            "id": item.id,
            "collection": item.collection,
            "question": item.question,
            "answer": item.answer,
            "citations_json": json.dumps(item.citations),
            "documents_json": json.dumps(item.documents),
            "embedding_json": json.dumps(item.embedding) if item.embedding is not None else None,
            "status": item.status,
            "source_response_id": item.source_response_id,
            "note": item.note,
            "created_at": item.created_at,
            "updated_at": item.updated_at,
            "approved_by": item.approved_by,
        }
        with self.engine.begin() as conn:
            conn.execute(sa.delete(curated_t).where(curated_t.c.id == item.id))
            conn.execute(sa.insert(curated_t).values(**values))

    def get(self, item_id: str) -> CuratedAnswer | None:
        found = self._select(curated_t.c.id == item_id)
        return found[0] if found else None

    def in_collection(self, store: str, status: str | None = None) -> list[CuratedAnswer]:
        where = curated_t.c.collection == store
        if status is not None:
            where = sa.and_(where, curated_t.c.status == status)
        return self._select(where)

    def by_source(self, response_id: str) -> CuratedAnswer | None:
        found = self._select(curated_t.c.source_response_id == response_id)
        return found[0] if found else None

    def _select(self, where: Any) -> list[CuratedAnswer]:
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(curated_t).where(where).order_by(curated_t.c.created_at)).all()
        return [
            CuratedAnswer(
                id=r.id,
                collection=r.collection,
                question=r.question,
                answer=r.answer,
                citations=json.loads(r.citations_json),
                documents=json.loads(r.documents_json),
                embedding=json.loads(r.embedding_json) if r.embedding_json else None,
                status=r.status,
                source_response_id=r.source_response_id,
                note=r.note,
                created_at=r.created_at,
                updated_at=r.updated_at,
                approved_by=r.approved_by,
            )
            for r in rows
        ]
