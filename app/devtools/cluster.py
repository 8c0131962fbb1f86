"""The scale-out topology as plain processes on loopback (`make cluster`; the test of it, and the
same shape as deploy/compose.yaml): PostgreSQL and Redis (the machine's, or the ones `make postgres` /
`make redis` start), `chroma run`, an S3 endpoint (moto), two API replicas and two workers.

Every replica and worker has a data dir of its own (nothing shared on disk): keys and jobs are in
PostgreSQL, history, the job queue, rate limits and the BM25 change feed in Redis, vectors in the
Chroma server, uploads in the S3 bucket. `python -m app.devtools.cluster` starts it and waits for
Ctrl-C; `Cluster` is the same thing as a context manager for tests.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from app.devtools.net import free_port

REPO = Path(__file__).resolve().parents[2]


@dataclass
class Service:
    name: str
    proc: subprocess.Popen  # type: ignore[type-arg]
    log: Path
    url: str = ""

    @property
    def pid(self) -> int:
        return int(self.proc.pid)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""


@dataclass
class Cluster:
    """Start with `start()` (or `with Cluster(root) as c:`); `stop()` ends every process it started."""

    root: Path
    postgres_url: str = "postgresql://postgres@127.0.0.1:5432/postgres"
    redis_url: str = "redis://127.0.0.1:6379/0"
    apis: int = 2
    workers: int = 2
    env: Mapping[str, str] = field(default_factory=dict)  # extra settings for every replica and worker
    name: str = field(default_factory=lambda: f"rs{uuid.uuid4().hex[:8]}")
    services: dict[str, Service] = field(default_factory=dict)
    database_url: str = ""
    s3_url: str = ""

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> Cluster:
        self.root.mkdir(parents=True, exist_ok=True)
        try:
            self.database_url = self._create_database()
            chroma_port, s3_port = free_port(), free_port()
            self._spawn(
                "chroma",
                [_bin("chroma"), "run", "--path", str(self.root / "chroma"), "--host", "127.0.0.1"]
                + ["--port", str(chroma_port)],
                url=f"http://127.0.0.1:{chroma_port}",
            )
            self._spawn("s3", [_bin("moto_server"), "-H", "127.0.0.1", "-p", str(s3_port)])
            self.s3_url = f"http://127.0.0.1:{s3_port}"
            _wait_http(f"{self.services['chroma'].url}/api/v2/heartbeat", self.services["chroma"])
            _wait_http(self.s3_url, self.services["s3"])
            self._create_bucket()
            for i in range(self.workers):
                self.start_worker(i)
            for i in range(self.apis):
                self._spawn_api(i)
            for i in range(self.apis):
                _wait_http(f"{self.api(i)}/readyz", self.services[f"api-{i}"], timeout=240)
        except BaseException:
            self.stop()
            raise
        return self

    def start_worker(self, i: int) -> Service:
        """Start worker `i` (again, after a test killed it)."""
        argv = [sys.executable, "-m", "app.cli.main", "worker"]
        return self._spawn(f"worker-{i}", argv, data_dir=self.root / f"worker-{i}")

    def start_api(self, i: int) -> str:
        """Start API replica `i` (one more, say) and wait until it is ready; its URL."""
        service = self._spawn_api(i)
        _wait_http(f"{service.url}/readyz", service, timeout=240)
        return service.url

    def _spawn_api(self, i: int) -> Service:
        port = free_port()
        argv = [sys.executable, "-m", "app.cli.main", "serve", "--port", str(port)]
        return self._spawn(f"api-{i}", argv, url=f"http://127.0.0.1:{port}", data_dir=self.root / f"api-{i}")

    def stop(self) -> None:
        for service in reversed(list(self.services.values())):
            if service.alive():
                service.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        for service in self.services.values():
            try:
                service.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                service.proc.kill()
                service.proc.wait(5)
        if self.database_url:
            self._drop_database()

    def __enter__(self) -> Cluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- what tests and users need -----------------------------------------------------------------

    def api(self, i: int) -> str:
        return self.services[f"api-{i}"].url

    def worker(self, i: int) -> Service:
        return self.services[f"worker-{i}"]

    @property
    def settings_env(self) -> dict[str, str]:
        """The settings every replica and worker runs with."""
        return {
            "RAGSERVER_DATABASE_URL": self.database_url,
            "RAGSERVER_REDIS_URL": self.redis_url,
            "RAGSERVER_CHROMA_URL": self.services["chroma"].url,
            "RAGSERVER_JOBS__RUNNER": "queue",
            "RAGSERVER_JOBS__QUEUE_NAME": f"{self.name}:ingest",
            "RAGSERVER_RETRIEVAL__BM25_FEED": "redis",
            "RAGSERVER_RETRIEVAL__BM25_FEED_STREAM": f"{self.name}:bm25",
            "RAGSERVER_HISTORY__KEY_PREFIX": f"{self.name}:conv:",
            "RAGSERVER_STORAGE__URL": f"s3://{self.name}/uploads",
            "RAGSERVER_STORAGE__ENDPOINT_URL": self.s3_url,
            "AWS_ACCESS_KEY_ID": "cluster",
            "AWS_SECRET_ACCESS_KEY": "cluster",
            "AWS_DEFAULT_REGION": "us-east-1",
            "RAGSERVER_AUTH__MODE": os.environ.get("RAGSERVER_AUTH__MODE", "none"),
            **self.env,
        }

    # -- internals -----------------------------------------------------------------------------

    def _spawn(self, name: str, argv: list[str], *, url: str = "", data_dir: Path | None = None) -> Service:
        log = self.root / f"{name}.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAGSERVER_") or "ONNX" in k}
        env["PYTHONPATH"] = str(REPO)
        if data_dir is not None:
            data_dir.mkdir(parents=True, exist_ok=True)
            env.update(self.settings_env, RAGSERVER_DATA_DIR=str(data_dir))
        with open(log, "ab") as out:
            proc = subprocess.Popen(argv, cwd=self.root, env=env, stdout=out, stderr=subprocess.STDOUT)
        service = Service(name, proc, log, url)
        self.services[name] = service
        return service

    def _create_database(self) -> str:
        import sqlalchemy as sa

        engine = sa.create_engine(_psycopg(self.postgres_url), isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{self.name}"'))
        engine.dispose()
        return _psycopg(self.postgres_url).rsplit("/", 1)[0] + f"/{self.name}"

    def _drop_database(self) -> None:
        import sqlalchemy as sa

        engine = sa.create_engine(_psycopg(self.postgres_url), isolation_level="AUTOCOMMIT")
        try:
            with engine.connect() as conn:
                conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)'))
        except Exception:
            pass
        finally:
            engine.dispose()

    def _create_bucket(self) -> None:
        import boto3

        s3 = boto3.client(
            "s3",
            endpoint_url=self.s3_url,
            aws_access_key_id="cluster",
            aws_secret_access_key="cluster",
            region_name="us-east-1",
        )
        s3.create_bucket(Bucket=self.name)


def _psycopg(url: str) -> str:
    return (
        url.replace("postgresql://", "postgresql+psycopg://", 1) if url.startswith("postgresql://") else url
    )


def _bin(name: str) -> str:
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else name


def _wait_http(url: str, service: Service, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not service.alive():
            raise RuntimeError(f"{service.name} exited ({service.proc.returncode}):\n{service.tail()}")
        try:
            if httpx.get(url, timeout=2).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"{service.name} did not answer on {url} within {timeout:.0f} s:\n{service.tail()}")


def main() -> None:  # pragma: no cover - `make cluster`
    root = Path(os.environ.get("CLUSTER_DIR", "cluster-data")).resolve()
    cluster = Cluster(
        root,
        postgres_url=os.environ.get("CLUSTER_POSTGRES_URL", Cluster.postgres_url),
        redis_url=os.environ.get("CLUSTER_REDIS_URL", Cluster.redis_url),
    )
    print(f"starting the cluster under {root} (logs: {root}/*.log) ...", flush=True)
    cluster.start()
    print("ready:", flush=True)
    for name, service in cluster.services.items():
        print(f"  {name:9} pid {service.pid:<7} {service.url}", flush=True)
    print("Ctrl-C stops every process (and drops the cluster's database).", flush=True)
    try:
        while all(s.alive() for s in cluster.services.values()):
            time.sleep(1)
        print("a process exited; stopping the cluster", flush=True)
    except KeyboardInterrupt:
        pass
    finally:
        cluster.stop()


if __name__ == "__main__":  # pragma: no cover
    main()
