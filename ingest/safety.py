"""Bounds on what an uploaded file may cost to read, and cleaning of what users name things.

- `LoadLimits`: how much a loader may inflate or extract from one file (`limits.*` settings).
- `check_zip`: a zip-based file (.docx) is refused from its central directory, before any member is
  inflated, when it would inflate past `max_uncompressed_bytes` or by more than `max_compression_ratio`.
  Python's zipfile never inflates a member past the size its central directory declares (a lying entry
  fails its CRC check instead), so checking the declared sizes bounds what a parser can be made to read.
- `display_filename`: a file name as shown in `source`, `title` and job records: control characters and
  bidi overrides (which can make a citation read as another file) removed, the length capped.
- `check_metadata`: user metadata for an upload: flat, few, small, and never a key ragserver owns.
"""

from __future__ import annotations

import json
import math
import re
import unicodedata
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

MB = 1024 * 1024

# A .docx has a few dozen members; a zip with this many is not a document.
MAX_ZIP_MEMBERS = 10_000
# Members this small are not checked for their ratio alone (tiny XML parts compress very well).
_RATIO_MIN_MEMBER_BYTES = 1 * MB


@dataclass(frozen=True)
class LoadLimits:
    """How much one file may inflate to and how much text may be extracted from it."""

    max_uncompressed_bytes: int = 100 * MB
    max_compression_ratio: float = 100.0
    max_extracted_bytes: int = 50 * MB

    @classmethod
    def from_settings(cls, limits: Any) -> LoadLimits:
        """From `settings.limits` (a `LimitSettings`)."""
        return cls(
            max_uncompressed_bytes=int(limits.max_uncompressed_mb * MB),
            max_compression_ratio=float(limits.max_compression_ratio),
            max_extracted_bytes=int(limits.max_extracted_mb * MB),
        )


class UnsafeFile(ValueError):
    """A file refused before parsing (a zip bomb, too many members); the message says which limit."""


def check_zip(source: str | Path | IO[bytes], size: int, limits: LoadLimits) -> None:
    """Refuse a zip container whose central directory declares too much inflated data.

    `size` is the archive's size in bytes. The ratio is total inflated / archive size, and each member
    is held to it too (so a bomb cannot hide among incompressible images); what inflates to under 1 MB
    is never refused for its ratio. Raises UnsafeFile, or zipfile.BadZipFile for a file that is not a
    readable zip.
    """
    with zipfile.ZipFile(source) as archive:
        infos = archive.infolist()
        if len(infos) > MAX_ZIP_MEMBERS:
            raise UnsafeFile(f"the archive has {len(infos)} members (at most {MAX_ZIP_MEMBERS})")
        total = 0
        for info in infos:
            total += info.file_size
            if info.file_size >= _RATIO_MIN_MEMBER_BYTES:
                ratio = info.file_size / max(1, info.compress_size)
                if ratio > limits.max_compression_ratio:
                    raise UnsafeFile(
                        f"member {info.filename!r} inflates {ratio:.0f}x "
                        f"(limits.max_compression_ratio is {limits.max_compression_ratio:g})"
                    )
    if total > limits.max_uncompressed_bytes:
        raise UnsafeFile(
            f"it inflates to {total / MB:.1f} MB "
            f"(limits.max_uncompressed_mb is {limits.max_uncompressed_bytes / MB:g})"
        )
    ratio = total / max(1, size)
    if total >= _RATIO_MIN_MEMBER_BYTES and ratio > limits.max_compression_ratio:
        raise UnsafeFile(
            f"it inflates {ratio:.0f}x (limits.max_compression_ratio is {limits.max_compression_ratio:g})"
        )


# -- file names ---------------------------------------------------------------------------------

# Unicode categories removed from displayed names: controls (Cc), format characters (Cf: the bidi
# embeddings/overrides/isolates U+202A-U+202E and U+2066-U+2069, the marks U+200E/U+200F, zero-width
# characters), line and paragraph separators, surrogates and private-use characters.
_REMOVED_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs", "Co"})
_MAX_EXTENSION_CHARS = 16
ELLIPSIS = "\u2026"


