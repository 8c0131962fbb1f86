"""The cheap object graph the service unit tests run on: the real `Container` with the in-memory vector
index (`chroma.url = memory://`), the in-process `ScriptedLLM` and the hashing embedder. No model, no
Chroma, no socket; the SQLite database and the uploads live under the test's data dir.

Three parts a test controls: an embedder that holds ingestion at a gate (a job stays running, inside its
batch, for as long as the test needs), a job store that can be made unreachable, and an upload whose
body stops arriving after its first bytes.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import numpy as np

from app.auth.principal import Principal
from app.container import Container, open_container
from app.jobs.base import Job, JobStore, JobStoreUnavailable
from app.llm.scripted_provider import ScriptedLLM
from app.routing.classifier import RouteClassifier, train
from app.services.answerability import STAGE_FEATURES, AnswerabilityModel, Stage
from app.services.document_service import IncomingFile
from app.services.uploads import PartData, PartEnd, PartEvent, PartStart
from app.settings import Settings
from ingest.embedder import Embedder, HashingEmbedder
from ingest.memory_index import MEMORY_URL

ANONYMOUS = Principal.anonymous()


def answerability_model(path: Path, *, before: float = 1.0, after: float = 1.0) -> Path:
    """An abstention model at `path` that reads one thing, the share of the question's terms found
    together in one passage (P(unanswerable) = 0.5 at 50%), abstaining at the given thresholds per stage
    (1.0: never). The service tests use it rather than the shipped fit, so their questions need not be
    what CMU QA taught that one."""

    def stage(name: str, threshold: float) -> Stage:
        weights = {f: 0.0 for f in STAGE_FEATURES[name]} | {"sentence_coverage": -8.0}
        means = {f: 0.0 for f in STAGE_FEATURES[name]} | {"sentence_coverage": 0.5}
        scales = {f: 1.0 for f in STAGE_FEATURES[name]}
        return Stage(STAGE_FEATURES[name], weights, 0.0, means, scales, threshold)

    model = AnswerabilityModel(before=stage("before", before), after=stage("after", after), card={})
    path.write_text(json.dumps(model.to_dict()))
    return path


def fake_settings(data_dir: Path, **overrides: Any) -> Settings:
    """Settings of the fake graph; `overrides` replace whole sections (`limits={...}`). The abstention
    model never abstains unless a test gives its own (`answerability_model`)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    never = answerability_model(data_dir / "answerability-never.json")
    sections: dict[str, Any] = {
        "chroma": {"url": MEMORY_URL},
        "llm": {"provider": "scripted"},
        "embedding": {"provider": "hashing"},
        "answers": {"abstain_model": str(never)},
    }
    return Settings(_env_file=None, data_dir=data_dir, **{**sections, **overrides})  # type: ignore[call-arg]


@asynccontextmanager
async def fake_container(
    data_dir: Path, *, start: bool = True, embedder: Embedder | None = None, **overrides: Any
) -> AsyncIterator[Container]:
    """An open container on `fake_settings`, its in-process job runner started unless `start` is False
    (a test may then swap a part, such as the job store, before the runner is built)."""
    container = Container(fake_settings(data_dir, **overrides), embedder=embedder)
    async with open_container(container):
        if start:
            await container.runner.start()
        try:
            yield container
        finally:
            if container.built("runner"):
                await container.runner.stop()


def scripted_llm(container: Container) -> ScriptedLLM:
    llm = container.llm
    assert isinstance(llm, ScriptedLLM)
    return llm


def fresh_llm(container: Container) -> ScriptedLLM:
    """The container's ScriptedLLM with no request recorded yet."""
    scripted = scripted_llm(container)
    scripted.requests.clear()
    return scripted


async def ingest(
    container: Container,
    collection: str,
    files: dict[str, bytes],
    *,
    principal: Principal = ANONYMOUS,
    metadata: dict[str, Any] | None = None,
) -> Job:
    """Upload `files` (name -> bytes) as one job, wait until the runner is idle, and return the job as
    it ended."""
    incoming = [IncomingFile(name, data) for name, data in files.items()]
    job = await container.documents.submit(collection, incoming, metadata or {}, principal=principal)
    await container.runner.wait_idle()
    return await container.documents.get_job(job.job_id, principal=principal)


