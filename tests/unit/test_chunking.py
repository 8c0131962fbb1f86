"""Chunking: token limits, overlap, sections and pages carried, stable ids, versions."""

from __future__ import annotations

import pytest

from ingest.chunking import Chunker, document_version, embedding_text, flat_metadata
from ingest.types import Segment, SourceDocument

pytestmark = pytest.mark.unit


def words(text: str) -> int:
    return len(text.split())


def make_doc(*segments: Segment, metadata=None) -> SourceDocument:
    return SourceDocument("doc-1", "/src/doc.md", "Title", list(segments), metadata or {})


def test_chunks_respect_the_token_budget_and_overlap() -> None:
    text = " ".join(f"Sentence number {i} is here." for i in range(100))
    chunker = Chunker(chunk_size=40, chunk_overlap=10, count_tokens=words)
    chunks = chunker.chunk(make_doc(Segment(text)), version="v1", ingested_at=1.0)
    assert len(chunks) > 5
    assert all(words(c.text) <= 40 for c in chunks)
    # Overlap: consecutive chunks share text.
    assert any(
        set(a.text.split()[-5:]) & set(b.text.split()[:15]) for a, b in zip(chunks, chunks[1:], strict=False)
    )
    # Sentence-aware: chunks end at a sentence boundary.
    assert all(c.text.rstrip().endswith(".") for c in chunks)


def test_ids_metadata_sections_and_pages() -> None:
    doc = make_doc(
        Segment("Intro text.", page=1, section="Intro"),
        Segment("Setup text.", page=2, section="Intro > Setup"),
        metadata={"team": "search", "doc_id": "ignored", "tags": ["a"]},
    )
    chunker = Chunker(chunk_size=64, chunk_overlap=8, count_tokens=words)
    chunks = chunker.chunk(doc, version="abc", ingested_at=42.0)
    assert [c.chunk_id for c in chunks] == ["doc-1::abc::0", "doc-1::abc::1"]
    assert [c.metadata["page"] for c in chunks] == [1, 2]
    assert chunks[1].metadata["section"] == "Intro > Setup"
    meta = chunks[0].metadata
    assert meta["doc_id"] == "doc-1" and meta["team"] == "search" and meta["tags"] == "['a']"
    assert meta["ingested_at"] == 42.0 and meta["content_hash"] == doc.content_hash
    # Same input, same ids: re-ingest upserts in place.
    assert [c.chunk_id for c in chunker.chunk(doc, version="abc", ingested_at=43.0)] == [
        c.chunk_id for c in chunks
    ]


def test_version_depends_on_content_and_pipeline() -> None:
    assert document_version("h1", "p") != document_version("h2", "p")
    assert document_version("h1", "p") != document_version("h1", "q")
    assert document_version("h1", "p") == document_version("h1", "p")


def test_embedding_text_prefixes_title_and_section_once() -> None:
    doc = make_doc(Segment("Body about llamas.", section="Animals"))
    chunk = Chunker(64, 8, words).chunk(doc, version="v", ingested_at=0)[0]
    assert embedding_text(chunk) == "Title - Animals\nBody about llamas."
    doc2 = SourceDocument("d", "s", "Llamas", [Segment("Llamas are camelids.")])
    chunk2 = Chunker(64, 8, words).chunk(doc2, version="v", ingested_at=0)[0]
    assert embedding_text(chunk2) == "Llamas are camelids."


def test_flat_metadata_drops_reserved_and_none() -> None:
    assert flat_metadata({"source": "x", "a": None, "b": 1.5, "c": {"k": 1}}) == {"b": 1.5, "c": "{'k': 1}"}


def test_overlap_must_be_smaller_than_size() -> None:
    from pydantic import ValidationError

    from app.settings import ChunkingSettings

    with pytest.raises(ValidationError):
        ChunkingSettings(chunk_size=64, chunk_overlap=64)


def test_the_readme_names_every_reserved_metadata_key() -> None:
    """The README's upload example lists the keys an upload's metadata may not use (refused with 400)."""
    from pathlib import Path

    from ingest.chunking import USER_RESERVED_KEYS

    readme = (Path(__file__).parents[2] / "README.md").read_text()
    after = readme.split("ragserver's own (refused with 400):", 1)[1].splitlines()
    comment = [after[0]]
    for line in after[1:]:
        if not line.lstrip().startswith("#"):
            break
        comment.append(line.lstrip(" #"))
    listed = ",".join(comment)
    named = [k.strip() for k in listed.split(",") if k.strip()]
    assert sorted(named) == sorted(USER_RESERVED_KEYS)
