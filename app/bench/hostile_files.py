"""Hostile files for `ragserver bench abuse` and the tests: zip and PDF bombs, a text flood, a malformed
.docx, a spoofing file name. The builders stream what they write, so building a 1 GB bomb costs this
process a few MB; the tests build smaller ones with them."""

from __future__ import annotations

import io
import tempfile
import zipfile
import zlib
from pathlib import Path

MB = 1024 * 1024
RLO = "\u202e"  # right-to-left override


def docx_parts() -> dict[str, bytes]:
    """The members of a minimal valid .docx (python-docx's template)."""
    import docx

    buffer = io.BytesIO()
    document = docx.Document()
    document.add_paragraph("A small document.")
    document.save(buffer)
    with zipfile.ZipFile(buffer) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


WORD_NS = "http://schemas.openxmlformats.org/wordprocessingml/2006/main"


def write_docx_bomb(path: Path, inflated_mb: float) -> Path:
    """A valid .docx whose word/document.xml is one text node that inflates to `inflated_mb` MB
    (1,100 MB compresses to about 1 MB)."""
    parts = docx_parts()
    head = (
        '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n'
        f'<w:document xmlns:w="{WORD_NS}"><w:body><w:p><w:r><w:t>'
    )
    tail = "</w:t></w:r></w:p></w:body></w:document>"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        for name, data in parts.items():
            if name != "word/document.xml":
                archive.writestr(name, data)
        with archive.open("word/document.xml", "w", force_zip64=True) as member:
            member.write(head.encode())
            block = b"A" * MB
            whole, rest = divmod(int(inflated_mb * MB), MB)
            for _ in range(whole):
                member.write(block)
            member.write(b"A" * rest)
            member.write(tail.encode())
    return path


def write_docx_flood(path: Path, xml_mb: float, seed: int = 1) -> Path:
    """A .docx within every zip limit (it compresses about 3x) whose word/document.xml holds
    `xml_mb` MB of short paragraphs: cheap to send, costly to parse paragraph by paragraph."""
    import random

    rng = random.Random(seed)
    words = [f"{w}{rng.randint(0, 99999)}" for w in ("volcano", "lava", "ash", "sicily", "report") * 2000]
    pool = [
        f"<w:p><w:r><w:t>{' '.join(rng.choices(words, k=30))}</w:t></w:r></w:p>".encode() for _ in range(4000)
    ]
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in docx_parts().items():
            if name != "word/document.xml":
                archive.writestr(name, data)
        with archive.open("word/document.xml", "w", force_zip64=True) as member:
            member.write(f'<w:document xmlns:w="{WORD_NS}"><w:body>'.encode())
            written = 0
            while written < xml_mb * MB:
                block = b"".join(rng.choices(pool, k=1000))
                member.write(block)
                written += len(block)
            member.write(b"</w:body></w:document>")
    return path


def malformed_docx() -> bytes:
    """A .docx whose word/document.xml is not well-formed XML."""
    parts = docx_parts()
    parts["word/document.xml"] = f'<w:document xmlns:w="{WORD_NS}"><w:body><w:p><w:r><w:t>unclosed'.encode()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in parts.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def write_pdf_bomb(path: Path, inflated_mb: float) -> Path:
    """A one-page PDF whose content stream (FlateDecode) inflates to `inflated_mb` MB of spaces."""
    compressor = zlib.compressobj(9)
    with tempfile.TemporaryFile() as stream:
        block = b" " * MB
        whole, rest = divmod(int(inflated_mb * MB), MB)
        for _ in range(whole):
            stream.write(compressor.compress(block))
        stream.write(compressor.compress(b"BT ET" + b" " * rest))
        stream.write(compressor.flush())
        length = stream.tell()
        stream.seek(0)
        with open(path, "wb") as out:
            offsets: list[int] = []

            def obj(body: bytes) -> None:
                offsets.append(out.tell())
                out.write(f"{len(offsets)} 0 obj\n".encode() + body + b"\nendobj\n")

            out.write(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
            obj(b"<< /Type /Catalog /Pages 2 0 R >>")
            obj(b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>")
            obj(
                b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
                b"/Resources << /Font << /F1 5 0 R >> >> >>"
            )
            offsets.append(out.tell())
            out.write(f"4 0 obj\n<< /Length {length} /Filter /FlateDecode >>\nstream\n".encode())
            while chunk := stream.read(MB):
                out.write(chunk)
            out.write(b"\nendstream\nendobj\n")
            obj(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>")
            xref = out.tell()
            out.write(f"xref\n0 {len(offsets) + 1}\n0000000000 65535 f \n".encode())
            for offset in offsets:
                out.write(f"{offset:010d} 00000 n \n".encode())
            out.write(
                f"trailer\n<< /Size {len(offsets) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
            )
    return path


def spoofing_filename(chars: int = 5000) -> str:
    """A file name of `chars` characters with a right-to-left override: 'invoice<RLO>fdp.txt' reads
    as 'invoicetxt.pdf' in a bidi-aware display."""
    name = f"invoice{RLO}fdp.txt"
    return "x" * max(0, chars - len(name)) + name
