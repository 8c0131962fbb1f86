"""Fixtures for the integration tests."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def corpus_jsonl(tmp_path: Path) -> Path:
    import json

    path = tmp_path / "corpus.jsonl"
    rows = [
        {"_id": f"d{i}", "title": f"Doc {i}", "text": f"Document number {i} talks about topic {i}."}
        for i in range(40)
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    return path
