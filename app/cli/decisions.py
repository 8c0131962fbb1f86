"""`ragserver models ...`, `ragserver experiments ...` and `ragserver collections profile C`: the model
registry, A/B experiments and collections' answer profiles (docs/EXPERIMENTS.md).

Given `--url`, each command asks that running server's admin API (`--api-key` or RAGSERVER_API_KEY);
that is the way while a server runs. Without it, the command works on the data dir's database directly,
as the operator of `--tenant`. Every command's last line is JSON.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from app.cli.collections import collections_app
from app.cli.common import (
    KeyOpt,
    TenantOpt,
    UrlOpt,
    call_server,
    emit_json,
    fail,
    parse_file,
    run_local,
)
from app.container import Container

models_app = typer.Typer(help="The model registry: LLM endpoints a profile or experiment may name.")
experiments_app = typer.Typer(
    help="A/B experiments: create, start, pause, stop, report, conclude, replay.", no_args_is_help=True
)

NameArg = Annotated[str, typer.Argument(help="Experiment name.")]


# -- models ------------------------------------------------------------------------------------


@models_app.command("list")
def models_list(url: UrlOpt = None, api_key: KeyOpt = None, tenant: TenantOpt = None) -> None:
    """The registered models: name, provider, model id, context window, prices, license."""
    if url:
        data = call_server(url, api_key, "GET", "/v1/admin/models")
    else:

        async def listed(c: Container, p: Any) -> dict[str, Any]:
            return {
                "default": c.models.default.name,
                "models": [m.to_dict() for m in await c.models.list(p.tenant)],
            }

        data = run_local(tenant, listed)
    for m in data["models"]:
        mark = "*" if m["default"] else " "
        price = f"{m['price_in']}/{m['price_out']} per 1k"
        typer.echo(
            f"{mark} {m['name']:28} {m['provider']:9} {m.get('model') or '':32} {m['context_window']:>8}  "
            f"{price:18} {m['license']}",
            err=True,
        )
    emit_json(data)


@models_app.command("add")
def models_add(
    name: Annotated[str, typer.Argument(help="The model's name in the registry.")],
    provider: Annotated[str, typer.Option(help="openai (any OpenAI-compatible server), local or scripted.")],
    base_url: Annotated[str | None, typer.Option(help="The OpenAI-compatible endpoint, .../v1.")] = None,
    model: Annotated[str | None, typer.Option(help="The id the endpoint knows the model by.")] = None,
    api_key_env: Annotated[
        str | None, typer.Option(help="Environment variable on the server holding the endpoint's key.")
    ] = None,
    context_window: Annotated[int, typer.Option(min=256)] = 8192,
    price_in: Annotated[float, typer.Option(min=0.0, help="Price per 1,000 prompt tokens.")] = 0.0,
    price_out: Annotated[float, typer.Option(min=0.0, help="Price per 1,000 completion tokens.")] = 0.0,
    license: Annotated[str, typer.Option(help="The model's license, as its card states it.")] = "unknown",
    fallback: Annotated[
        str | None, typer.Option(help="Another model that answers when this one fails.")
    ] = None,
    replace: Annotated[bool, typer.Option(help="Replace the tenant's model of that name.")] = False,
    url: UrlOpt = None,
    api_key: KeyOpt = None,
    tenant: TenantOpt = None,
) -> None:
    """Register an LLM endpoint (vLLM, llama.cpp, Ollama, OpenAI, Gemini's OpenAI endpoint, ...)."""
    from pydantic import ValidationError

    from app.settings import ModelEntry

    body = {
        "name": name,
        "provider": provider,
        "base_url": base_url,
        "model": model,
        "api_key_env": api_key_env,
        "context_window": context_window,
        "price_in": price_in,
        "price_out": price_out,
        "license": license,
        "fallback": fallback,
    }
    try:
        entry = ModelEntry.model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        fail(f"{'.'.join(str(p) for p in first['loc']) or 'model'}: {first['msg']}")
    if url:
        data = call_server(url, api_key, "POST", f"/v1/admin/models?replace={str(replace).lower()}", body)
    else:

        async def add(c: Container, p: Any) -> dict[str, Any]:
            return (await c.models.add(p, entry, replace=replace)).to_dict()

        data = run_local(tenant, add)
    emit_json(data)


@models_app.command("remove")
def models_remove(
    name: Annotated[str, typer.Argument(help="A model the tenant registered.")],
    url: UrlOpt = None,
    api_key: KeyOpt = None,
    tenant: TenantOpt = None,
) -> None:
    """Forget a registered model."""
    if url:
        data = call_server(url, api_key, "DELETE", f"/v1/admin/models/{name}")
    else:

        async def remove(c: Container, p: Any) -> dict[str, Any]:
            await c.models.remove(p, name)
            return {"name": name, "removed": True}

        data = run_local(tenant, remove)
    emit_json(data)


# -- answer profiles ---------------------------------------------------------------------------


@collections_app.command("profile")
def profile(
    collection: Annotated[str, typer.Argument(help="Collection name.")],
    set_: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            help="key=value (prompt, model, mode, top_k, fusion, rrf_k, dense_weight, bm25_weight, "
            "candidates); key= unsets it. Repeatable.",
        ),
    ] = None,
    replace: Annotated[bool, typer.Option(help="The --set values are the whole profile.")] = False,
    url: UrlOpt = None,
    api_key: KeyOpt = None,
    tenant: TenantOpt = None,
) -> None:
    """Show, or set, the collection's answer profile: its defaults for prompt, model and retrieval."""
    from app.services.answer_profiles import parse_assignments
    from app.services.errors import InvalidInput

    try:
        values = parse_assignments(set_ or [])
    except InvalidInput as exc:
        fail(str(exc))
    path = f"/v1/admin/collections/{collection}/profile"
    if url:
        if values or replace:
            data = call_server(url, api_key, "PUT" if replace else "PATCH", path, values)
        else:
            data = call_server(url, api_key, "GET", path)
    else:

        async def work(c: Container, p: Any) -> dict[str, Any]:
            if values or replace:
                return await c.profiles.set(p, collection, values, replace=replace)
            return await c.profiles.get(p, collection)

        data = run_local(tenant, work)
    for key, value in data["effective"].items():
        mark = "*" if key in data["profile"] else " "
        typer.echo(f"{mark} {key:14} {value}", err=True)
    emit_json(data)


