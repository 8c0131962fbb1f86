"""The ingest/search contract, run against embedded Chroma and a Chroma server."""

from __future__ import annotations

from pathlib import Path

from ingest.loaders import iter_documents
from tests.samples import make_corpus_folder


class IngestContract:
    """Subclasses provide a `container` fixture (a Container whose store is under test)."""

    coll = "docs"

    def ingest(self, container, paths):
        return container.pipeline.ingest(iter_documents(paths), self.coll)

    def top_source(self, container, query: str) -> str:
        hits = container.retriever.retrieve(self.coll, query, top_k=3, mode="dense")
        return str(hits[0].metadata["source"])

    def test_every_format_ingests_and_search_finds_it(self, container, tmp_path: Path) -> None:
        files = make_corpus_folder(tmp_path / "corpus")
        report = self.ingest(container, [tmp_path / "corpus"])
        assert report.ok and report.added == 5
        expectations = {
            "txt": "Which volcano is in Sicily?",
            "md": "how fine should I grind coffee beans",
            "html": "where do emperor penguins breed",
            "pdf": "solar panel revenue growth",
            "docx": "chess opening 1.e4 c5",
        }
        for kind, query in expectations.items():
            assert self.top_source(container, query) == str(files[kind].resolve()), kind
        pdf_hit = container.retriever.retrieve(
            self.coll, "solar panel revenue growth", top_k=1, mode="dense"
        )[0]
        assert pdf_hit.metadata["page"] == 2
        md_hit = container.retriever.retrieve(self.coll, "grind beans finely", top_k=1, mode="dense")[0]
        assert md_hit.metadata["section"] == "Espresso guide > Grinding"

    def test_reingest_is_a_noop(self, container, tmp_path: Path) -> None:
        make_corpus_folder(tmp_path / "corpus")
        first = self.ingest(container, [tmp_path / "corpus"])
        chunks = container.store.count_chunks(self.coll)
        second = self.ingest(container, [tmp_path / "corpus"])
        assert second.skipped == 5 and second.added == 0 and second.chunks_written == 0
        assert container.store.count_chunks(self.coll) == chunks == first.chunks_written
        assert container.store.count_documents(self.coll) == 5

    def test_modified_file_replaces_its_chunks(self, container, tmp_path: Path) -> None:
        files = make_corpus_folder(tmp_path / "corpus")
        self.ingest(container, [tmp_path / "corpus"])
        before = container.store.count_chunks(self.coll)
        files["txt"].write_text("Mount Fuji is the highest mountain in Japan.")
        report = self.ingest(container, [tmp_path / "corpus"])
        assert report.replaced == 1 and report.skipped == 4
        assert container.store.count_chunks(self.coll) == before
        hits = container.retriever.retrieve(self.coll, "volcano in Sicily Etna", top_k=10, mode="dense")
        assert not any("Etna" in h.text for h in hits)
        assert self.top_source(container, "highest mountain in Japan") == str(files["txt"].resolve())

    def test_delete_removes_all_chunks(self, container, tmp_path: Path) -> None:
        files = make_corpus_folder(tmp_path / "corpus")
        self.ingest(container, [tmp_path / "corpus"])
        doc_id = next(
            r.doc_id for r in container.store.iter_documents(self.coll) if r.source.endswith("report.pdf")
        )
        assert container.pipeline.delete(self.coll, [doc_id]) == 1
        assert container.store.count_documents(self.coll) == 4
        hits = container.retriever.retrieve(self.coll, "solar panel revenue", top_k=10, mode="dense")
        assert all(h.doc_id != doc_id for h in hits)
        assert str(files["pdf"].resolve()) not in {h.metadata["source"] for h in hits}

    def test_bad_files_fail_alone(self, container, tmp_path: Path) -> None:
        folder = tmp_path / "mixed"
        folder.mkdir()
        (folder / "good.txt").write_text("Good content about owls hunting at night.")
        (folder / "empty.txt").write_text("")
        (folder / "binary.txt").write_bytes(b"\x00\xff\x00\xff")
        (folder / "corrupt.pdf").write_bytes(b"%PDF-1.4 nonsense")
        (folder / "latin1.md").write_bytes("caf\xe9".encode("latin-1"))
        report = self.ingest(container, [folder])
        assert report.added == 1
        assert sorted(Path(f.source).name for f in report.failed) == [
            "binary.txt",
            "corrupt.pdf",
            "empty.txt",
            "latin1.md",
        ]
        assert all(f.error for f in report.failed)
