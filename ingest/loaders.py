"""Loaders: a file (or a BEIR-style .jsonl corpus) in, `SourceDocument`s out.

Parsing is left to well-kept libraries (pypdf, python-docx, BeautifulSoup); this module only picks the
right one, keeps page numbers and markdown sections, and turns every way a file can be bad into a
`LoadError` with a message a person can act on: whatever a parser raises on a hostile or broken file
(pypdf's LimitReachedError, lxml's XMLSyntaxError, a MemoryError, ...) fails that file alone.

What one file may cost is bounded (`ingest.safety.LoadLimits`): a .docx is checked from its zip central
directory before anything is inflated, pypdf's decompression limits are lowered to the extracted-text
cap, and the text extracted from one file is capped.
"""

from __future__ import annotations

import hashlib
import io
import json
import posixpath
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from ingest.safety import MB, LoadLimits, UnsafeFile, check_zip, clean_label
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
    limits: LoadLimits | None = None,
) -> SourceDocument:
    """Load one non-corpus document from its bytes (the upload endpoint and `load_file` share this).

    Raises LoadError, and only LoadError, for a file that cannot be read within `limits`.
    """
    limits = limits or LoadLimits()
    kind = sniff_kind(data, filename)
    if kind == "jsonl":
        raise LoadError("a .jsonl corpus holds many documents; use iter_jsonl_corpus")
    title = Path(filename).stem
    try:
        if kind == "pdf":
            segments = _pdf_segments(data, limits)
        elif kind == "docx":
            segments = _docx_segments(data, limits)
        elif kind == "html":
            html_title, segments = _html_segments(decode_text(data))
            title = html_title or title
        elif kind == "markdown":
            md_title, segments = _markdown_segments(decode_text(data))
            title = md_title or title
        else:
            segments = [Segment(decode_text(data).strip())]
    except LoadError:
        raise
    except MemoryError as exc:
        raise LoadError(f"the {kind} file is too large to read") from exc
    except Exception as exc:  # any parser failure on a bad file fails this file, never the job
        raise LoadError(f"corrupt or unreadable {_KIND_NAMES.get(kind, kind)}: {_describe(exc)}") from exc
    segments = [s for s in segments if s.text.strip()]
    if not segments:
        raise LoadError("no text found (empty file, or a PDF without a text layer)")
    _check_extracted(sum(len(s.text) for s in segments), limits)
    # The title comes from the file name or the content: shown in citations, so cleaned like a name.
    title = clean_label(title, 500)
    # ragserver's own keys win over user metadata of the same name.
    meta = {**(metadata or {}), "format": kind, "filename": Path(filename).name}
    return SourceDocument(doc_id=doc_id, source=source, title=title, segments=segments, metadata=meta)


_KIND_NAMES = {"pdf": "PDF", "docx": ".docx", "html": "HTML", "markdown": "markdown", "text": "text file"}