# -- experiments -------------------------------------------------------------------------------


@experiments_app.command("create")
def create(
    file: Annotated[Path, typer.Option("--file", "-f", exists=True, dir_okay=False, help="The YAML spec.")],
    replace: Annotated[
        bool, typer.Option(help="Replace a draft or stopped experiment of that name.")
    ] = False,
    url: UrlOpt = None,
    api_key: KeyOpt = None,
    tenant: TenantOpt = None,
) -> None:
    """Create a draft experiment from its YAML file (start it with `start NAME`)."""
    from app.experiments.spec import parse_spec

    text, spec = parse_file(file, parse_spec)
    if url:
        path = f"/v1/admin/experiments?replace={str(replace).lower()}"
        data = call_server(url, api_key, "POST", path, content=text, content_type="application/yaml")
    else:

        async def work(c: Container, p: Any) -> dict[str, Any]:
            return (await c.experiments.create(p, spec, replace=replace)).to_dict()

        data = run_local(tenant, work)
    emit_json(data)


def _status(action: str, name: str, url: str | None, api_key: str | None, tenant: str | None) -> None:
    if url:
        data = call_server(url, api_key, "POST", f"/v1/admin/experiments/{name}/{action}")
    else:

        async def work(c: Container, p: Any) -> dict[str, Any]:
            return (await c.experiments.change_status(p, name, action)).to_dict()

        data = run_local(tenant, work)
    typer.echo(f"{name}: {data['status']}", err=True)
    emit_json(data)


@experiments_app.command("start")
def start(name: NameArg, url: UrlOpt = None, api_key: KeyOpt = None, tenant: TenantOpt = None) -> None:
    """Start (or resume) an experiment: every replica enrolls requests within experiments.refresh_s."""
    _status("start", name, url, api_key, tenant)


@experiments_app.command("pause")
def pause(name: NameArg, url: UrlOpt = None, api_key: KeyOpt = None, tenant: TenantOpt = None) -> None:
    """Pause an experiment: requests are answered by the collection's profile until it starts again."""
    _status("pause", name, url, api_key, tenant)


@experiments_app.command("stop")
def stop(name: NameArg, url: UrlOpt = None, api_key: KeyOpt = None, tenant: TenantOpt = None) -> None:
    """Stop an experiment for good (its report stays)."""
    _status("stop", name, url, api_key, tenant)


@experiments_app.command("list")
def list_(url: UrlOpt = None, api_key: KeyOpt = None, tenant: TenantOpt = None) -> None:
    """The tenant's experiments and their status."""
    if url:
        data = call_server(url, api_key, "GET", "/v1/admin/experiments")
    else:

        async def work(c: Container, p: Any) -> dict[str, Any]:
            return {"experiments": [e.to_dict() for e in await c.experiments.list_all(p)]}

        data = run_local(tenant, work)
    for e in data["experiments"]:
        typer.echo(f"{e['name']:32} {e['status']:8} {', '.join(e['collections'])}", err=True)
    emit_json(data)


