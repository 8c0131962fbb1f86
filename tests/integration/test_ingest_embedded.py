"""The ingest contract on embedded Chroma, plus corpus-scale idempotence and crash safety."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ingest.loaders import iter_documents
from tests.integration.ingest_contract import IngestContract

pytestmark = pytest.mark.integration


class TestEmbeddedChroma(IngestContract):
    @pytest.fixture
    def container(self, make_container):
        return make_container()


def test_jsonl_corpus_ingests_one_document_per_row_and_twice_is_the_same(
    make_container, corpus_jsonl
) -> None:
    container = make_container()
    first = container.pipeline.ingest(iter_documents([corpus_jsonl]), "corpus")
    assert first.added == 40
    counts = (container.store.count_documents("corpus"), container.store.count_chunks("corpus"))
    second = container.pipeline.ingest(iter_documents([corpus_jsonl]), "corpus")
    assert second.skipped == 40
    assert (
        (container.store.count_documents("corpus"), container.store.count_chunks("corpus"))
        == counts
        == (40, 40)
    )
    hit = container.retriever.retrieve("corpus", "topic 17", top_k=1, mode="dense")[0]
    assert hit.doc_id == "d17"


def test_changed_chunking_reindexes_without_duplicates(make_container, tmp_path: Path) -> None:
    long_text = " ".join(f"Sentence {i} describes a fact about rivers and lakes." for i in range(200))
    (tmp_path / "long.txt").write_text(long_text)
    container = make_container(chunking={"chunk_size": 128, "chunk_overlap": 16})
    container.pipeline.ingest(iter_documents([tmp_path / "long.txt"]), "c")
    many = container.store.count_chunks("c")
    bigger = make_container(chunking={"chunk_size": 512, "chunk_overlap": 16})
    report = bigger.pipeline.ingest(iter_documents([tmp_path / "long.txt"]), "c")
    assert report.replaced == 1
    assert bigger.store.count_chunks("c") < many
    assert bigger.store.count_documents("c") == 1


@pytest.mark.slow
def test_kill_9_midway_then_rerun_leaves_each_document_once(tmp_path: Path) -> None:
    """A real `ragserver ingest` killed with SIGKILL mid-run, then run again."""
    corpus = tmp_path / "big.jsonl"
    rows = [
        {"_id": f"doc{i}", "title": f"T{i}", "text": f"Short document {i} about item {i % 97}."}
        for i in range(3000)
    ]
    corpus.write_text("\n".join(json.dumps(r) for r in rows))
    # Documents through the ONNX export (the session's, via RAGSERVER_EMBEDDING__ONNX_CACHE_DIR): the
    # crash is what is tested, and the rerun embeds the rest about twice as fast as torch.
    env = dict(
        os.environ, RAGSERVER_DATA_DIR=str(tmp_path / "data"), RAGSERVER_EMBEDDING__DOCUMENT_BACKEND="onnx"
    )
    cmd = [sys.executable, "-m", "app.cli.main", "ingest", str(corpus), "--collection", "crash"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    # Wait until some documents are committed, then kill without warning.
    from app.container import Container
    from app.settings import Settings

    deadline = time.monotonic() + 120
    killed_midway = False
    while time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.5)
        probe = Container(Settings(_env_file=None, data_dir=tmp_path / "data"))
        try:
            committed = probe.store.count_documents("crash") if probe.store.has_collection("crash") else 0
        except Exception:
            committed = 0
        if 0 < committed < len(rows):
            proc.send_signal(signal.SIGKILL)
            killed_midway = True
            break
    proc.wait(timeout=30)
    assert killed_midway, "the ingest finished before it could be killed; make the corpus bigger"
    rerun = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    report = json.loads(rerun.stdout.strip().splitlines()[-1])
    assert report["skipped"] > 0 and report["added"] + report["replaced"] + report["skipped"] == len(rows)
    final = Container(Settings(_env_file=None, data_dir=tmp_path / "data"))
    assert final.store.count_documents("crash") == len(rows)
    records = list(final.store.iter_documents("crash"))
    expected_chunks = sum(r.chunks for r in records)
    assert final.store.count_chunks("crash") == expected_chunks
    versions = {c.metadata["version"] for c in final.store.iter_chunks("crash")}
    assert versions == {r.version for r in records}
