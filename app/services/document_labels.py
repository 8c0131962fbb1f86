"""Document classification at ingestion: a collection's labeler writes a label into each new or changed
document's metadata before it is chunked, so retrieval filters (`{"topic": "hr"}`) and the routing chain's
steering (a rule or classifier route with `profile` / `collection`) can use it.

Two kinds, both on the query encoder's vectors of the document's title and opening text:
- **zero-shot**: `labels: {hr: "leave, payroll, benefits", it: "laptops, VPN, passwords"}`: the label
  whose description is most similar, when at least `min_similarity`;
- **trained**: `model: DIR`, a classifier written by `ragserver routes train` (labelled documents'
  texts), under `collections.model_roots`; a prediction under its fitted threshold sets no label.

A label the uploader gave (the same metadata field) is kept. The label is not part of a document's
content, so an unchanged document re-ingested keeps the label it got (change the labeler, then re-ingest
the documents whose label should change, e.g. with a rebuild).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import sqlalchemy as sa
from pydantic import BaseModel, ConfigDict, Field, model_validator
from sqlalchemy.engine import Engine

from app.auth.audit import audited
from app.auth.principal import Principal
from app.db.tables import document_labelers as labelers_t
from app.services.errors import InvalidInput, parse_model
from app.services.refreshing import Refreshing
from app.settings import Settings
from ingest.types import SourceDocument
from ingest.vector_index import base_store_name

if TYPE_CHECKING:
    from app.auth.audit import AuditLog
    from app.routing.classifier import RouteClassifier
    from app.services.retrieval_service import RetrievalService

# How much of a document is read to label it (its title and its opening text).
LABEL_TEXT_CHARS = 2000


class LabelerSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    field: str = Field("label", pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
    labels: dict[str, str] | None = Field(None, max_length=100)
    model: str | None = Field(None, max_length=4096)
    min_similarity: float = Field(0.2, ge=-1.0, le=1.0)

    @model_validator(mode="after")
    def _one_kind(self) -> LabelerSpec:
        if (self.labels is None) == (self.model is None):
            raise ValueError("give labels (zero-shot: label -> description) or model (a trained classifier)")
        for name, description in (self.labels or {}).items():
            if not name or len(name) > 64 or not description.strip() or len(description) > 2000:
                raise ValueError("a label is 1-64 characters and its description 1-2000")
        return self


def parse_labeler(data: Any) -> LabelerSpec:
    return parse_model(
        data,
        LabelerSpec,
        what="document labeler",
        shape="a mapping (field, labels or model)",
        code="invalid_labeler",
    )


class DocumentLabels:
    """Per collection: the labeler's spec (read again after `experiments.refresh_s`), and `label`, which
    the ingestion pipeline calls for every new or changed document (in its own thread)."""

    def __init__(
        self,
        settings: Settings,
        engine: Engine,
        *,
        embed: Callable[[list[str]], np.ndarray],
        embedder_id: Callable[[], str],
        classifier: Callable[[str], RouteClassifier],
        retrieval: RetrievalService,
        audit: AuditLog | None = None,
    ):
        self.settings = settings
        self.engine = engine
        self.embed = embed
        self.embedder_id = embedder_id
        self.classifier = classifier  # a model directory -> its classifier (checked under the roots)
        self.retrieval = retrieval
        self.audit = audit
        self._lock = threading.Lock()
        self._specs = Refreshing(self._read_spec, lambda: settings.experiments.refresh_s)
        self._descriptions: dict[str, tuple[list[str], np.ndarray]] = {}

    # -- ingestion -----------------------------------------------------------------------------

    def label(self, collection: str, doc: SourceDocument) -> dict[str, Any]:
        """The metadata to add to `doc` in (physical) collection `collection`: {field: label}, or nothing."""
        spec = self._specs.get(base_store_name(collection))
        if spec is None or spec.field in doc.metadata:
            return {}
        vector = np.asarray(self.embed([f"{doc.title}\n{doc.text[:LABEL_TEXT_CHARS]}"]), dtype=np.float32)
        if spec.model is not None:
            label, _, confident = self.classifier(spec.model).predict(vector)[0]
            return {spec.field: label} if confident else {}
        names, matrix = self._label_vectors(spec)
        scores = matrix @ vector[0]
        best = int(np.argmax(scores))
        return {spec.field: names[best]} if float(scores[best]) >= spec.min_similarity else {}

    def _label_vectors(self, spec: LabelerSpec) -> tuple[list[str], np.ndarray]:
        key = spec.model_dump_json()
        with self._lock:
            found = self._descriptions.get(key)
        if found is None:
            names = list(spec.labels or {})
            matrix = np.asarray(
                self.embed([f"{n}: {(spec.labels or {})[n]}" for n in names]), dtype=np.float32
            )
            found = (names, matrix)
            with self._lock:
                self._descriptions[key] = found
        return found

    def _read_spec(self, store: str) -> LabelerSpec | None:
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(labelers_t.c.spec_json).where(labelers_t.c.collection == store)
            ).first()
        return LabelerSpec.model_validate_json(row.spec_json) if row else None

    # -- admin ---------------------------------------------------------------------------------

    async def get(self, principal: Principal, collection: str) -> dict[str, Any]:
        store = await self.retrieval.resolve_collection(collection, principal=principal)
        self._specs.forget(store)
        spec = await self._specs.aget(store)
        return {"collection": collection, "labeler": spec.model_dump(exclude_none=True) if spec else None}

    async def set(self, principal: Principal, collection: str, spec: LabelerSpec | None) -> dict[str, Any]:
        """Set (None: remove) the collection's labeler; a trained model must load, under the model roots,
        and match the serving embedder."""
        store = await self.retrieval.resolve_collection(collection, principal=principal)
        async with audited(self.audit, principal, "labels.set", collection=collection, object_id=collection):
            if spec is not None and spec.model is not None:
                model = await asyncio.to_thread(self.classifier, spec.model)
                if model.embedder != self.embedder_id():
                    raise InvalidInput(
                        f"the classifier was trained on {model.embedder!r}; this server embeds with "
                        f"{self.embedder_id()!r}",
                        code="invalid_labeler",
                    )
            await asyncio.to_thread(self._put, store, spec)
        self._specs.forget(store)
        return {"collection": collection, "labeler": spec.model_dump(exclude_none=True) if spec else None}

    def _put(self, store: str, spec: LabelerSpec | None) -> None:
        with self.engine.begin() as conn:
            conn.execute(sa.delete(labelers_t).where(labelers_t.c.collection == store))
            if spec is not None:
                conn.execute(
                    sa.insert(labelers_t).values(
                        collection=store,
                        spec_json=spec.model_dump_json(exclude_none=True),
                        updated_at=time.time(),
                    )
                )
