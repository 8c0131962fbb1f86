"""Loaders: a file (or a BEIR-style .jsonl corpus) in, `SourceDocument`s out.

Parsing is left to well-kept libraries (pypdf, python-docx, BeautifulSoup); this module only picks the
right one, keeps page numbers and markdown sections, and turns every way a file can be bad into a
`LoadError` with a message a person can act on.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from ingest.types import LoadFailure, Segment, SourceDocument

TEXT_EXTENSIONS = {".txt", ".text"}
MARKDOWN_EXTENSIONS = {".md", ".markdown"}
HTML_EXTENSIONS = {".html", ".htm"}
SUPPORTED_EXTENSIONS = TEXT_EXTENSIONS | MARKDOWN_EXTENSIONS | HTML_EXTENSIONS | {".pdf", ".docx", ".jsonl"}


class LoadError(Exception):
    """A file that cannot be turned into text; the message says why."""


def file_doc_id(path: Path) -> str:
    """Identity of a file-backed document: its absolute path, hashed to a short stable id."""
    return hashlib.sha1(str(path.resolve()).encode("utf-8")).hexdigest()[:20]


def discover(paths: Iterable[Path]) -> Iterator[Path]:
    """Files under the given paths (folders recursively, hidden files skipped), in a stable order."""
    for path in paths:
        if path.is_dir():
            for child in sorted(path.rglob("*")):
                if child.is_file() and not any(p.startswith(".") for p in child.relative_to(path).parts):
                    yield child
        else:
            yield path


def sniff_kind(data: bytes, filename: str) -> str:
    """The loader kind for `filename`, checked against its content.

    Raises LoadError for an unsupported extension or content that does not match it (a binary file
    named .txt, a .pdf that is not a PDF). Used by the loaders and by the upload endpoint (415).
    """
    ext = Path(filename).suffix.lower()
    if ext not in SUPPORTED_EXTENSIONS:
        supported = ", ".join(sorted(SUPPORTED_EXTENSIONS))
        raise LoadError(f"unsupported file type {ext or '(no extension)'!r}; supported: {supported}")
    if ext == ".pdf":
        if not data.lstrip()[:5].startswith(b"%PDF-"):
            raise LoadError("not a PDF file (no %PDF- header)")
        return "pdf"
    if ext == ".docx":
        if not data.startswith(b"PK\x03\x04"):
            raise LoadError("not a .docx file (not a zip container)")
        return "docx"
    # Text-like formats: refuse binary content (NUL bytes or known binary signatures).
    head = data[:8192]
    if b"\x00" in head and not _has_utf16_bom(head):
        raise LoadError("binary content in a text file")
    import filetype

    kind = filetype.guess(head)
    if kind is not None and not kind.mime.startswith("text/"):
        raise LoadError(f"content is {kind.mime}, not text")
    if ext in MARKDOWN_EXTENSIONS:
        return "markdown"
    if ext in HTML_EXTENSIONS:
        return "html"
    if ext == ".jsonl":
        return "jsonl"
    return "text"


def _has_utf16_bom(data: bytes) -> bool:
    return data.startswith((b"\xff\xfe", b"\xfe\xff"))


def decode_text(data: bytes) -> str:
    """Decode text bytes: UTF-8 (with or without BOM) or UTF-16 with a BOM; anything else is an error."""
    if _has_utf16_bom(data):
        return data.decode("utf-16")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise LoadError(f"cannot decode as UTF-8 (byte {exc.start}); save the file as UTF-8") from exc


def load_bytes(
    data: bytes,
    filename: str,
    *,
    doc_id: str,
    source: str,
    metadata: dict[str, Any] | None = None,
) -> SourceDocument:
    """Load one non-corpus document from its bytes (the upload endpoint and `load_file` share this)."""
    kind = sniff_kind(data, filename)
    if kind == "jsonl":
        raise LoadError("a .jsonl corpus holds many documents; use iter_jsonl_corpus")
    title = Path(filename).stem
    if kind == "pdf":
        segments = _pdf_segments(data)
    elif kind == "docx":
        segments = _docx_segments(data)
    elif kind == "html":
        html_title, segments = _html_segments(decode_text(data))
        title = html_title or title
    elif kind == "markdown":
        md_title, segments = _markdown_segments(decode_text(data))
        title = md_title or title
    else:
        segments = [Segment(decode_text(data).strip())]
    segments = [s for s in segments if s.text.strip()]
    if not segments:
        raise LoadError("no text found (empty file, or a PDF without a text layer)")
    meta = {"format": kind, "filename": Path(filename).name, **(metadata or {})}
    return SourceDocument(doc_id=doc_id, source=source, title=title, segments=segments, metadata=meta)


def load_file(path: Path, *, metadata: dict[str, Any] | None = None) -> Iterator[SourceDocument]:
    """Documents in one file: one for most formats, one per row for a .jsonl corpus."""
    if path.suffix.lower() == ".jsonl":
        yield from iter_jsonl_corpus(path, metadata=metadata)
        return
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise LoadError(f"cannot read file: {exc.strerror or exc}") from exc
    yield load_bytes(data, path.name, doc_id=file_doc_id(path), source=str(path.resolve()), metadata=metadata)


def iter_documents(
    paths: Iterable[Path], *, metadata: dict[str, Any] | None = None
) -> Iterator[SourceDocument | LoadFailure]:
    """Every document under `paths`, streaming; a bad file yields a LoadFailure and the rest go on."""
    for path in discover(paths):
        try:
            yield from load_file(path, metadata=metadata)
        except LoadError as exc:
            yield LoadFailure(source=str(path), error=str(exc))


def iter_jsonl_corpus(path: Path, *, metadata: dict[str, Any] | None = None) -> Iterator[SourceDocument]:
    """Rows of a BEIR-style corpus (`{_id, title, text}`, other keys kept as metadata), streamed."""
    try:
        handle = path.open("r", encoding="utf-8")
    except OSError as exc:
        raise LoadError(f"cannot read file: {exc.strerror or exc}") from exc
    source = str(path.resolve())
    with handle:
        try:
            for lineno, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise LoadError(f"line {lineno}: invalid JSON ({exc.msg})") from exc
                if not isinstance(row, dict) or "_id" not in row or "text" not in row:
                    raise LoadError(f"line {lineno}: a corpus row needs '_id' and 'text'")
                extra = {
                    k: v
                    for k, v in row.items()
                    if k not in {"_id", "title", "text"} and isinstance(v, str | int | float | bool)
                }
                text = str(row["text"]).strip()
                title = str(row.get("title") or "").strip()
                if not text and not title:
                    continue
                yield SourceDocument(
                    doc_id=str(row["_id"]),
                    source=f"{source}#{row['_id']}",
                    title=title,
                    segments=[Segment(text or title)],
                    metadata={"format": "jsonl", **extra, **(metadata or {})},
                )
        except UnicodeDecodeError as exc:
            raise LoadError("cannot decode as UTF-8; save the corpus as UTF-8") from exc


def _pdf_segments(data: bytes) -> list[Segment]:
    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted:
            raise LoadError("the PDF is encrypted")
        return [
            Segment((page.extract_text() or "").strip(), page=number)
            for number, page in enumerate(reader.pages, start=1)
        ]
    except LoadError:
        raise
    except (PdfReadError, ValueError, KeyError, TypeError, OSError) as exc:
        raise LoadError(f"corrupt or unreadable PDF: {exc}") from exc


def _docx_segments(data: bytes) -> list[Segment]:
    import zipfile

    import docx

    try:
        document = docx.Document(io.BytesIO(data))
    except (zipfile.BadZipFile, KeyError, ValueError) as exc:
        raise LoadError(f"corrupt or unreadable .docx: {exc}") from exc
    segments: list[Segment] = []
    section: str | None = None
    lines: list[str] = []
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


def _html_segments(html: str) -> tuple[str | None, list[Segment]]:
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(html, "html.parser")
    title = soup.title.get_text(strip=True) if soup.title else None
    for tag in soup(["script", "style", "noscript", "template"]):
        tag.decompose()
    body = soup.body or soup
    text = body.get_text("\n", strip=True)
    return title, [Segment(text)]


_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")


def _markdown_segments(markdown: str) -> tuple[str | None, list[Segment]]:
    """Split markdown at headings; each segment keeps its heading path ("Intro > Setup") as section."""
    title: str | None = None
    path: list[str] = []
    segments: list[Segment] = []
    lines: list[str] = []
    in_fence = False

    def flush() -> None:
        if any(line.strip() for line in lines):
            segments.append(Segment("\n".join(lines).strip(), section=" > ".join(path) or None))
        lines.clear()

    for line in markdown.splitlines():
        if line.lstrip().startswith(("```", "~~~")):
            in_fence = not in_fence
        match = None if in_fence else _HEADING.match(line)
        if match:
            flush()
            level, heading = len(match.group(1)), match.group(2).strip()
            if level == 1 and title is None:
                title = heading
            path[:] = path[: level - 1] + [heading]
        lines.append(line)
    flush()
    return title, segments