def display_filename(name: str, max_chars: int = 200) -> str:
    """`name` as ragserver shows it: its last path component, cleaned by `clean_label` with the
    extension kept when it is cut. Never empty ("upload")."""
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    cleaned = clean_label(base, max_chars, keep_extension=True)
    return "upload" if cleaned in ("", ".", "..") else cleaned


def clean_label(text: str, max_chars: int, *, keep_extension: bool = False) -> str:
    """`text` with invisible and direction-changing characters removed (controls, the bidi
    embeddings/overrides/isolates U+202A-U+202E and U+2066-U+2069, the marks U+200E/U+200F, other
    format characters), whitespace runs (newlines, tabs) collapsed to one space, at most `max_chars`
    characters: a longer text is cut and ends with an ellipsis (before its extension, with
    `keep_extension`)."""
    spaced = re.sub(r"\s+", " ", unicodedata.normalize("NFC", text))  # newlines, tabs: one space
    cleaned = "".join(ch for ch in spaced if unicodedata.category(ch) not in _REMOVED_CATEGORIES)
    cleaned = re.sub(r" {2,}", " ", cleaned).strip()
    if len(cleaned) <= max_chars:
        return cleaned
    suffix = Path(cleaned).suffix if keep_extension else ""
    if len(suffix) > _MAX_EXTENSION_CHARS or len(suffix) >= max_chars // 2:
        suffix = ""
    stem = cleaned[: len(cleaned) - len(suffix)]
    return stem[: max_chars - len(suffix) - 1].rstrip() + ELLIPSIS + suffix


# -- metadata -----------------------------------------------------------------------------------

# Keys a user may set: a letter, digit or '_' first, then letters, digits, '_', '-' or '.', at most
# 64 characters. Excludes what Chroma reserves ('$...', '#document') and anything empty or invisible.
METADATA_KEY = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")
_INT64 = 2**63


class InvalidMetadata(ValueError):
    """Upload metadata that is refused (HTTP 400); the message names the key and the rule."""


def check_metadata(
    metadata: Any, *, reserved: Iterable[str], max_keys: int, max_bytes: int
) -> dict[str, str | int | float | bool]:
    """`metadata` if it is acceptable for every document of an upload, else InvalidMetadata.

    The rules: a JSON object; at most `max_keys` keys and `max_bytes` bytes as JSON; each key matches
    METADATA_KEY and is not `reserved` (fields ragserver owns: doc_id, source, title, format,
    filename, ...); each value is a string, a finite number (integers within 64 bits) or a boolean.
    """
    if not isinstance(metadata, dict):
        raise InvalidMetadata("metadata must be a JSON object")
    size = len(json.dumps(metadata, ensure_ascii=False).encode("utf-8"))
    if size > max_bytes:
        raise InvalidMetadata(f"metadata is {size} bytes as JSON (limits.max_metadata_bytes is {max_bytes})")
    if len(metadata) > max_keys:
        raise InvalidMetadata(f"metadata has {len(metadata)} keys (limits.max_metadata_keys is {max_keys})")
    owned = set(reserved)
    for key, value in metadata.items():
        if not isinstance(key, str) or not METADATA_KEY.fullmatch(key):
            raise InvalidMetadata(
                f"metadata key {key!r} is not allowed: use 1-64 letters, digits, '_', '-' or '.', "
                "starting with a letter, digit or '_'"
            )
        if key in owned:
            raise InvalidMetadata(f"metadata key {key!r} is reserved for ragserver's own fields")
        if isinstance(value, bool | str):
            continue
        if isinstance(value, int):
            if not -_INT64 <= value < _INT64:
                raise InvalidMetadata(f"metadata value of {key!r} is out of the 64-bit integer range")
            continue
        if isinstance(value, float):
            if not math.isfinite(value):
                raise InvalidMetadata(f"metadata value of {key!r} must be a finite number")
            continue
        raise InvalidMetadata(
            f"metadata value of {key!r} must be a string, number or boolean, not {type(value).__name__}"
        )
    return metadata
