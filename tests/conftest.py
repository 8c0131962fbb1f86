"""Shared fixtures: the real packaged embedder (loaded once), containers on a temp data dir, services."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from app.devtools.net import free_port
from tests.conftest_services import *  # noqa: F403  (redis_url, redis_key_prefix, require_service)
from tests.conftest_services import require_service

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Tests never read the developer's .env or environment overrides.
for _key in [k for k in os.environ if k.startswith("RAGSERVER_") and not k.startswith("RAGSERVER_TEST_")]:
    del os.environ[_key]
# Tests written before identity run as the one anonymous caller; tests/security/test_isolation.py and
# the other auth tests turn api_key mode on for their own servers.
os.environ["RAGSERVER_AUTH__MODE"] = "none"
# Tests send bad keys from 127.0.0.1 on purpose, many, some through one shared Redis counter: failed
# authentication is throttled only where a test asks for it (tests/security/test_tenant_shares.py).
os.environ["RAGSERVER_AUTH__MAX_FAILED_AUTH_PER_MINUTE"] = "100000"
# The real model of tests is the small SmolLM2 (the server's default is the slower Qwen2.5-0.5B).
os.environ["RAGSERVER_LLM__LOCAL_MODEL"] = "smollm2"


@pytest.fixture(scope="session", autouse=True)
def onnx_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One ONNX export of the query encoder per test session, shared by every container and by the
    servers tests start in subprocesses (they inherit the variable)."""
    path = tmp_path_factory.mktemp("onnx-cache")
    os.environ["RAGSERVER_EMBEDDING__ONNX_CACHE_DIR"] = str(path)
    return path


@pytest.fixture(scope="session")
def embedder():
    """The real packaged all-MiniLM-L6-v2, loaded once per test session."""
    from ingest.embedder import SentenceTransformerEmbedder

    return SentenceTransformerEmbedder()


@pytest.fixture(scope="session")
def query_embedder(embedder, onnx_cache_dir: Path):
    """The default query encoder: the int8 ONNX Runtime export of the same model (made once)."""
    from ingest.onnx_encoder import load_onnx_encoder

    return load_onnx_encoder(embedder, onnx_cache_dir, precision="int8")


@pytest.fixture
def make_container(tmp_path: Path, embedder, query_embedder) -> Callable[..., object]:
    """Build a Container on a fresh data dir, sharing the session's embedder and query encoder."""
    from app.container import Container
    from app.settings import Settings

    def build(**overrides: object) -> Container:
        overrides.setdefault("data_dir", tmp_path / "data")
        settings = Settings(_env_file=None, **overrides)  # type: ignore[call-arg]
        onnx = settings.embedding.query_backend != "torch"
        return Container(settings, embedder=embedder, query_embedder=query_embedder if onnx else None)

    return build


@pytest.fixture(scope="session")
def chroma_server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Chroma server (`chroma run`) on a free loopback port for the session."""
    chroma = shutil.which("chroma") or str(Path(sys.executable).parent / "chroma")
    require_service("chroma CLI", Path(chroma).exists(), "the chromadb package provides it")
    port = free_port()
    path = tmp_path_factory.mktemp("chroma-server")
    log = open(path / "server.log", "wb")  # noqa: SIM115 - closed at teardown
    proc = subprocess.Popen(
        [chroma, "run", "--path", str(path / "db"), "--host", "127.0.0.1", "--port", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    import httpx

    deadline = time.monotonic() + 60
    up = False
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if httpx.get(f"{url}/api/v2/heartbeat", timeout=1).status_code == 200:
                up = True
                break
        except httpx.HTTPError:
            time.sleep(0.3)
    if not up:
        proc.kill()
        require_service("Chroma server", False, (path / "server.log").read_text(errors="replace")[-500:])
    yield url
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()
