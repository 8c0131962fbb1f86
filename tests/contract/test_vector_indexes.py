"""The `VectorIndex` contract against embedded Chroma and a Chroma server (`chroma run`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ingest.chroma_index import ChromaIndex
from ingest.vector_index import VectorIndex
from tests.contract.vector_index_contract import VectorIndexContract

pytestmark = pytest.mark.integration


class TestEmbeddedChroma(VectorIndexContract):
    @pytest.fixture(scope="class")
    def index(self, tmp_path_factory: pytest.TempPathFactory) -> VectorIndex:
        return ChromaIndex.open(url=None, path=str(tmp_path_factory.mktemp("chroma")))


class TestChromaServer(VectorIndexContract):
    @pytest.fixture(scope="class")
    def index(self, chroma_server_url: str) -> VectorIndex:
        return ChromaIndex.open(url=chroma_server_url, path=None)


def test_no_module_outside_the_adapter_touches_a_raw_chroma_collection() -> None:
    root = Path(__file__).resolve().parents[2]
    offenders = [
        str(path.relative_to(root))
        for package in ("app", "ingest", "evals")
        for path in (root / package).rglob("*.py")
        if path.name != "chroma_index.py"
        and any(s in path.read_text() for s in ("chunks_of(", "docs_of(", "import chromadb", "from chromadb"))
    ]
    assert offenders == []
