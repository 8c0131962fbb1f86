"""Which embedding model directories a rebuild may load: those under `collections.model_roots` (by
default `<data_dir>/models`).

A rebuild's `embedding_model` is a path on the server host named by a tenant's admin, who is not
necessarily the host's operator. Every path that is not an allowed model gets one answer,
`ModelNotAllowed`, with one message: missing, a file, a directory without a model, outside the roots,
or leaving a root through `..` or a symlink (the path is resolved before it is checked). Different
answers would let the caller map the host's file system. Why a path was refused goes to the server log.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

from app.services.errors import InvalidInput

log = logging.getLogger(__name__)

# A sentence-transformers model directory, or a plain transformers one (mean pooling is added).
MODEL_FILES = ("modules.json", "config.json")


class ModelNotAllowed(InvalidInput):
    """The same 400 for every path that is not a model directory under the model roots."""

    code = "invalid_embedding_model"

    def __init__(self) -> None:
        super().__init__(
            "embedding_model must be a model directory under collections.model_roots "
            "(by default the models folder of the server's data dir)"
        )


def resolve_roots(roots: Sequence[str | Path]) -> list[Path]:
    """The roots as absolute paths with their symlinks resolved (what resolved model paths are
    compared with)."""
    return [Path(root).resolve() for root in roots]


def check_model_dir(
    model_path: str,
    roots: Sequence[Path],
    load: Callable[[str], object] | None = None,
    *,
    files: Sequence[str] = MODEL_FILES,
    refused: Callable[[], Exception] = ModelNotAllowed,
) -> None:
    """Refuse `model_path` (`refused()`, ModelNotAllowed by default) unless it resolves to a directory
    under one of `roots` (resolved) holding one of `files`, and `load` (when given) loads it. The path is
    resolved and compared with the roots before anything else reads it."""
    try:
        resolved = Path(model_path).resolve()
        if not any(resolved.is_relative_to(root) for root in roots):
            reason = "outside collections.model_roots"
        elif not any((resolved / name).is_file() for name in files):
            reason = "not a model directory"
        else:
            reason = ""
    # A NUL byte (ValueError), a name too long (OSError), a symlink loop (RuntimeError before 3.13).
    except (OSError, ValueError, RuntimeError) as exc:
        reason = f"unusable path ({type(exc).__name__})"
    if not reason and load is not None:
        try:
            load(model_path)
        except Exception as exc:
            reason = f"the model does not load: {exc!r}"
    if reason:
        log.warning("refused model path %r: %s", model_path, reason)
        raise refused()
