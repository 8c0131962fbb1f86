"""Map `settings.llm` to an LLM backend."""

from __future__ import annotations

from pathlib import Path

from app.llm.base import LLM
from app.settings import LLMSettings

OPENAI_BASE_URL = "https://api.openai.com/v1"


def build_llm(settings: LLMSettings, models_dir: Path | None = None) -> LLM:
    """Build the configured LLM: "local" (Qwen2.5-0.5B or SmolLM2 in-process), "openai" (any
    OpenAI-compatible server) or "scripted" (canned answers in process, for tests and demos: see
    `ScriptedLLM`), wrapped in a FallbackLLM when `fallback_base_url` is set.

    The local model is not loaded here; call `LocalLLM.load()` at start-up.
    """
    primary: LLM
    if settings.provider == "local":
        from app.llm.local_provider import LocalLLM

        primary = LocalLLM(
            model_dir=settings.local_model_dir,
            gguf_file=settings.local_gguf_file,
            default_max_tokens=settings.max_tokens,
            default_temperature=settings.temperature,
            context_window=settings.context_window,
            repetition_penalty=settings.repetition_penalty,
            model=settings.local_model,
            models_dir=models_dir,
            runtime=settings.local_runtime,
        )
    elif settings.provider == "openai":
        primary = _openai(settings.base_url or OPENAI_BASE_URL, settings.api_key, settings.model, settings)
    elif settings.provider == "scripted":
        primary = _scripted(settings)
    else:
        raise ValueError(
            f"unknown llm.provider {settings.provider!r}; expected 'local', 'openai' or 'scripted'"
        )

    if not settings.fallback_base_url:
        return primary
    from app.llm.fallback import FallbackLLM

    fallback = _openai(
        settings.fallback_base_url,
        settings.fallback_api_key,
        settings.fallback_model or settings.model,
        settings,
    )
    return FallbackLLM(primary, fallback)


def _openai(base_url: str, api_key: str, model: str, settings: LLMSettings) -> LLM:
    from app.llm.openai_provider import OpenAICompatibleLLM

    return OpenAICompatibleLLM(
        base_url=base_url,
        api_key=api_key,
        model=model,
        timeout_s=settings.timeout_s,
        max_retries=settings.max_retries,
        default_max_tokens=settings.max_tokens,
        default_temperature=settings.temperature,
        deadline_s=settings.deadline_s,
        context_window=settings.context_window,
    )


def _scripted(settings: LLMSettings) -> LLM:
    """For tests and demos: a ScriptedLLM answering its default reply (or what a test enqueues on it),
    with no model and no network. It never reads the question, so it is no answer for real users."""
    from app.llm.scripted_provider import ScriptedLLM

    return ScriptedLLM(
        # llm.model names it only when set: the default names the local model, which this is not.
        model=settings.model if "model" in settings.model_fields_set else "scripted-model",
        default_max_tokens=settings.max_tokens,
        default_temperature=settings.temperature,
        context_window=settings.context_window,
        deadline_s=settings.deadline_s,
    )
