"""What the benchmarks run against: an instant scripted OpenAI-compatible LLM and the real server
(`ragserver serve`), each in its own process on free loopback ports, on embedded defaults."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from app.devtools.net import free_port

REPO = Path(__file__).resolve().parents[2]
# The default corpus of the benchmarks (the repository's sibling `shared/` folder).
SCIFACT_CORPUS = REPO.parent / "shared" / "data" / "scifact" / "corpus.jsonl"

FALLBACK_QUESTIONS = [
    "What is known about the effect of vitamin D on bone density?",
    "Which genes are associated with breast cancer risk?",
    "How does exercise affect insulin sensitivity?",
    "What causes antibiotic resistance in bacteria?",
    "Does smoking increase the risk of lung cancer?",
    "What is the role of microRNA in gene regulation?",
    "How do vaccines produce immunity?",
    "What are the side effects of statins?",
]


def bench_corpus(corpus: Path | None) -> Path:
    """`corpus`, or SciFact's by default; a usage error when the file is not there."""
    import typer

    corpus = corpus or SCIFACT_CORPUS
    if not corpus.exists():
        raise typer.BadParameter(f"corpus {corpus} not found; pass --corpus FILE.jsonl")
    return corpus


def bench_questions(corpus: Path) -> list[str]:
    """Distinct questions (a queries.jsonl beside the corpus, e.g. SciFact's claims), so no request
    benefits from a repeated query."""
    queries = corpus.parent / "queries.jsonl"
    if queries.exists():
        with queries.open() as handle:
            return [json.loads(line)["text"] for line in handle if line.strip()]
    return FALLBACK_QUESTIONS


def wait_http(url: str, proc: subprocess.Popen[bytes], timeout: float = 180) -> None:
    """Wait until `url` answers 200, failing early if `proc` exits."""
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process for {url} exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"{url} did not come up in {timeout:.0f}s")


@dataclass
class Stack:
    """A benchmark's processes: `env` is the server's environment (CLI commands run before `start`
    share its data dir); `url`, `pid` and `llm_url` are set once started."""

    workdir: Path
    env: dict[str, str]
    llm_port: int
    url: str = ""
    pid: int = 0
    # Requests carry an admin key of the default tenant (made before the server starts): benchmarks
    # measure the server as deployed, with auth mode api_key.
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def llm_url(self) -> str:
        return f"http://127.0.0.1:{self.llm_port}"


def stack_env(workdir: Path, **extra: str) -> Stack:
    """The environment of a server on a fresh data dir under `workdir`, wired to the scripted LLM."""
    llm_port = free_port()
    env = dict(os.environ, RAGSERVER_DATA_DIR=str(workdir / "data"), PYTHONUNBUFFERED="1")
    env.update(
        RAGSERVER_LLM_PROVIDER="openai",
        RAGSERVER_LLM_BASE_URL=f"http://127.0.0.1:{llm_port}/v1",
        RAGSERVER_LLM_MODEL="scripted-model",
        RAGSERVER_AUTH__MODE="api_key",
        **extra,
    )
    for key in ("RAGSERVER_CHROMA_URL", "RAGSERVER_REDIS_URL", "RAGSERVER_DATABASE_URL"):
        env.pop(key, None)
    return Stack(workdir, env, llm_port)


def ingest_subset(stack: Stack, corpus: Path, docs: int, collection: str = "bench") -> None:
    """Ingest the first `docs` rows of a .jsonl corpus into the stack's data dir (before `running`)."""
    subset = stack.workdir / "corpus.jsonl"
    with corpus.open() as src, subset.open("w") as dst:
        for i, line in enumerate(src):
            if i >= docs:
                break
            dst.write(line)
    subprocess.run(
        [sys.executable, "-m", "app.cli.main", "ingest", str(subset), "--collection", collection],
        env=stack.env,
        cwd=REPO,
        check=True,
        stdout=subprocess.DEVNULL,
    )


def stack_key(stack: Stack, tenant: str = "default", role: str = "admin") -> str:
    """A key of `tenant` in the stack's database (what `ragserver keys create` does)."""
    from app.auth.keys import KeyStore
    from app.db import make_engine, migrate

    engine = make_engine(f"sqlite:///{Path(stack.env['RAGSERVER_DATA_DIR']) / 'ragserver.sqlite3'}")
    try:
        migrate(engine)
        return KeyStore(engine).create(tenant=tenant, name=f"bench-{role}", role=role)[1]
    finally:
        engine.dispose()


@contextmanager
def running(stack: Stack, *, profile_to: Path | None = None) -> Iterator[Stack]:
    """Start the scripted LLM and the server; stop both on exit. With `profile_to`, the server is
    `app.bench.profiled_server` (the same app with a cProfile switch) writing its profiles there."""
    procs: list[subprocess.Popen[bytes]] = []

    def spawn(
        args: list[str], log: str, env: dict[str, str] | None = None, module: str = "app.cli.main"
    ) -> subprocess.Popen[bytes]:
        with open(stack.workdir / log, "wb") as out:  # the child keeps its own handle
            proc = subprocess.Popen(
                [sys.executable, "-m", module, *args],
                env=env,
                cwd=REPO,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        procs.append(proc)
        return proc

    try:
        llm = spawn(["dev", "scripted-llm", "--port", str(stack.llm_port), "--instant"], "llm.log")
        wait_http(f"{stack.llm_url}/v1/models", llm)
        stack.headers = {"Authorization": f"Bearer {stack_key(stack)}"}
        port = free_port()
        if profile_to is None:
            server = spawn(["serve", "--port", str(port)], "server.log", stack.env)
        else:
            args = ["--port", str(port), "--out", str(profile_to)]
            server = spawn(args, "server.log", stack.env, module="app.bench.profiled_server")
        stack.url, stack.pid = f"http://127.0.0.1:{port}", server.pid
        wait_http(f"{stack.url}/readyz", server)
        yield stack
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
