"""Loaders: every format, metadata kept, bad files refused with a clear message."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ingest.loaders import LoadError, iter_documents, load_file, sniff_kind
from ingest.types import LoadFailure, SourceDocument
from tests.samples import make_docx, make_pdf

pytestmark = pytest.mark.unit


def one(path: Path) -> SourceDocument:
    docs = list(load_file(path))
    assert len(docs) == 1
    return docs[0]


def test_text_file(tmp_path: Path) -> None:
    path = tmp_path / "note.txt"
    path.write_text("Hello world.\nSecond line.", encoding="utf-8")
    doc = one(path)
    assert doc.text == "Hello world.\nSecond line."
    assert doc.title == "note"
    assert doc.source == str(path.resolve())
    assert doc.metadata["format"] == "text"


def test_markdown_keeps_sections(tmp_path: Path) -> None:
    path = tmp_path / "guide.md"
    path.write_text(
        "# Guide\n\nIntro text.\n\n## Setup\n\nRun make.\n\n```\n# not a heading\n```\n", encoding="utf-8"
    )
    doc = one(path)
    assert doc.title == "Guide"
    sections = [s.section for s in doc.segments]
    assert sections == ["Guide", "Guide > Setup"]
    assert "# not a heading" in doc.segments[1].text


def test_html_drops_scripts(tmp_path: Path) -> None:
    path = tmp_path / "page.html"
    path.write_text(
        "<html><head><title>T</title><script>var x=1;</script></head><body><p>Body text</p></body></html>"
    )
    doc = one(path)
    assert doc.title == "T"
    assert "Body text" in doc.text and "var x" not in doc.text


def test_pdf_keeps_pages(tmp_path: Path) -> None:
    path = make_pdf(tmp_path / "paper.pdf", ["First page about llamas.", "Second page about alpacas."])
    doc = one(path)
    assert [s.page for s in doc.segments] == [1, 2]
    assert "alpacas" in doc.segments[1].text


def test_docx_with_heading(tmp_path: Path) -> None:
    path = make_docx(tmp_path / "memo.docx", heading="Budget", paragraphs=["We spend on GPUs."])
    doc = one(path)
    assert "We spend on GPUs." in doc.text
    assert doc.segments[0].section == "Budget"


def test_jsonl_corpus_one_document_per_row(tmp_path: Path) -> None:
    path = tmp_path / "corpus.jsonl"
    rows = [
        {"_id": "d1", "title": "One", "text": "alpha"},
        {"_id": 2, "title": "Two", "text": "beta", "year": 2020},
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    docs = list(load_file(path))
    assert [d.doc_id for d in docs] == ["d1", "2"]
    assert docs[1].metadata["year"] == 2020
    assert docs[0].source.endswith("corpus.jsonl#d1")


def test_jsonl_bad_row_is_a_load_error(tmp_path: Path) -> None:
    path = tmp_path / "corpus.jsonl"
    path.write_text('{"_id": "a", "text": "ok"}\n{"title": "no id"}\n')
    with pytest.raises(LoadError, match="line 2"):
        list(load_file(path))


def test_user_metadata_is_kept(tmp_path: Path) -> None:
    path = tmp_path / "a.txt"
    path.write_text("x")
    (doc,) = load_file(path, metadata={"team": "search"})
    assert doc.metadata["team"] == "search"


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("empty.txt", b"", "no text found"),
        ("blank.md", b"  \n\n ", "no text found"),
        ("binary.txt", b"\x00\x01\x02\x03 binary", "binary content"),
        ("image.txt", b"\x89PNG\r\n\x1a\n" + b"x" * 64, "not text"),
        ("latin1.txt", "café".encode("latin-1"), "UTF-8"),
        ("broken.pdf", b"%PDF-1.4\ngarbage", "PDF"),
        ("fake.pdf", b"plain text", "not a PDF"),
        ("fake.docx", b"plain text", "not a .docx"),
        ("broken.docx", b"PK\x03\x04garbage", ".docx"),
        ("data.xyz", b"hello", "unsupported file type"),
    ],
)
def test_bad_files_get_clear_errors(tmp_path: Path, name: str, content: bytes, message: str) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(LoadError, match=message):
        list(load_file(path))


def test_utf16_with_bom_is_text(tmp_path: Path) -> None:
    path = tmp_path / "u16.txt"
    path.write_bytes("héllo wörld".encode("utf-16"))
    assert one(path).text == "héllo wörld"


def test_iter_documents_reports_failures_and_goes_on(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "good.txt").write_text("good")
    (tmp_path / "bad.txt").write_bytes(b"\x00\x00")
    (tmp_path / ".hidden.txt").write_text("hidden")
    items = list(iter_documents([tmp_path]))
    failures = [i for i in items if isinstance(i, LoadFailure)]
    docs = [i for i in items if isinstance(i, SourceDocument)]
    assert [d.text for d in docs] == ["good"]
    assert len(failures) == 1 and failures[0].source.endswith("bad.txt")


def test_sniff_kind_checks_content() -> None:
    assert sniff_kind(b"%PDF-1.7 ...", "a.pdf") == "pdf"
    assert sniff_kind(b"# hi", "a.md") == "markdown"
    with pytest.raises(LoadError):
        sniff_kind(b"MZ\x90\x00", "tool.exe")


def test_content_hash_changes_with_content() -> None:
    from ingest.types import Segment

    a = SourceDocument("d", "s", "t", [Segment("one")])
    b = SourceDocument("d", "s", "t", [Segment("two")])
    assert a.content_hash != b.content_hash
    assert a.content_hash == SourceDocument("d", "other-source", "t", [Segment("one")]).content_hash
