"""`ragserver bench abuse`: hostile uploads and requests against a real server, with what each one cost.

Starts an instant scripted LLM and the real server (`ragserver serve`, default limits, a temporary
data dir), each in its own process on loopback, then sends each hostile case (with a good file beside
it where the case is about one bad file among others) and prints, per case, the HTTP statuses, the
job's outcome (per-file statuses) and the server's RSS rise (psutil on the server's pid, the peak
sampled every 20 ms from the request until its job ended). Two cases are one tenant attacking the
service: a filter bomb on every route that takes filters, and a flood of slow uploads while another
tenant uploads. The last line is JSON with every case.

The hostile files come from `app/bench/hostile_files.py`, which the tests use too.
"""

from __future__ import annotations

import json
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Annotated, Any

import typer

from app.bench.hostile_files import (
    MB,
    malformed_docx,
    spoofing_filename,
    write_docx_bomb,
    write_docx_flood,
    write_pdf_bomb,
)
from app.bench.stack import Stack, running, stack_env, stack_key

GOOD_TEXT = b"Mount Etna is an active volcano on the east coast of Sicily, Italy."

# -- the benchmark -----------------------------------------------------------------------------------


@dataclass
class Upload:
    """One request of a case: files (name -> bytes or a path), metadata, collection."""

    files: list[tuple[str, bytes | Path]]
    collection: str = "abuse"
    metadata: str | None = None


@dataclass
class Case:
    name: str
    description: str
    build: Callable[[Path], list[Upload]]
    # Requests after the uploads (e.g. /v1/retrieve on each collection): check name -> HTTP status.
    after: Callable[[str, Any], dict[str, int]] | None = None
    # An attack that is not an upload (it makes its own requests): statuses and checks of the outcome.
    attack: Callable[[Stack, Outcome], None] | None = None


@dataclass
class Outcome:
    name: str
    description: str
    statuses: list[int] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    jobs: list[dict[str, Any]] = field(default_factory=list)
    checks: dict[str, int] = field(default_factory=dict)
    rss_rise_mb: float = 0.0
    rss_peak_mb: float = 0.0
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        row = asdict(self)
        row["case"] = row.pop("name")
        row.pop("description")
        row.update(
            rss_rise_mb=round(self.rss_rise_mb, 1),
            rss_peak_mb=round(self.rss_peak_mb),
            seconds=round(self.seconds, 2),
        )
        return row


def _good() -> tuple[str, bytes]:
    return ("good.txt", GOOD_TEXT)


