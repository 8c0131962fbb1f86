"""Fixtures for the integration tests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner


@pytest.fixture
def corpus_jsonl(tmp_path: Path) -> Path:
    path = tmp_path / "corpus.jsonl"
    rows = [
        {"_id": f"d{i}", "title": f"Doc {i}", "text": f"Document number {i} talks about topic {i}."}
        for i in range(40)
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    return path


@pytest.fixture
def fake_cli(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Any:
    """`ragserver ...` in process on a data dir of its own, with the scripted LLM and the hashing
    embedder (no model loads): `fake_cli(*args)` returns the last line's JSON, or with `code=` the output
    of a command that must fail with that exit code."""
    from app.cli.main import app

    monkeypatch.setenv("RAGSERVER_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("RAGSERVER_LLM__PROVIDER", "scripted")
    monkeypatch.setenv("RAGSERVER_EMBEDDING__PROVIDER", "hashing")
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()

    def invoke(*args: str, code: int = 0) -> Any:
        result = runner.invoke(app, list(args))
        assert result.exit_code == code, result.output
        return json.loads(result.stdout.strip().splitlines()[-1]) if code == 0 else result.output

    return invoke