@experiments_app.command("report")
def report(
    name: NameArg,
    out: Annotated[
        Path | None, typer.Option(help="Write report.json and a self-contained report.html here.")
    ] = None,
    url: UrlOpt = None,
    api_key: KeyOpt = None,
    tenant: TenantOpt = None,
) -> None:
    """Per arm: units, answers, the metrics and their difference to control (95% interval, always-valid
    interval, p-value, test); the sample-ratio-mismatch check; stopped arms. The last line is JSON."""
    from app.experiments.html import render_report

    if url:
        data = call_server(url, api_key, "GET", f"/v1/admin/experiments/{name}/report")
    else:

        async def work(c: Container, p: Any) -> dict[str, Any]:
            return await c.experiments.report(p, name)

        data = run_local(tenant, work)
    control = data["control"]
    for arm, row in data["arms"].items():
        primary = f"{data['primary_metric']} {row.get(data['primary_metric'])}"
        typer.echo(f"{arm:16} units {row['units']:>6}  answers {row['answers']:>6}  {primary}", err=True)
        compared = data["comparisons"].get(arm, {}).get(data["primary_metric"])
        if compared and arm != control:
            typer.echo(
                f"{'':16} vs {control}: {compared['diff']} 95% {compared['ci95']} "
                f"always-valid {compared['sequential_ci95']} p={compared['p_value']}",
                err=True,
            )
    if data["srm"]["flagged"]:
        typer.echo(f"SAMPLE RATIO MISMATCH (p={data['srm']['p_value']}): assignment is broken", err=True)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "report.json").write_text(json.dumps(data, indent=2), encoding="utf-8")
        (out / "report.html").write_text(render_report(data), encoding="utf-8")
        typer.echo(f"wrote {out / 'report.html'}", err=True)
    summary = {k: v for k, v in data.items() if k != "over_time"}
    emit_json(summary)


@experiments_app.command("conclude")
def conclude(
    name: NameArg,
    arm: Annotated[str, typer.Option(help="The winning arm: its overrides become the collections' profile.")],
    url: UrlOpt = None,
    api_key: KeyOpt = None,
    tenant: TenantOpt = None,
) -> None:
    """Ship the winner: write its overrides into each collection's answer profile, stop the experiment."""
    if url:
        data = call_server(url, api_key, "POST", f"/v1/admin/experiments/{name}/conclude", {"arm": arm})
    else:

        async def work(c: Container, p: Any) -> dict[str, Any]:
            return await c.experiments.conclude(p, name, arm)

        data = run_local(tenant, work)
    emit_json(data)


@experiments_app.command("replay")
def replay(
    name: NameArg,
    questions: Annotated[Path, typer.Option(help="Questions .jsonl (a feedback export, CMU QA, ...).")],
    collection: Annotated[
        str | None,
        typer.Option(
            "--collection", "-c", help="Answer from this collection (default: the experiment's first)."
        ),
    ] = None,
    corpus: Annotated[
        Path | None, typer.Option(help="A corpus .jsonl to ingest and answer from instead (as eval rag).")
    ] = None,
    limit: Annotated[int | None, typer.Option(min=1, help="Only the first N questions.")] = None,
    out: Annotated[
        Path | None, typer.Option(help="Run directories go here (default runs/replay-NAME).")
    ] = None,
    url: UrlOpt = None,
    api_key: KeyOpt = None,
    tenant: TenantOpt = None,
) -> None:
    """Before traffic: run each arm's overrides through `eval rag` on a question set (on this machine's
    data dir), then `eval compare` each arm against control. Resumable (the runs are eval rag runs).
    The last line is JSON: each arm's paired deltas against control."""
    from app.cli.eval_rag import compare, rag
    from app.experiments.spec import ExperimentSpec, parse_spec
    from evals.rag_eval import compare_runs

    if url:
        spec = parse_spec(call_server(url, api_key, "GET", f"/v1/admin/experiments/{name}?format=yaml"))
    else:

        async def work(c: Container, p: Any) -> ExperimentSpec:
            return (await c.experiments.get(p, name)).spec

        spec = run_local(tenant, work)
    out = out or Path("runs") / f"replay-{spec.name}"
    runs = {}
    for arm in spec.arms:
        typer.echo(
            f"-- arm {arm.name}: {arm.overrides.values() or 'the collection profile / settings'}", err=True
        )
        runs[arm.name] = out / arm.name
        rag(
            questions=questions,
            collection=None if corpus else (collection or spec.collections[0]),
            corpus=corpus,
            limit=limit,
            out=runs[arm.name],
            set_=[f"{k}={v}" for k, v in arm.overrides.values().items()],
        )
    control = spec.control.name
    deltas = {}
    for arm in spec.arms:
        if arm.name == control:
            continue
        typer.echo(f"-- {arm.name} against {control}", err=True)
        compare(runs[control], runs[arm.name])
        compared = compare_runs(runs[control], runs[arm.name])
        deltas[arm.name] = {
            m["metric"]: {k: m["delta"][k] for k in ("mean", "ci_low", "ci_high", "n")}
            for m in compared["metrics"]
        }
    emit_json(
        {
            "experiment": spec.name,
            "control": control,
            "runs": {k: str(v) for k, v in runs.items()},
            "deltas": deltas,
        }
    )