def _describe(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    if len(text) > 300:
        text = text[:300] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _check_extracted(chars: int, limits: LoadLimits) -> None:
    if chars > limits.max_extracted_bytes:
        raise LoadError(
            f"more than {limits.max_extracted_bytes / MB:g} MB of text "
            f"(limits.max_extracted_mb); split the document"
        )


def load_file(
    path: Path, *, metadata: dict[str, Any] | None = None, limits: LoadLimits | None = None
) -> Iterator[SourceDocument]:
    """Documents in one file: one for most formats, one per row for a .jsonl corpus."""
    if path.suffix.lower() == ".jsonl":
        yield from iter_jsonl_corpus(path, metadata=metadata)
        return
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise LoadError(f"cannot read file: {exc.strerror or exc}") from exc
    yield load_bytes(
        data,
        path.name,
        doc_id=file_doc_id(path),
        source=str(path.resolve()),
        metadata=metadata,
        limits=limits,
    )


def iter_documents(
    paths: Iterable[Path], *, metadata: dict[str, Any] | None = None, limits: LoadLimits | None = None
) -> Iterator[SourceDocument | LoadFailure]:
    """Every document under `paths`, streaming; a bad file yields a LoadFailure and the rest go on."""
    for path in discover(paths):
        try:
            yield from load_file(path, metadata=metadata, limits=limits)
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


def _pdf_segments(data: bytes, limits: LoadLimits) -> list[Segment]:
    from pypdf import PdfReader, apply_configuration
    from pypdf.errors import LimitReachedError

    # No stream may inflate past the text cap (pypdf's own default is 75 MB a stream); the settings
    # apply to this thread only (a context variable), so concurrent loads do not see each other's.
    cap = limits.max_extracted_bytes
    bounded = {
        name: cap
        for name in (
            "maximum_declared_stream_length",
            "array_based_stream_maximum_output_length",
            "jbig2_maximum_output_length",
            "lzw_maximum_output_length",
            "run_length_maximum_output_length",
            "zlib_maximum_output_length",
            "brotli_maximum_output_length",
            "image_maximum_buffer_size",
        )
    }
    bounded["stream_decoding_work_maximum_length"] = 4 * cap
    segments: list[Segment] = []
    chars = 0
    try:
        with apply_configuration(None, **bounded):
            reader = PdfReader(io.BytesIO(data))
            if reader.is_encrypted:
                raise LoadError("the PDF is encrypted")
            for number, page in enumerate(reader.pages, start=1):
                text = (page.extract_text() or "").strip()
                chars += len(text)
                _check_extracted(chars, limits)
                segments.append(Segment(text, page=number))
    except LimitReachedError as exc:
        raise LoadError(
            f"the PDF inflates past what may be read (limits.max_extracted_mb is {cap / MB:g}): "
            f"{_describe(exc)}"
        ) from exc
    return segments


def _docx_segments(data: bytes, limits: LoadLimits) -> list[Segment]:
    """Paragraphs (split into sections at headings), then table rows, as python-docx would read them.

    Streamed with lxml's iterparse rather than loaded with python-docx: python-docx builds the whole
    tree (several times the XML's size in memory) and looks up each paragraph's style on its own,
    which takes minutes for a few MB of paragraphs. Here memory holds one body element at a time and
    time is linear; the text read so far is held to limits.max_extracted_mb as it grows.
    """
    import zipfile

    try:
        check_zip(io.BytesIO(data), len(data), limits)
    except UnsafeFile as exc:
        raise LoadError(f"refused .docx: {exc}") from exc
    except zipfile.BadZipFile as exc:
        raise LoadError(f"corrupt or unreadable .docx: {exc}") from exc
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        main = _docx_target(archive, "_rels/.rels", "/officeDocument") or "word/document.xml"
        folder, base = posixpath.split(main)
        styles_part = _docx_target(
            archive, posixpath.join(folder, "_rels", base + ".rels"), "/styles", folder
        )
        styles, default_style = _docx_styles(archive, styles_part)
        with archive.open(main) as stream:
            paragraphs, rows = _docx_body(stream, limits)
    segments: list[Segment] = []
    section: str | None = None
    lines: list[str] = []
    for style_id, text in paragraphs:
        name = styles.get(style_id or "") or styles.get(default_style or "") or ""
        if name.startswith("Heading") and text.strip():
            if lines:
                segments.append(Segment("\n".join(lines), section=section))
                lines = []
            section = text.strip()
        if text.strip():
            lines.append(text.strip())
    lines.extend(rows)
    if lines:
        segments.append(Segment("\n".join(lines), section=section))
    return segments


_W = "{http://schemas.openxmlformats.org/wordprocessingml/2006/main}"
_RELS = "{http://schemas.openxmlformats.org/package/2006/relationships}"
# Run content and its text, as python-docx's `Run.text` reads it (a `w:br` counts only as a line break).
_RUN_TEXT = {"t": None, "tab": "\t", "ptab": "\t", "cr": "\n", "noBreakHyphen": "-", "br": "\n"}
# python-docx's UI names for built-in styles stored under their internal names ("heading 1").
_UI_STYLE_NAMES = {f"heading {n}": f"Heading {n}" for n in range(1, 10)}
_MAX_SMALL_PART = 4 * MB  # relationships and styles parts: small in any real document


def _iterparse(stream: IO[bytes], events: tuple[str, ...]) -> Iterator[tuple[str, Any]]:
    from lxml import etree

    # No entities, no network, lxml's own caps on node sizes (huge_tree off): a hostile part fails.
    return etree.iterparse(  # type: ignore[no-any-return]
        stream, events=events, resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False
    )


def _small_part(archive: Any, name: str | None) -> IO[bytes] | None:
    if not name or name not in archive.NameToInfo:
        return None
    if archive.getinfo(name).file_size > _MAX_SMALL_PART:
        raise LoadError(f"refused .docx: its part {name!r} is over {_MAX_SMALL_PART // MB} MB")
    return io.BytesIO(archive.read(name))


def _docx_target(archive: Any, rels: str, kind: str, folder: str = "") -> str | None:
    """The part a relationships part points to for a relationship type ending with `kind`."""
    stream = _small_part(archive, rels)
    if stream is None:
        return None
    for _, elem in _iterparse(stream, ("end",)):
        if elem.tag == f"{_RELS}Relationship" and str(elem.get("Type", "")).endswith(kind):
            target = str(elem.get("Target", ""))
            if target.startswith("/"):
                return target.lstrip("/")
            return posixpath.normpath(posixpath.join(folder, target))
    return None


def _docx_styles(archive: Any, part: str | None) -> tuple[dict[str, str], str | None]:
    """Paragraph styles by id (their UI names), and the default paragraph style's id."""
    stream = _small_part(archive, part)
    names: dict[str, str] = {}
    default: str | None = None
    if stream is None:
        return names, default
    for _, elem in _iterparse(stream, ("end",)):
        if elem.tag != f"{_W}style" or elem.get(f"{_W}type") != "paragraph":
            continue
        style_id = str(elem.get(f"{_W}styleId", ""))
        name = elem.find(f"{_W}name")
        value = str(name.get(f"{_W}val", "")) if name is not None else ""
        names[style_id] = _UI_STYLE_NAMES.get(value, value)
        if elem.get(f"{_W}default") in ("1", "true", "on"):
            default = style_id
        elem.clear()
    return names, default


def _docx_body(stream: IO[bytes], limits: LoadLimits) -> tuple[list[tuple[str | None, str]], list[str]]:
    """(style id, text) of each paragraph directly in the body, and the rows of the tables directly in
    it (cells joined by " | ", a merged cell repeated as python-docx does)."""
    paragraphs: list[tuple[str | None, str]] = []
    rows: list[str] = []
    path: list[str] = []
    pieces: list[str] = []  # the text of the paragraph being read (body or cell)
    style: str | None = None
    cell_paragraphs: list[str] = []
    span, merged = 1, False
    row: list[str] = []
    above: list[str] = []  # the previous row's cells, for vertically merged ones
    chars = 0
    for event, elem in _iterparse(stream, ("start", "end")):
        tag = elem.tag if isinstance(elem.tag, str) else ""
        local = tag[len(_W) :] if tag.startswith(_W) else "~"
        if event == "start":
            path.append(local)
            continue
        inner = path[1:]  # below w:document
        if len(inner) >= 2 and inner[0] == "body":
            where = inner[1]
            # Paragraph content: body > p > ..., or body > tbl > tr > tc > p > ...
            if where == "p":
                para: list[str] | None = inner[1:]
            elif where == "tbl" and inner[2:4] == ["tr", "tc"]:
                para = inner[4:]
            else:
                para = None
            if para is not None and len(para) >= 2 and para[0] == "p":
                content = para[1:]
                if content[-1] in _RUN_TEXT and content[:-1] in (["r"], ["hyperlink", "r"]):
                    if local == "t":
                        piece = elem.text or ""
                    elif local == "br":
                        piece = "\n" if elem.get(f"{_W}type", "textWrapping") == "textWrapping" else ""
                    else:
                        piece = _RUN_TEXT[local] or ""
                    pieces.append(piece)
                    chars += len(piece)
                    if chars > limits.max_extracted_bytes:
                        _check_extracted(chars, limits)
                elif content == ["pPr", "pStyle"] and where == "p":
                    style = elem.get(f"{_W}val")
            elif para == ["p"]:
                if where == "p":
                    paragraphs.append((style, "".join(pieces)))
                else:
                    cell_paragraphs.append("".join(pieces))
                pieces, style = [], None
            elif where == "tbl":
                below = inner[2:]
                if below == ["tr", "tc", "tcPr", "gridSpan"]:
                    span = max(1, min(int(elem.get(f"{_W}val", "1") or 1), 64))
                elif below == ["tr", "tc", "tcPr", "vMerge"]:
                    merged = elem.get(f"{_W}val", "continue") == "continue"
                elif below == ["tr", "tc"]:
                    column = len(row)
                    text = above[column] if merged and column < len(above) else "\n".join(cell_paragraphs)
                    row.extend([text] * span)
                    cell_paragraphs, span, merged = [], 1, False
                elif below == ["tr"]:
                    rows.append(" | ".join(cell.strip() for cell in row))
                    above, row = row, []
                elif not below:
                    above = []
        path.pop()
        # Memory holds the element being read: what is done is cleared and dropped from its parent.
        elem.clear()
        parent = elem.getparent()
        if parent is not None and len(path) >= 2:
            while elem.getprevious() is not None:
                del parent[0]
    return paragraphs, rows


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
