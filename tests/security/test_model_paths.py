"""A rebuild's `embedding_model` is a path on the server host named by a tenant's admin: it must not let
that admin probe the host's file system. Every path that is not a model under `collections.model_roots`
(by default `<data_dir>/models`) gets the same answer, byte for byte apart from the request id: missing,
a file, an empty directory, a directory of other files, `/etc`, a `..` escape, a symlink out of the root,
a real model outside the root. A model copied under `<data_dir>/models` still rebuilds the collection.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.security.auth_app import admin_clients

pytestmark = pytest.mark.integration


@dataclass
class Rebuilds:
    client: TestClient
    headers: dict[str, str]
    root: Path  # <data_dir>/models
    outside: Path  # a directory of the host outside every root

    def rebuild(self, embedding_model: str):  # type: ignore[no-untyped-def]
        return self.client.post(
            "/v1/collections/kb/rebuild", json={"embedding_model": embedding_model}, headers=self.headers
        )

    def versions(self) -> list[dict]:
        return self.client.get("/v1/collections/kb/versions", headers=self.headers).json()["versions"]


@pytest.fixture
def rebuilds(tmp_path: Path, embedder) -> Iterator[Rebuilds]:  # type: ignore[no-untyped-def]
    """An app with auth on (default model roots), tenant alpha's admin key, and alpha's collection kb
    holding one document."""
    with admin_clients(tmp_path / "data", embedder, ("alpha",)) as (client, tenants):
        headers = tenants["alpha"]
        r = client.post(
            "/v1/collections/kb/documents",
            files=[("files", ("etna.txt", b"Mount Etna is an active volcano in Sicily."))],
            headers=headers,
        )
        assert r.status_code == 202, r.text
        job_url = f"/v1/jobs/{r.json()['job_id']}"
        deadline = time.monotonic() + 120
        while (job := client.get(job_url, headers=headers).json())["status"] in ("queued", "running"):
            assert time.monotonic() < deadline
            time.sleep(0.2)
        assert job["status"] == "succeeded", job
        root = tmp_path / "data" / "models"
        root.mkdir(parents=True, exist_ok=True)
        outside = tmp_path / "elsewhere"
        outside.mkdir()
        yield Rebuilds(client, headers, root, outside)


def _bad_paths(root: Path, outside: Path) -> dict[str, str]:
    """Every kind of path that is not an allowed model, by what it is."""
    from ingest.embedder import packaged_model_dir

    real_model = packaged_model_dir().resolve()
    (root / "weights.bin").write_bytes(os.urandom(64))
    (root / "empty").mkdir()
    (root / "junk").mkdir()
    (root / "junk" / "notes.txt").write_text("not a model")
    (root / "junk" / "blob.bin").write_bytes(os.urandom(256))
    (root / "broken").mkdir()  # looks like a model, does not load
    (root / "broken" / "config.json").write_text("{not json")
    (root / "escape").symlink_to(real_model, target_is_directory=True)
    (root / "loop").symlink_to(root / "loop")
    (outside / "secret.txt").write_text("s3cret")
    return {
        "missing under the root": str(root / "nope"),
        "missing outside": str(outside / "nope"),
        "a file under the root": str(root / "weights.bin"),
        "a file outside": str(outside / "secret.txt"),
        "/etc/passwd": "/etc/passwd",
        "an empty directory": str(root / "empty"),
        "a directory of other files": str(root / "junk"),
        "a model directory that does not load": str(root / "broken"),
        "a directory outside": str(outside),
        "/etc": "/etc",
        "/": "/",
        "the root itself": str(root),
        "a .. escape to a real model": str(root / os.path.relpath(real_model, root)),
        "a .. escape to a directory": f"{root}/../..",
        "a relative path": "../../etc",
        "a symlink out of the root to a real model": str(root / "escape"),
        "a symlink loop": str(root / "loop"),
        "a real model outside the root": str(real_model),
        "a name with a NUL byte": str(root / "a\x00b"),
        "a hub model id": "sentence-transformers/all-MiniLM-L6-v2",
    }


def _without_request_id(response) -> tuple[int, dict[str, str], bytes]:  # type: ignore[no-untyped-def]
    request_id = response.headers["x-request-id"]
    headers = {k: v for k, v in response.headers.items() if k not in ("x-request-id", "date")}
    return response.status_code, headers, response.content.replace(request_id.encode(), b"<id>")


def test_every_path_that_is_not_an_allowed_model_gets_one_answer(rebuilds: Rebuilds) -> None:
    answers = {
        kind: _without_request_id(rebuilds.rebuild(path))
        for kind, path in _bad_paths(rebuilds.root, rebuilds.outside).items()
    }
    first_kind, first = next(iter(answers.items()))
    different = {kind: answer[::2] for kind, answer in answers.items() if answer != first}
    assert different == {}, f"answers unlike the one for {first_kind!r}: {first[::2]}"
    assert first[0] == 400 and b'"code":"invalid_embedding_model"' in first[2], first
    assert [v["label"] for v in rebuilds.versions()] == ["v1"]  # nothing was registered


def test_a_model_under_the_data_dirs_models_folder_rebuilds(rebuilds: Rebuilds) -> None:
    from ingest.embedder import packaged_model_dir

    model = rebuilds.root / "minilm-copy"
    shutil.copytree(packaged_model_dir(), model)
    started = rebuilds.rebuild(str(model))
    assert started.status_code == 202, started.text
    deadline = time.monotonic() + 180
    while (v2 := rebuilds.versions()[-1])["state"] == "building":
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert (v2["label"], v2["state"], v2["embedding_model"]) == ("v2", "ready", str(model))
