"""The collection an eval corpus is ingested into, shared by `eval retrieval`, `eval rag` and
`tune retrieval`."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from evals.retrieval_eval import file_sha256

if TYPE_CHECKING:
    from app.container import Container


def eval_collection_name(corpus: Path) -> str:
    """`eval-<dataset>`: the corpus file's stem, or its folder's name for BEIR's generic `corpus.jsonl`."""
    corpus = Path(corpus).resolve()
    stem = corpus.parent.name if corpus.stem == "corpus" else corpus.stem
    slug = re.sub(r"[^A-Za-z0-9_-]+", "-", stem).strip("-_")[:50] or "corpus"
    return f"eval-{slug}"


def ensure_corpus_collection(
    container: Container,
    corpus: Path,
    collection: str,
    *,
    on_document: Callable[[str, str, str | None], None] | None = None,
) -> dict[str, Any]:
    """Ingest `corpus` into `collection` (a store name) unless it is already there, through the same
    service path as any local ingest (`DocumentService.ingest_local`: the version serving the alias,
    the upload limits, an audit entry).

    A marker (corpus sha256, pipeline signature, physical collection, document count) under the data dir
    lets an unchanged corpus skip even the per-document version check; otherwise the corpus is ingested
    (unchanged documents skipped, changed ones replaced) and documents no longer in it are deleted.
    """
    from app.auth.principal import Principal
    from ingest.vector_index import split_store_name

    serving = container.versions.serving(collection)
    marker_path = container.settings.data_dir / "evals" / f"{collection}.json"
    wanted = {
        "corpus_sha256": file_sha256(corpus),
        "pipeline": serving.pipeline.signature,
        "physical": serving.physical,
    }
    store = container.store
    if marker_path.exists() and store.has_collection(serving.physical):
        marker = json.loads(marker_path.read_text())
        if {k: marker.get(k) for k in wanted} == wanted and marker.get("documents") == store.count_documents(
            serving.physical
        ):
            return {"collection": collection, "reused": True, "documents": marker["documents"]}
    tenant, name = split_store_name(collection)
    documents = container.documents
    report = documents.ingest_local(
        name,
        documents.load_local([Path(corpus)]),
        principal=Principal.operator(tenant),
        on_document=on_document,
        prune=lambda _: True,  # every document not in the corpus
    )
    if report.failed:
        raise RuntimeError(f"corpus failed to load: {report.failed[0].source}: {report.failed[0].error}")
    count = store.count_documents(serving.physical)
    marker_path.parent.mkdir(parents=True, exist_ok=True)
    marker_path.write_text(json.dumps({**wanted, "documents": count}))
    return {"collection": collection, "reused": False, **report.to_dict(), "documents": count}