def _cases(max_upload_mb: float, max_files: int, max_request_mb: float) -> list[Case]:
    def docx_bomb(tmp: Path) -> list[Upload]:
        return [Upload([("bomb.docx", write_docx_bomb(tmp / "bomb.docx", 1100)), _good()])]

    def pdf_bomb(tmp: Path) -> list[Upload]:
        return [Upload([("bomb.pdf", write_pdf_bomb(tmp / "bomb.pdf", 1024)), _good()])]

    def docx_flood(tmp: Path) -> list[Upload]:
        return [Upload([("flood.docx", write_docx_flood(tmp / "flood.docx", 95)), _good()])]

    def bad_docx(tmp: Path) -> list[Upload]:
        return [Upload([("broken.docx", malformed_docx()), _good()])]

    def long_name(tmp: Path) -> list[Upload]:
        return [Upload([(spoofing_filename(5000), b"A file with a hostile name."), _good()])]

    def oversize(tmp: Path) -> list[Upload]:
        path = tmp / "big.txt"
        with open(path, "wb") as out:
            out.truncate(0)
            block = b"lorem ipsum " * (MB // 12)
            while out.tell() < (max_upload_mb + 1) * MB:
                out.write(block)
        return [Upload([("big.txt", path), _good()])]

    def many_big(tmp: Path) -> list[Upload]:
        # Six 47 MB files: each under the per-file limit, together over the per-request one.
        path = tmp / "47mb.txt"
        with open(path, "wb") as out:
            block = b"dolor sit amet " * (MB // 15)
            while out.tell() < 47 * MB:
                out.write(block)
        return [Upload([(f"part{i}.txt", path) for i in range(6)])]

    def too_many(tmp: Path) -> list[Upload]:
        return [Upload([(f"f{i}.txt", b"tiny file %d" % i) for i in range(max_files + 1)])]

    def bad_metadata(tmp: Path) -> list[Upload]:
        bad = [
            {"$where": 1},
            {"": "empty"},
            {"#document": "x"},
            {"source": "spoofed.pdf"},
            {"doc_id": "other"},
            {f"k{i}": i for i in range(5000)},
            {"nested": {"a": 1}},
        ]
        return [Upload([_good()], metadata=json.dumps(m)) for m in bad]

    def collisions(tmp: Path) -> list[Upload]:
        return [
            Upload([_good()], collection="hr"),
            Upload([("other.txt", b"Penguins breed in the Antarctic winter.")], collection="hr__docs"),
            Upload([_good()], collection="fin__docs"),
            Upload([_good()], collection="fin"),
        ]

    def collision_checks(base: str, client: Any) -> dict[str, int]:
        checks = {}
        for name in ("hr", "hr__docs", "fin", "fin__docs"):
            r = client.post(f"{base}/v1/retrieve", json={"query": "volcano", "collection": name})
            checks[f"retrieve {name}"] = r.status_code
            checks[f"list {name}"] = client.get(f"{base}/v1/collections/{name}/documents").status_code
        return checks

    def names_and_offsets(base: str, client: Any) -> dict[str, int]:
        return {
            "offset 1e20": client.get(
                f"{base}/v1/collections/abuse/documents", params={"offset": "99999999999999999999"}
            ).status_code,
            "collection 'nl\\n'": client.post(
                f"{base}/v1/collections/nl%0A/documents", files=[("files", ("a.txt", GOOD_TEXT))]
            ).status_code,
        }

    return [
        Case("docx_bomb", "1.1 GB-inflating .docx beside a good file", docx_bomb),
        Case("pdf_bomb", "PDF content stream inflating to 1 GB beside a good file", pdf_bomb),
        Case("docx_text_flood", ".docx of 95 MB of paragraphs (~30 MB zipped, ratio ~3)", docx_flood),
        Case("malformed_docx", ".docx with malformed XML beside a good file", bad_docx),
        Case("long_rtl_name", "5,000-character file name with U+202E", long_name, names_and_offsets),
        Case("oversize_file", f"one file of {max_upload_mb + 1:g} MB (server.max_upload_mb)", oversize),
        Case(
            "six_47mb_files", f"6 x 47 MB in one request (limits.max_request_mb {max_request_mb:g})", many_big
        ),
        Case("too_many_files", f"{max_files + 1} files (limits.max_files)", too_many),
        Case("bad_metadata", "$where, '', #document, reserved keys, 5,000 keys, nested value", bad_metadata),
        Case("colliding_names", "collections hr, hr__docs, fin__docs then fin", collisions, collision_checks),
        Case(
            "filter_bomb",
            "filters of 20,000, 6,000 and 1,000 keys on every route that takes filters",
            lambda _: [],
            attack=filter_bomb,
        ),
        Case(
            "slow_upload_flood",
            "100 uploads of one key declaring 10 MB and sending 1 byte, while another tenant uploads",
            lambda _: [],
            attack=slow_upload_flood,
        ),
    ]


FILTER_ROUTES = ("/v1/retrieve", "/v1/chat", "/v1/chat/completions", "/v1/completions", "/v1/responses")


def _filter_body(route: str, filters: dict[str, Any]) -> dict[str, Any]:
    question = "Where is Etna?"
    if route == "/v1/retrieve":
        return {"query": question, "collection": "warmup", "filters": filters}
    if route == "/v1/chat":
        return {"message": question, "collection": "warmup", "filters": filters}
    if route == "/v1/chat/completions":
        return {"model": "warmup", "messages": [{"role": "user", "content": question}], "filters": filters}
    if route == "/v1/completions":
        return {"model": "warmup", "prompt": question, "filters": filters}
    return {"model": "warmup", "input": question, "filters": filters}


def filter_bomb(stack: Stack, outcome: Outcome) -> None:
    """The filter bomb that took the server down (a segfault in Chroma's bindings at 20,000 keys)."""
    import httpx

    with httpx.Client(base_url=stack.url, headers=stack.headers, timeout=120) as client:
        for keys in (20_000, 6_000, 1_000):
            bomb = {f"k{i}": f"v{i}" for i in range(keys)}
            for route in FILTER_ROUTES:
                r = client.post(route, json=_filter_body(route, bomb))
                outcome.statuses.append(r.status_code)
                if r.status_code >= 400:
                    outcome.errors.append(str(r.json().get("error", {}).get("message", r.text))[:120])
        outcome.checks["healthz"] = client.get("/healthz").status_code
        outcome.errors = sorted(set(outcome.errors))


def _slow_upload(url: str, headers: dict[str, str]) -> Any:
    import socket

    host, port = url.removeprefix("http://").rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=60)
    sock.sendall(
        (
            f"POST /v1/collections/flood/documents HTTP/1.1\r\nHost: {host}\r\n"
            f"Authorization: {headers['Authorization']}\r\n"
            "Content-Type: multipart/form-data; boundary=XyZ\r\nContent-Length: 10000000\r\n\r\n-"
        ).encode()
    )
    return sock


def _status_line(sock: Any, timeout: float) -> int:
    sock.settimeout(timeout)
    try:
        head = sock.recv(64)
    except OSError:
        return 0
    return int(head.split(b" ", 2)[1]) if head.startswith(b"HTTP/") else 0


def slow_upload_flood(stack: Stack, outcome: Outcome) -> None:
    """100 slow uploads of one key (one byte, then nothing, like one byte every few seconds) while
    another tenant uploads: the other tenant's upload status and time, and how the flood ended."""
    import httpx

    from app.settings import Settings

    flood = stack.headers
    other = {"Authorization": f"Bearer {stack_key(stack, tenant='other', role='writer')}"}
    timeout_s = Settings().limits.body_timeout_s
    sockets = [_slow_upload(stack.url, flood) for _ in range(100)]
    try:
        time.sleep(0.5)
        started = time.perf_counter()
        with httpx.Client(base_url=stack.url, headers=other, timeout=60) as client:
            status, body = _send(client, "", Upload([_good()], collection="calm"))
            outcome.checks["other_tenant_upload"] = status
            outcome.checks["other_tenant_upload_ms"] = round((time.perf_counter() - started) * 1000)
            if status == 202:
                job = _wait_job(client, "", body["job_id"])
                outcome.jobs.append({"status": job.get("status"), "files": []})
        flood_started = time.perf_counter()
        outcome.statuses = [_status_line(s, timeout_s + 30) for s in sockets]
        outcome.checks["flood_closed_after_s"] = round(time.perf_counter() - flood_started)
    finally:
        for s in sockets:
            s.close()


class PeakRSS:
    """Samples a process's RSS (this one's by default) every `interval_s` on a thread while the block
    runs; `rise_mb` is the peak over the RSS at the start."""

    def __init__(self, pid: int | None = None, interval_s: float = 0.02):
        import psutil

        self.process = psutil.Process(pid)
        self.interval_s = interval_s
        self.baseline = self.process.memory_info().rss
        self.peak = self.baseline
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.peak = max(self.peak, self.process.memory_info().rss)
            except Exception:  # the process went away
                return

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def rise_mb(self) -> float:
        return (self.peak - self.baseline) / MB


def _send(client: Any, base: str, upload: Upload) -> tuple[int, dict[str, Any]]:
    handles: list[IO[bytes]] = []
    files: list[tuple[str, tuple[str, bytes | IO[bytes]]]] = []
    try:
        for name, content in upload.files:
            if isinstance(content, Path):
                handles.append(open(content, "rb"))  # noqa: SIM115 - closed below
                files.append(("files", (name, handles[-1])))
            else:
                files.append(("files", (name, content)))
        data = {"metadata": upload.metadata} if upload.metadata is not None else None
        response = client.post(f"{base}/v1/collections/{upload.collection}/documents", files=files, data=data)
    finally:
        for opened in handles:
            opened.close()
    try:
        body = response.json()
    except ValueError:
        body = {"raw": response.text[:200]}
    return response.status_code, body


def _wait_job(client: Any, base: str, job_id: str, timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    job: dict[str, Any] = {}
    while time.monotonic() < deadline:
        job = client.get(f"{base}/v1/jobs/{job_id}").json()
        if job.get("status") not in ("queued", "running"):
            return job
        time.sleep(0.1)
    return job


def run_case(case: Case, stack: Stack, tmp: Path) -> Outcome:
    import httpx

    base, pid, headers = stack.url, stack.pid, stack.headers

    outcome = Outcome(case.name, case.description)
    work = tmp / case.name
    work.mkdir()
    uploads = case.build(work)
    started = time.perf_counter()
    with httpx.Client(timeout=300, headers=headers) as client, PeakRSS(pid) as rss:
        if case.attack is not None:
            case.attack(stack, outcome)
        for upload in uploads:
            try:
                status, body = _send(client, base, upload)
            except httpx.HTTPError as exc:
                outcome.statuses.append(0)
                outcome.errors.append(f"{type(exc).__name__}: {exc}")
                continue
            outcome.statuses.append(status)
            if status == 202:
                job = _wait_job(client, base, body["job_id"])
                outcome.jobs.append(
                    {
                        "status": job.get("status"),
                        "files": [
                            {
                                "filename": f["filename"][:60] + ("..." if len(f["filename"]) > 60 else ""),
                                "filename_chars": len(f["filename"]),
                                "status": f["status"],
                                "error": (f.get("error") or "")[:160] or None,
                            }
                            for f in job.get("files", [])
                        ],
                    }
                )
            else:
                outcome.errors.append(str((body.get("error") or {}).get("message", body))[:200])
        if case.after is not None:
            outcome.checks = case.after(base, client)
    outcome.seconds = time.perf_counter() - started
    outcome.rss_rise_mb = rss.rise_mb
    outcome.rss_peak_mb = rss.peak / MB
    return outcome


def _counted(statuses: list[int]) -> str:
    """Statuses as sent, or counted when many ("429x92,408x8")."""
    if len(statuses) <= 8:
        return ",".join(map(str, statuses))
    return ",".join(f"{status}x{n}" for status, n in Counter(statuses).most_common())


def _warm_up(base: str, headers: dict[str, str]) -> None:
    """One ingestion before the cases, so the first case's RSS is not the first job's warm-up
    (collection, embedding and BM25 buffers)."""
    import httpx

    with httpx.Client(timeout=120, headers=headers) as client:
        _, body = _send(
            client, base, Upload([_good(), ("broken.docx", malformed_docx())], collection="warmup")
        )
        _wait_job(client, base, body["job_id"])


def bench_abuse(
    cases: Annotated[
        str | None, typer.Option(help="Comma-separated case names to run (default: all). --list shows them.")
    ] = None,
    list_cases: Annotated[bool, typer.Option("--list", help="List the cases and exit.")] = False,
) -> None:
    """Hostile uploads against a real server: status, job outcome and server RSS rise per case.
    Last line: JSON."""
    from app.settings import Settings

    settings = Settings()
    every = _cases(settings.server.max_upload_mb, settings.limits.max_files, settings.limits.max_request_mb)
    if list_cases:
        for case in every:
            typer.echo(f"{case.name}: {case.description}")
        return
    chosen = every
    if cases:
        wanted = [c.strip() for c in cases.split(",") if c.strip()]
        unknown = sorted(set(wanted) - {c.name for c in every})
        if unknown:
            raise typer.BadParameter(f"unknown case(s) {', '.join(unknown)}; see --list")
        chosen = [c for c in every if c.name in wanted]
    results: list[Outcome] = []
    with tempfile.TemporaryDirectory(prefix="ragserver-bench-abuse-") as tmp_dir:
        tmp = Path(tmp_dir)
        typer.echo("starting the server ...", err=True)
        with running(stack_env(tmp)) as stack:
            _warm_up(stack.url, stack.headers)
            for case in chosen:
                typer.echo(f"{case.name}: {case.description} ...", err=True)
                outcome = run_case(case, stack, tmp)
                results.append(outcome)
                jobs = "; ".join(
                    f"{j['status']} [" + ", ".join(f"{f['status']}" for f in j["files"]) + "]"
                    for j in outcome.jobs
                )
                typer.echo(
                    f"{case.name:<16} http {_counted(outcome.statuses):<24} "
                    f"jobs {jobs or '-':<40} rss +{outcome.rss_rise_mb:.0f} MB "
                    f"(peak {outcome.rss_peak_mb:.0f} MB)"
                    + (f"  checks {outcome.checks}" if outcome.checks else "")
                )
    typer.echo(json.dumps({"cases": [r.to_dict() for r in results]}, ensure_ascii=False))
