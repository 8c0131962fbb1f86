"""A multipart/form-data body parsed as it arrives, as a stream of part events.

Starlette's form parser reads the whole body (spooling files) before a route sees a byte, so no limit
can act before the upload has been received in full. `iter_parts` feeds python-multipart's streaming
`MultipartParser` one network chunk at a time and yields, per part, `PartStart` (its field name, file
name and content type), `PartData` (a slice of its content) and `PartEnd`; the consumer decides what to
keep and can stop at any event. Memory holds one network chunk and one part's headers at most.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header

from app.services.errors import InvalidInput
from app.services.uploads import PartData, PartEnd, PartEvent, PartStart

# A part's headers: room for a 5,000-character UTF-8 file name (cleaned and capped later).
MAX_PART_HEADER_BYTES = 32 * 1024
MAX_PART_HEADERS = 8


def boundary_of(content_type: str | None) -> bytes:
    """The boundary of a multipart/form-data Content-Type; InvalidInput otherwise."""
    kind, params = parse_options_header(content_type or "")
    if kind != b"multipart/form-data":
        raise InvalidInput("send the files as multipart/form-data (field 'files', optional 'metadata')")
    boundary = params.get(b"boundary")
    if not boundary:
        raise InvalidInput("multipart/form-data without a boundary")
    return boundary


class _Collector:
    """python-multipart's callbacks, turned into events for the chunk being parsed."""

    def __init__(self) -> None:
        self.events: list[PartEvent] = []
        self._header_name = b""
        self._header_value = b""
        self._header_bytes = 0
        self._headers: dict[bytes, bytes] = {}

    def on_part_begin(self) -> None:
        self._headers = {}
        self._header_bytes = 0

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._grow(end - start)
        self._header_name += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._grow(end - start)
        self._header_value += data[start:end]

    def _grow(self, n: int) -> None:
        self._header_bytes += n
        if self._header_bytes > MAX_PART_HEADER_BYTES:
            raise InvalidInput(f"a multipart part's headers are over {MAX_PART_HEADER_BYTES} bytes")

    def on_header_end(self) -> None:
        self._headers[self._header_name.strip().lower()] = self._header_value.strip()
        self._header_name = self._header_value = b""

    def on_headers_finished(self) -> None:
        _, options = parse_options_header(self._headers.get(b"content-disposition", b"").decode("latin-1"))
        if b"name" not in options:
            raise InvalidInput('a multipart part without a Content-Disposition "name"')
        filename = options.get(b"filename")
        content_type = self._headers.get(b"content-type")
        self.events.append(
            PartStart(
                name=_text(options[b"name"]),
                filename=None if filename is None else _text(filename),
                content_type=None if content_type is None else _text(content_type),
            )
        )

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if end > start:
            self.events.append(PartData(bytes(data[start:end])))

    def on_part_end(self) -> None:
        self.events.append(PartEnd())


def _text(raw: bytes) -> str:
    """Header bytes as text: UTF-8 (what browsers and HTTP clients send), else Latin-1."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


async def iter_parts(stream: AsyncIterable[bytes], content_type: str | None) -> AsyncIterator[PartEvent]:
    """The events of a multipart/form-data body, yielded as its chunks arrive. Malformed input raises
    InvalidInput (HTTP 400). Stopping the iteration early stops reading the body."""
    collector = _Collector()
    parser = MultipartParser(
        boundary_of(content_type),
        {  # type: ignore[arg-type]
            "on_part_begin": collector.on_part_begin,
            "on_part_data": collector.on_part_data,
            "on_part_end": collector.on_part_end,
            "on_header_field": collector.on_header_field,
            "on_header_value": collector.on_header_value,
            "on_header_end": collector.on_header_end,
            "on_headers_finished": collector.on_headers_finished,
        },
        max_header_count=MAX_PART_HEADERS,
        max_header_size=MAX_PART_HEADER_BYTES,
    )
    received = False
    async for chunk in stream:
        if not chunk:
            continue
        received = True
        try:
            parser.write(chunk)
        except FormParserError as exc:
            raise InvalidInput(f"malformed multipart body: {exc}") from exc
        events, collector.events = collector.events, []
        for event in events:
            yield event
    if not received:
        raise InvalidInput("empty request body: upload at least one file in the 'files' field")
    try:
        parser.finalize()
    except FormParserError as exc:
        raise InvalidInput(f"malformed multipart body: {exc}") from exc
    for event in collector.events:
        yield event
