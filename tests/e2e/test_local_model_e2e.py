"""End to end with the real local model (SmolLM2-135M): upload, ingest, ask, cite, follow up."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from tests.api.conftest import upload, wait_for_job

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

DOC = (
    b"# Project Falcon\n\nProject Falcon is the codename of our new billing system. "
    b"It was launched in March 2024 by the payments team in Lisbon.\n"
)


def test_upload_ask_cite_follow_up(make_container) -> None:
    from app.factory import create_app

    container = make_container(llm={"max_tokens": 32})
    with TestClient(create_app(container=container)) as client:
        accepted = upload(client, "company", {"falcon.md": DOC})
        assert accepted.status_code == 202
        document_id = accepted.json()["documents"][0]["document_id"]
        assert wait_for_job(client, accepted.json()["job_id"])["status"] == "succeeded"

        first = client.post("/v1/chat", json={"message": "What is Project Falcon?", "collection": "company"})
        assert first.status_code == 200, first.text
        body = first.json()
        assert body["model"] == "SmolLM2-135M-Instruct"
        assert body["answer"].strip()
        assert body["usage"]["completion_tokens"] > 0
        assert [c["document_id"] for c in body["citations"]] == [document_id]
        assert "Falcon" in body["citations"][0]["text"]

        follow = client.post(
            "/v1/chat",
            json={
                "message": "When was it launched?",
                "conversation_id": body["conversation_id"],
                "collection": "company",
            },
        ).json()
        assert follow["conversation_id"] == body["conversation_id"]
        assert follow["answer"].strip()
        assert follow["citations"][0]["document_id"] == document_id
        turns = client.get(f"/v1/conversations/{body['conversation_id']}").json()["turns"]
        assert [t["content"] for t in turns[::2]] == ["What is Project Falcon?", "When was it launched?"]
        # The follow-up was rewritten with the history (not sent bare to retrieval).
        assert follow["retrieval"]["query"] != "When was it launched?"
