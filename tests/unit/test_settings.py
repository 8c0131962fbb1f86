"""Settings: env prefix, nested sections, the flat aliases the README documents, .env files."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.settings import Settings

pytestmark = pytest.mark.unit


def test_defaults_are_embedded(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    s = Settings()
    assert s.data_dir == Path("data")
    assert s.chroma.url is None and s.history.redis_url is None and s.llm.provider == "local"
    assert s.chroma_path == Path("data/chroma")


def test_env_prefix_nested_and_aliases(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RAGSERVER_DATA_DIR", str(tmp_path / "d"))
    monkeypatch.setenv("RAGSERVER_CHROMA_URL", "http://127.0.0.1:9000")
    monkeypatch.setenv("RAGSERVER_REDIS_URL", "redis://127.0.0.1:6379/3")
    monkeypatch.setenv("RAGSERVER_LLM_PROVIDER", "openai")
    monkeypatch.setenv("RAGSERVER_LLM_BASE_URL", "http://127.0.0.1:8001/v1")
    monkeypatch.setenv("RAGSERVER_CHUNKING__CHUNK_SIZE", "128")
    s = Settings()
    assert s.data_dir == tmp_path / "d"
    assert s.chroma.url == "http://127.0.0.1:9000"
    # The one Redis every part shares (history, queue, rate limits, BM25 feed).
    assert s.redis.url == "redis://127.0.0.1:6379/3"
    assert s.history_redis_url == s.shared_redis_url == s.rate_limit_redis_url == "redis://127.0.0.1:6379/3"
    assert s.llm.provider == "openai" and s.llm.base_url == "http://127.0.0.1:8001/v1"
    assert s.chunking.chunk_size == 128


def test_dotenv_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text("RAGSERVER_SERVER__PORT=9123\n")
    assert Settings().server.port == 9123


def test_invalid_values_are_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from pydantic import ValidationError

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RAGSERVER_RETRIEVAL_MODE", "psychic")
    with pytest.raises(ValidationError):
        Settings()


def test_the_older_history_redis_setting_still_feeds_every_part(tmp_path: Path) -> None:
    s = Settings(_env_file=None, data_dir=tmp_path, history={"redis_url": "redis://h:6379/0"})  # type: ignore[call-arg]
    assert s.redis.url is None
    assert s.history_redis_url == s.shared_redis_url == s.rate_limit_redis_url == "redis://h:6379/0"
    own = Settings(  # type: ignore[call-arg]
        _env_file=None,
        data_dir=tmp_path,
        redis={"url": "redis://shared:6379/0"},
        jobs={"redis_url": "redis://queue:6379/0"},
        auth={"rate_limit_url": "redis://limits:6379/0"},
    )
    assert own.history_redis_url == "redis://shared:6379/0"
    assert own.shared_redis_url == "redis://queue:6379/0"
    assert own.rate_limit_redis_url == "redis://limits:6379/0"
