"""The same ingest/search contract against a Chroma server started by a fixture (`chroma run`)."""

from __future__ import annotations

import uuid

import pytest

from tests.integration.ingest_contract import IngestContract

pytestmark = pytest.mark.integration


class TestChromaServer(IngestContract):
    @pytest.fixture
    def container(self, make_container, chroma_server_url):
        # One server for the whole session: each test writes to a collection of its own.
        self.coll = f"docs-{uuid.uuid4().hex[:8]}"
        return make_container(chroma={"url": chroma_server_url})
