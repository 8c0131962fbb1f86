"""Builders for sample documents of every supported format (made by the tests, not checked in)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def make_pdf(path: Path, pages: list[str]) -> Path:
    """A PDF with a real text layer, one string per page."""
    from reportlab.lib.pagesizes import A4
    from reportlab.pdfgen import canvas

    pdf = canvas.Canvas(str(path), pagesize=A4)
    for text in pages:
        y = 800
        for line in text.split("\n"):
            pdf.drawString(72, y, line)
            y -= 16
        pdf.showPage()
    pdf.save()
    return path


def make_docx(path: Path, heading: str, paragraphs: list[str]) -> Path:
    """A .docx with one heading and paragraphs under it."""
    import docx

    document = docx.Document()
    document.add_heading(heading, level=1)
    for text in paragraphs:
        document.add_paragraph(text)
    document.save(str(path))
    return path


def make_corpus_folder(root: Path) -> dict[str, Path]:
    """A folder with one document of every supported format, each about a distinct topic."""
    root.mkdir(parents=True, exist_ok=True)
    files = {
        "txt": root / "volcano.txt",
        "md": root / "guide.md",
        "html": root / "page.html",
        "pdf": root / "report.pdf",
        "docx": root / "memo.docx",
    }
    files["txt"].write_text("Mount Etna is an active volcano on the east coast of Sicily, Italy.")
    files["md"].write_text(
        "# Espresso guide\n\nHow to brew coffee.\n\n"
        "## Grinding\n\nGrind the beans finely for espresso machines.\n"
    )
    files["html"].write_text(
        "<html><head><title>Penguins</title></head><body><p>Emperor penguins breed in the Antarctic winter."
        "</p></body></html>"
    )
    make_pdf(files["pdf"], ["Quarterly report.", "Revenue from solar panels grew by forty percent."])
    make_docx(files["docx"], "Chess", ["The Sicilian Defence is a chess opening beginning with 1.e4 c5."])
    return files


def make_trace(response_id: str, **fields: Any) -> Any:
    """A response `Trace` with plain defaults (an answered question in `kb`); `fields` replace them."""
    from app.traces.store import Trace

    values: dict[str, Any] = {
        "response_id": response_id,
        "created_at": 0.0,
        "api": "chat",
        "tenant": "default",
        "key_id": None,
        "collection": "kb",
        "conversation_id": None,
        "question": "q",
        "history": [],
        "search_query": "q",
        "chunks": [],
        "prompt": "answer@v1",
        "model": "m",
        "params": {},
        "retrieval": {},
        "answer": "a",
        "citations": [],
        "finish_reason": "stop",
        "outcome": "answered",
        "grounding": None,
        "usage": {"prompt_tokens": 1, "completion_tokens": 1},
        "latency_ms": {"retrieve": 1.0, "ttft": None, "total": 100.0},
    }
    return Trace(**(values | fields))
