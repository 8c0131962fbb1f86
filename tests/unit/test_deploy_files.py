"""The deployment files say what docs/ARCHITECTURE.md says (no Docker daemon runs here to start them;
`make cluster` runs the same topology as processes, tested in tests/e2e/test_cluster.py)."""

from __future__ import annotations

from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]


def test_compose_topology() -> None:
    compose = yaml.safe_load((REPO / "deploy" / "compose.yaml").read_text())
    services = compose["services"]
    assert {"api-1", "api-2", "worker", "postgres", "redis", "chroma", "minio", "vllm"} <= set(services)
    assert services["worker"]["command"] == ["ragserver", "worker"]
    assert services["worker"]["deploy"]["replicas"] == 2
    assert "--appendonly" in services["redis"]["command"] and "yes" in services["redis"]["command"]
    assert services["vllm"]["profiles"] == ["vllm"]
    env = services["api-1"]["environment"]
    assert env["RAGSERVER_JOBS__RUNNER"] == "queue"
    assert env["RAGSERVER_RETRIEVAL__BM25_FEED"] == "redis"
    assert env["RAGSERVER_STORAGE__URL"].startswith("s3://")
    assert services["api-1"]["ports"] != services["api-2"]["ports"]


def test_dockerfile_is_multi_stage_non_root_with_a_health_check() -> None:
    text = (REPO / "Dockerfile").read_text()
    assert text.count("FROM ") >= 2
    assert "COPY --from=build" in text
    user = [line for line in text.splitlines() if line.startswith("USER ")]
    assert user and user[-1].split()[1] not in ("root", "0")
    assert "HEALTHCHECK" in text and "/healthz" in text
    assert "torch==2.13.0" in text  # the CPU build, not an unpinned (CUDA) torch


def test_grafana_dashboard_queries_only_metrics_the_server_exports() -> None:
    import json
    import re

    from app.services.metrics import Metrics

    dashboard = json.loads((REPO / "deploy" / "grafana" / "ragserver-dashboard.json").read_text())
    exported = set()
    for family in Metrics().registry.collect():
        suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_count", "_sum"]}.get(family.type, [""])
        exported |= {family.name + s for s in suffixes}
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    used = {m for e in exprs for m in re.findall(r"\bragserver_[a-z0-9_]+", e)}
    assert used and used <= exported, used - exported
    for needed in (
        "ragserver_feedback_total",
        "ragserver_engagement_events_total",
        "ragserver_answers_total",
    ):
        assert needed in used
    assert any("ragserver_retrieval_top_score_bucket" in e and "offset" in e for e in exprs)  # drift
