"""The tiny vision model the suite builds itself (made once, cached between runs), and images to show it.

`make_tiny_vision.py` does the work with the vLLM environment's interpreter (torch, transformers and sentencepiece
live there) and llama.cpp's own converter, taken from the pinned llama-cpp-python sdist: the same source as the
llama-server that runs the model, so the converter writes what that server reads. Nothing comes from Hugging Face.
"""

from __future__ import annotations

import base64
import fcntl
import importlib.util
import os
import struct
import subprocess
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .models import llama_cpp_converter, vllm_python

SCRIPT = Path(__file__).with_name("make_tiny_vision.py")
#: Imported by the converter and the builder; the vLLM environment has them all (vLLM depends on each), but they are
#: installed there if missing, as the SmolLM2 twin does for its extras.
REQUIREMENTS = {"torch": "torch", "transformers": "transformers", "sentencepiece": "sentencepiece",
                "safetensors": "safetensors", "google.protobuf": "protobuf", "numpy": "numpy"}
#: What llama-server logs (at `--verbosity 4`) when it has turned an image into embeddings and fed them to the model.
IMAGE_ENCODED_LOG = "image decoded (batch 1/1)"


def images_encoded(read_log: Callable[[], str], *, at_least: int = 1, timeout: float = 30.0) -> int:
    """How many images the engine's log says it encoded, read again until at least `at_least` show or `timeout`
    passes: the engine's output reaches its log file through the runner's log thread, moments after the answer."""
    deadline = time.monotonic() + timeout
    while (count := read_log().count(IMAGE_ENCODED_LOG)) < at_least and time.monotonic() < deadline:
        time.sleep(0.2)
    return count


@dataclass(frozen=True)
class TinyVision:
    gguf: Path
    mmproj: Path


def _cache(cache_dir: Path | None) -> Path:
    return Path(cache_dir or os.environ.get("MODEL_RUNNER_TEST_CACHE")
                or Path.home() / ".cache" / "jupyter-modelrunner-tests")


def _script() -> object:
    spec = importlib.util.spec_from_file_location("make_tiny_vision", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # the script imports torch only when it builds: this is cheap
    return module


def tiny_vision_model(cache_dir: Path | None = None) -> TinyVision:
    """The tiny Gemma 3 GGUF and its projector GGUF (~0.5 MB), made on first use (~20 s) and cached."""
    cache = _cache(cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    script = _script()
    target = cache / "tiny-vision"
    result = TinyVision(target / script.TEXT_FILE, target / script.MMPROJ_FILE)  # type: ignore[attr-defined]
    with (cache / ".tiny-vision.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if script.is_complete(target):  # type: ignore[attr-defined]
            return result
        python = vllm_python()
        _ensure_requirements(python)
        converter = llama_cpp_converter(cache)
        run = subprocess.run([str(python), str(SCRIPT), str(converter), str(target)], capture_output=True, text=True,
                             env={**os.environ, "PYTHONPATH": ""})
        if run.returncode != 0 or not script.is_complete(target):  # type: ignore[attr-defined]
            raise RuntimeError(f"{SCRIPT.name} failed:\n{run.stdout[-1500:]}\n{run.stderr[-3000:]}")
        return result


def _ensure_requirements(python: Path) -> None:
    check = subprocess.run([str(python), "-c", f"import {', '.join(REQUIREMENTS)}"], capture_output=True)
    if check.returncode == 0:
        return
    missing = []
    for module, package in REQUIREMENTS.items():
        if subprocess.run([str(python), "-c", f"import {module}"], capture_output=True).returncode != 0:
            missing.append(package)
    install = subprocess.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", *missing],
                             capture_output=True, text=True)
    if install.returncode != 0:
        raise RuntimeError(f"Installing {' '.join(missing)} into {python} failed:\n{install.stderr[-2000:]}")


def png(width: int = 16, height: int = 16, rgb: tuple[int, int, int] = (255, 0, 0)) -> bytes:
    """A one-colour PNG, written by hand (no imaging library in the test environment). Different colours make
    different images, so llama-server's prompt cache cannot skip encoding one it has already seen."""
    raw = b"".join(b"\x00" + bytes(rgb) * width for _ in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def data_url(image: bytes, media_type: str = "image/png") -> str:
    return f"data:{media_type};base64,{base64.b64encode(image).decode()}"
