"""The real app on a free loopback port: under uvicorn in a background thread (`live_server`), or as
its own `ragserver serve` process (`serve_process`)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import uvicorn


@contextmanager
def live_server(app, port: int) -> Iterator[str]:  # type: ignore[no-untyped-def]
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200 and server.started:
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    else:
        raise RuntimeError("server did not start")
    try:
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=30)


REPO = Path(__file__).resolve().parents[1]


@dataclass
class Process:
    proc: subprocess.Popen  # type: ignore[type-arg]
    url: str
    log: Path

    def log_lines(self) -> list[str]:
        return self.log.read_text(errors="replace").splitlines()


# For a server whose test is not about retrieval (its logs, keys, replicas): no embedding model to load
# and no Chroma to open (ingest.embedder.HashingEmbedder, ingest.memory_index.MemoryIndex), so the
# process is ready in a couple of seconds instead of ten. Everything else is the real server.
NO_MODELS = {"RAGSERVER_EMBEDDING__PROVIDER": "hashing", "RAGSERVER_CHROMA__URL": "memory://"}


def llm_env(llm) -> dict[str, str]:  # type: ignore[no-untyped-def]
    """Settings variables pointing a server process at a scripted LLM (no retries)."""
    return {
        "RAGSERVER_LLM__PROVIDER": "openai",
        "RAGSERVER_LLM__BASE_URL": llm.base_url,
        "RAGSERVER_LLM__MODEL": llm.model,
        "RAGSERVER_LLM__MAX_RETRIES": "0",
    }


@contextmanager
def serve_process(data_dir: Path, env: Mapping[str, str], *args: str) -> Iterator[Process]:
    """`python -m app.cli.main serve` on `data_dir` with the settings variables `env`, on a free port,
    ready; killed at the end if still running. Only the ONNX cache of this session's environment is
    inherited among RAGSERVER_ variables (auth mode `none` unless `env` says otherwise)."""
    from tests.conftest import free_port

    port = free_port()
    log = data_dir.parent / f"server-{port}.log"
    full = {k: v for k, v in os.environ.items() if not k.startswith("RAGSERVER_") or "ONNX" in k}
    full.update(PYTHONPATH=str(REPO), RAGSERVER_DATA_DIR=str(data_dir), RAGSERVER_AUTH__MODE="none")
    full.update(env)
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "app.cli.main", "serve", "--port", str(port), *args],
            cwd=data_dir.parent,  # no stray .env
            env=full,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"server did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.3)
        yield Process(proc, url, log)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