class GatedEmbedder(HashingEmbedder):
    """The hashing embedder, holding every `embed` call while `gate` is closed (it starts closed)."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.held = threading.Event()  # set once a call waits at the gate

    def embed(self, texts: list[str]) -> np.ndarray:
        if not self.gate.is_set():
            self.held.set()
            self.gate.wait(timeout=30)  # a test that never opens it still ends
        return super().embed(texts)

    async def wait_until_held(self) -> None:
        assert await asyncio.to_thread(self.held.wait, 10), "no ingestion reached the gate"


class FlakyJobStore:
    """The real job store, unreachable while `down`: every call raises JobStoreUnavailable (nothing
    written, as the protocol says) and `ping` answers False. `refused` counts the calls turned away."""

    def __init__(self, inner: JobStore):
        self.inner = inner
        self.down = False
        self.refused = 0

    def __getattr__(self, name: str) -> Callable[..., Any]:
        method = getattr(self.inner, name)

        async def call(*args: Any, **kwargs: Any) -> Any:
            if self.down:
                self.refused += 1
                raise JobStoreUnavailable("connection refused (the test took the job store down)")
            return await method(*args, **kwargs)

        return call

    async def ping(self) -> bool:
        return not self.down and await self.inner.ping()


class HeldUpload:
    """An upload whose body stops after its first bytes until `finish()`: meanwhile it holds its queue
    slot (its tenant's and key's share too) and its folder belongs to an arriving upload."""

    def __init__(self, container: Container, collection: str, principal: Principal):
        self._arrived = asyncio.Event()
        self._release = asyncio.Event()
        self.task = asyncio.create_task(
            container.documents.upload(collection, self._parts(), principal=principal)
        )

    async def _parts(self) -> AsyncIterator[PartEvent]:
        yield PartStart("files", "held.txt", None)
        yield PartData(b"An upload whose last bytes are still on their way.")
        self._arrived.set()
        await self._release.wait()
        yield PartEnd()

    @classmethod
    async def start(
        cls, container: Container, collection: str, principal: Principal = ANONYMOUS
    ) -> HeldUpload:
        """Start the upload and return once its first bytes are in (raising its refusal, if refused)."""
        held = cls(container, collection, principal)
        arrived = asyncio.ensure_future(held._arrived.wait())
        done, _ = await asyncio.wait({arrived, held.task}, timeout=10, return_when=asyncio.FIRST_COMPLETED)
        arrived.cancel()
        if held.task in done:
            held.task.result()
        assert held._arrived.is_set(), "the held upload never started"
        return held

    async def finish(self) -> Job:
        """Let the rest of the body arrive; the accepted job."""
        self._release.set()
        return await self.task


# -- a routing classifier (tests of the classifier stage and of document labels) -------------------

TOPICS = {
    "leave": ["leave", "vacation", "holiday", "days off", "annual leave", "time off"],
    "it": ["vpn", "laptop", "password", "wifi", "printer", "email account"],
    "small_talk": ["hello", "thanks", "good morning", "how are you", "bye", "cheers"],
}
FRAMES = [
    "{}",
    "question about {}",
    "help with {} please",
    "I need {}",
    "what about {}",
    "tell me about {}",
    "{} now",
    "my {}",
]


def labelled() -> tuple[list[str], list[str]]:
    """Questions made of each topic's words, with their topic."""
    texts, labels = [], []
    for label, words in TOPICS.items():
        for word in words:
            for frame in FRAMES:
                texts.append(frame.format(word))
                labels.append(label)
    return texts, labels


def fitted(seed: int = 0) -> RouteClassifier:
    """A routing classifier of the three TOPICS, trained on the hashing embedder."""
    texts, labels = labelled()
    embedder = HashingEmbedder()
    return train(texts, labels, embedder.embed, embedder=embedder.model_id, data_hash="x", seed=seed)
