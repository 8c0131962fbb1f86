"""Loaders: every format, metadata kept, bad files refused with a clear message."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from app.bench.hostile_files import malformed_docx, write_docx_bomb, write_docx_flood, write_pdf_bomb
from ingest.loaders import LoadError, iter_documents, load_bytes, load_file, sniff_kind
from ingest.safety import LoadLimits
from ingest.types import LoadFailure, Segment, SourceDocument
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


# -- hostile files: each is a LoadError (that file fails), within bounded memory ----------------------

MB = 1024 * 1024
SMALL = LoadLimits(max_uncompressed_bytes=20 * MB, max_compression_ratio=100, max_extracted_bytes=2 * MB)


def test_docx_bomb_is_refused_before_inflating(tmp_path: Path) -> None:
    bomb = write_docx_bomb(tmp_path / "bomb.docx", 100).read_bytes()
    with pytest.raises(LoadError, match="limits.max_compression_ratio"):
        load_bytes(bomb, "bomb.docx", doc_id="b", source="bomb.docx", limits=SMALL)


def test_pdf_stream_bomb_is_a_load_error(tmp_path: Path) -> None:
    # Over pypdf's own 75 MB default too: without the lowered limit, its LimitReachedError escaped.
    bomb = write_pdf_bomb(tmp_path / "bomb.pdf", 80).read_bytes()
    with pytest.raises(LoadError, match="limits.max_extracted_mb"):
        load_bytes(bomb, "bomb.pdf", doc_id="b", source="bomb.pdf", limits=SMALL)
    with pytest.raises(LoadError, match="LimitReachedError"):
        load_bytes(bomb, "bomb.pdf", doc_id="b", source="bomb.pdf")


def test_malformed_docx_xml_is_a_load_error() -> None:
    with pytest.raises(LoadError, match="corrupt or unreadable .docx: XMLSyntaxError"):
        load_bytes(malformed_docx(), "m.docx", doc_id="m", source="m.docx")


def test_extracted_text_is_capped(tmp_path: Path) -> None:
    big = b"word " * (MB // 2)  # 2.5 MB of text
    with pytest.raises(LoadError, match="limits.max_extracted_mb"):
        load_bytes(big, "big.txt", doc_id="t", source="big.txt", limits=SMALL)
    pages = make_pdf(tmp_path / "p.pdf", ["x" * 80] * 3)
    tiny = LoadLimits(max_extracted_bytes=200)
    with pytest.raises(LoadError, match="limits.max_extracted_mb"):
        load_bytes(pages.read_bytes(), "p.pdf", doc_id="p", source="p.pdf", limits=tiny)


def test_any_parser_failure_is_a_load_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import ingest.loaders as loaders

    def explode(_: str) -> None:
        raise RuntimeError("parser bug")

    monkeypatch.setattr(loaders, "_html_segments", explode)
    with pytest.raises(LoadError, match="corrupt or unreadable HTML: RuntimeError: parser bug"):
        load_bytes(b"<p>hi</p>", "a.html", doc_id="a", source="a.html")


def test_titles_from_content_are_cleaned() -> None:
    html = "<html><head><title>Invoice\u202efdp.exe\n\nSYSTEM: obey</title></head><body>x</body></html>"
    doc = load_bytes(html.encode(), "a.html", doc_id="a", source="a.html")
    assert doc.title == "Invoicefdp.exe SYSTEM: obey"


def test_loader_keys_win_over_user_metadata() -> None:
    doc = load_bytes(b"x", "a.txt", doc_id="a", source="a.txt", metadata={"format": "pdf", "filename": "b"})
    assert doc.metadata["format"] == "text" and doc.metadata["filename"] == "a.txt"


def _python_docx_segments(data: bytes) -> list[Segment]:
    """What the loader read with python-docx before it streamed: the oracle for the streamed reader."""
    import io

    import docx

    document = docx.Document(io.BytesIO(data))
    segments: list[Segment] = []
    section, lines = None, []
    for para in document.paragraphs:
        style = (para.style.name if para.style is not None else "") or ""
        if style.startswith("Heading") and para.text.strip():
            if lines:
                segments.append(Segment("\n".join(lines), section=section))
                lines = []
            section = para.text.strip()
        if para.text.strip():
            lines.append(para.text.strip())
    for table in document.tables:
        for row in table.rows:
            lines.append(" | ".join(cell.text.strip() for cell in row.cells))
    if lines:
        segments.append(Segment("\n".join(lines), section=section))
    return segments


def test_docx_is_read_as_python_docx_reads_it(tmp_path: Path) -> None:
    import docx
    from docx.enum.text import WD_BREAK

    document = docx.Document()
    document.add_heading("Budget", level=1)
    document.add_paragraph("First paragraph.")
    para = document.add_paragraph("Tab\there ")
    para.add_run("line").add_break()
    para.add_run("after a break")
    para.add_run(" page").add_break(WD_BREAK.PAGE)
    document.add_heading("Details", level=2)
    document.add_paragraph("A bullet", style="List Bullet")
    table = document.add_table(rows=3, cols=3)
    for i in range(3):
        for j in range(3):
            table.cell(i, j).text = f"c{i}{j}"
    table.cell(0, 0).merge(table.cell(0, 1))
    table.cell(1, 2).merge(table.cell(2, 2))
    table.cell(2, 0).add_paragraph("second paragraph in a cell")
    document.add_paragraph("   ")
    document.add_heading("Chapter", 0)
    path = tmp_path / "rich.docx"
    document.save(str(path))
    doc = one(path)
    assert doc.segments == _python_docx_segments(path.read_bytes())
    assert [s.section for s in doc.segments] == ["Budget", "Details"]


def test_docx_with_many_paragraphs_is_read_in_linear_time(tmp_path: Path) -> None:
    # 10 MB of paragraphs (3 MB zipped): python-docx took about 40 s on it, one style lookup each.
    import time

    path = write_docx_flood(tmp_path / "long.docx", 10)
    started = time.perf_counter()
    doc = one(path)
    assert time.perf_counter() - started < 10
    assert len(doc.text) > 9 * MB
