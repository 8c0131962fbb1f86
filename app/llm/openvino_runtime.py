"""The packaged GGUF models on OpenVINO GenAI: converted once, then loaded in seconds.

Why OpenVINO (measured on the 2-core machine, Qwen2.5-0.5B, a 1,223-token RAG prompt, 2 threads;
docs/BENCHMARKS.md "A CPU runtime for the local model"): prefill at 650-700 tokens/s against 73-170 for
llama.cpp builds (llama-cpp-python compiles for 9-13 minutes at install) and about 10x the
dequantized transformers model; decode at 17-18 tokens/s; a prompt that shares its start with the
previous one (the system message) reuses its KV cache. It installs as a wheel.

Its GGUF reader takes F32/F16/Q8_0/Q4_0/Q4_1 tensors (and the K-quants it knows), not the Q5_0 tensors
of the packaged Qwen Q4_K_M file, so `prepare` first rewrites such a file with every other tensor
type re-quantized to Q8_0 (Q5_0 -> Q8_0 is exact; pure Python, `gguf` + numpy, ~20 s), then lets
OpenVINO convert it and save its own model (`openvino_model.xml/.bin` and the tokenizers) into
`<models_dir>/<name>-<key>-ov<N>/`. The key is the GGUF file's content key, so another file, or a new
version of this conversion, gets a directory of its own; the directory appears whole (built under a
temporary name, then renamed) so a crash never leaves half a model that looks ready.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# Bump when the conversion changes: the old directories are then ignored.
CONVERSION_VERSION = 1
_MODEL_FILES = (
    "openvino_model.xml",
    "openvino_model.bin",
    "openvino_tokenizer.xml",
    "openvino_detokenizer.xml",
)


class ConversionError(RuntimeError):
    """The GGUF file cannot be served by OpenVINO (unreadable tensors, a failed conversion)."""


def converted_dir(models_dir: Path, gguf: Path, key: str) -> Path:
    """Where the OpenVINO model of `gguf` (content key `key`) lives under `models_dir`."""
    return models_dir / f"{gguf.stem}-{key[:16]}-ov{CONVERSION_VERSION}"


def prepare(gguf: Path, models_dir: Path, key: str) -> Path:
    """The directory of `gguf`'s OpenVINO model: converted now, in a child process, if it is not there
    yet (the conversion peaks at ~1.7 GB for Qwen2.5-0.5B; a server that did it in its own process
    would keep that memory)."""
    target = converted_dir(models_dir, gguf, key)
    if all((target / name).is_file() for name in _MODEL_FILES):
        return target
    done = subprocess.run(
        [sys.executable, "-m", "app.llm.openvino_runtime", str(gguf), str(models_dir), key],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0 or not all((target / name).is_file() for name in _MODEL_FILES):
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise ConversionError(f"converting {gguf.name} for OpenVINO failed: {' '.join(tail)}")
    return target


def convert(gguf: Path, models_dir: Path, key: str) -> Path:
    """Convert `gguf` into its directory under `models_dir` (what `prepare`'s child process runs)."""
    target = converted_dir(models_dir, gguf, key)
    if all((target / name).is_file() for name in _MODEL_FILES):
        return target
    import openvino_genai

    models_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=models_dir))
    work.chmod(0o755)
    try:
        staged = work / gguf.name  # OpenVINO writes its files beside the GGUF: alone in a directory
        if _readable_as_is(gguf):
            os.symlink(gguf.resolve(), staged)
        else:
            log.info("re-quantizing %s to Q8_0 for OpenVINO (once)", gguf.name)
            requantize(gguf, staged)
        log.info("converting %s to an OpenVINO model (once; cached at %s)", gguf.name, target)
        pipeline = openvino_genai.LLMPipeline(str(staged), "CPU", enable_save_ov_model=True)
        del pipeline
        staged.unlink()
        missing = [name for name in _MODEL_FILES if not (work / name).is_file()]
        if missing:
            raise ConversionError(f"OpenVINO saved no {', '.join(missing)} for {gguf.name}")
        try:
            work.rename(target)
        except OSError:  # another process finished first: use its copy
            if not all((target / name).is_file() for name in _MODEL_FILES):
                raise
    except ConversionError:
        raise
    except Exception as exc:
        raise ConversionError(f"converting {gguf.name} for OpenVINO failed: {exc}") from exc
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target


# Tensor types OpenVINO's GGUF reader takes (2026.4): others are re-quantized to Q8_0.
_READABLE = frozenset({"F32", "F16", "Q8_0", "Q4_0", "Q4_1"})


def _readable_as_is(gguf: Path) -> bool:
    import gguf as gguf_lib

    reader = gguf_lib.GGUFReader(gguf)
    return all(t.tensor_type.name in _READABLE for t in reader.tensors)


