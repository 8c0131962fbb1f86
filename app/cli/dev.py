"""`ragserver dev`: developer tools, e.g. the scripted OpenAI-compatible LLM that benchmarks run against."""

from __future__ import annotations

from typing import Annotated

import typer

dev_app = typer.Typer(help="Developer tools: local stand-ins for benchmarks and demos.", no_args_is_help=True)


@dev_app.command("scripted-llm")
def scripted_llm(
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port on 127.0.0.1 (0: a free one).")] = 8001,
    reply: Annotated[
        str, typer.Option(help="The reply to every chat request.")
    ] = "This is a scripted reply.",
    model: Annotated[str, typer.Option(help="The model name it reports.")] = "scripted-model",
    embedding_dim: Annotated[int, typer.Option(min=1, help="Size of /v1/embeddings vectors.")] = 384,
    word_delay: Annotated[float, typer.Option(min=0.0, help="Seconds per streamed word.")] = 0.02,
    instant: Annotated[bool, typer.Option(help="No per-word delay (same as --word-delay 0).")] = False,
) -> None:
    """Serve a scripted OpenAI-compatible LLM (chat completions, streaming, embeddings) until Ctrl-C."""
    from app.devtools.scripted_llm import ScriptedOpenAIServer

    server = ScriptedOpenAIServer(
        reply,
        model=model,
        embedding_dim=embedding_dim,
        word_delay_s=0.0 if instant else word_delay,
        port=port,
        # A long benchmark would only grow the list of recorded requests.
        record_requests=False,
    )
    server.start()
    # Printed once listening, with the real port (--port 0 picks a free one).
    typer.echo(f"scripted OpenAI server on {server.base_url} (Ctrl-C to stop)")
    server.wait()