def requantize(source: Path, target: Path, keep: frozenset[str] = _READABLE) -> None:
    """Copy `source` to `target` with every tensor whose type is not in `keep` (the types OpenVINO
    reads) re-quantized to Q8_0."""
    import gguf as gguf_lib
    from gguf.quants import dequantize, quantize

    kinds = gguf_lib.GGMLQuantizationType
    reader = gguf_lib.GGUFReader(source)
    arch = reader.fields["general.architecture"].contents()
    writer = gguf_lib.GGUFWriter(str(target), arch)
    for f in reader.fields.values():
        if f.name == gguf_lib.Keys.General.ARCHITECTURE or f.name.startswith("GGUF."):
            continue
        value_type = f.types[0]
        sub_type = f.types[-1] if value_type == gguf_lib.GGUFValueType.ARRAY else None
        value = f.contents()
        if f.name == "general.file_type":
            value = int(gguf_lib.LlamaFileType.MOSTLY_Q8_0)
        writer.add_key_value(f.name, value, value_type, sub_type=sub_type)
    for t in reader.tensors:
        if t.tensor_type.name in keep:
            writer.add_tensor(t.name, t.data, raw_dtype=t.tensor_type)
        else:
            values = dequantize(t.data, t.tensor_type)
            writer.add_tensor(t.name, quantize(values, kinds.Q8_0), raw_dtype=kinds.Q8_0)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


# One pipeline per converted model and thread count in a process (several LocalLLMs over one model:
# a fallback chain, two containers in an eval run, the tests), with a lock: generations take turns.
_PIPELINES: dict[tuple[str, int], tuple[Any, threading.Lock]] = {}
_PIPELINES_LOCK = threading.Lock()


class OpenVINOEngine:
    """Tokenizes with the model's own tokenizer and chat template, and generates token by token."""

    def __init__(self, directory: Path, threads: int):
        import openvino_genai

        key = (str(directory), threads)
        with _PIPELINES_LOCK:
            found = _PIPELINES.get(key)
            if found is None:
                pipeline = openvino_genai.LLMPipeline(str(directory), "CPU", INFERENCE_NUM_THREADS=threads)
                found = _PIPELINES[key] = (pipeline, threading.Lock())
        self._pipeline, self._turn = found
        self._tokenizer = self._pipeline.get_tokenizer()
        self._tokenizer_lock = threading.Lock()
        config = self._pipeline.get_generation_config()
        self.eos_token_id = int(config.eos_token_id)
        self.stop_token_ids = set(config.stop_token_ids) | {self.eos_token_id}

    def chat_ids(self, messages: Sequence[dict[str, str]]) -> list[int]:
        """The prompt's token ids: the chat template with the generation prompt, then tokenized."""
        with self._tokenizer_lock:
            text = self._tokenizer.apply_chat_template(list(messages), add_generation_prompt=True)
            encoded = self._tokenizer.encode(text, add_special_tokens=False)
        return [int(i) for i in encoded.input_ids.data[0]]

    def decode(self, ids: Sequence[int]) -> str:
        if not ids:
            return ""
        with self._tokenizer_lock:
            return str(self._tokenizer.decode(list(ids), skip_special_tokens=True))

    def generate(
        self,
        ids: Sequence[int],
        *,
        max_new_tokens: int,
        temperature: float,
        repetition_penalty: float,
        on_token: Callable[[int], bool],
    ) -> list[int]:
        """The new token ids, greedy when `temperature` is 0; `on_token(id)` is called for each and
        stops the generation by returning True (the token that stopped it is kept)."""
        import numpy as np
        import openvino as ov
        import openvino_genai

        config = self._pipeline.get_generation_config()
        config.max_new_tokens = max_new_tokens
        config.apply_chat_template = False
        config.repetition_penalty = repetition_penalty
        if temperature > 0:
            config.do_sample, config.temperature = True, temperature
        else:
            config.do_sample = False
        produced: list[int] = []
        stop_ids = self.stop_token_ids

        class _Streamer(openvino_genai.StreamerBase):  # type: ignore[misc]
            def write(self, token: int | list[int]) -> Any:
                for t in token if isinstance(token, list) else [token]:
                    produced.append(int(t))
                    if int(t) in stop_ids or on_token(int(t)):
                        return openvino_genai.StreamingStatus.STOP
                return openvino_genai.StreamingStatus.RUNNING

            def end(self) -> None:
                pass

        array = np.asarray([list(ids)], dtype=np.int64)
        inputs = openvino_genai.TokenizedInputs(ov.Tensor(array), ov.Tensor(np.ones_like(array)))
        with self._turn:
            self._pipeline.generate(inputs, config, _Streamer())
        return produced


if __name__ == "__main__":  # python -m app.llm.openvino_runtime GGUF MODELS_DIR KEY
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        print(convert(Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]))
    except ConversionError as exc:
        print(exc, file=sys.stderr)
        sys.exit(1)
