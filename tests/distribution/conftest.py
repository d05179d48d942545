"""Fixtures for Hugging Face pulls: olah (a real Hub-compatible server) over git repositories the suite builds, and
an environment that points `huggingface_hub` at it with a cache of the test's own."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from ..conftest import TEST_CACHE
from ..support.hub import OlahHub
from ..support.models import make_tiny_gguf

#: Repo id (as typed, mixed case: the Hub is asked with it) → what it holds.
GGUF_REPO = "TestOrg/Tiny-GGUF"
SHARDED_REPO = "TestOrg/Tiny-Sharded-GGUF"
VISION_REPO = "TestOrg/Tiny-Vision-GGUF"
SAFETENSORS_REPO = "TestOrg/Tiny-Llama"


@pytest.fixture(scope="session")
def hf_files(tmp_path_factory, tiny_safetensors) -> dict[str, dict[str, Path]]:
    """The files of each repo: two quantizations told apart by their training context (512 for Q4_K_M, 1024 for
    Q8_0), a model in two gguf-split shards, and a safetensors folder."""
    folder = tmp_path_factory.mktemp("hf-files")
    q4 = make_tiny_gguf(folder / "q4" / "tiny.gguf", context_length=512)
    q8 = make_tiny_gguf(folder / "q8" / "tiny.gguf", context_length=1024)
    make_tiny_gguf(folder / "shards" / "tiny.gguf", split_max_tensors=12)
    shards = sorted((folder / "shards").glob("tiny-0000*.gguf"))
    return {
        GGUF_REPO: {"tiny-Q4_K_M.gguf": q4, "tiny-Q8_0.gguf": q8, "README.md": _readme(folder)},
        SHARDED_REPO: {f"tiny-Q4_K_M-{shard.name.removeprefix('tiny-')}": shard for shard in shards},
        SAFETENSORS_REPO: {p.name: p for p in sorted(tiny_safetensors.iterdir()) if p.is_file()},
    }


def _readme(folder: Path) -> Path:
    path = folder / "README.md"
    path.write_text("# tiny\n")
    return path


@pytest.fixture(scope="session")
def olah_hub(tmp_path_factory, hf_files) -> Iterator[OlahHub]:
    """olah on loopback (offline mode) serving the suite's repos; the vision repo is added by `vision_repo`."""
    hub = OlahHub(tmp_path_factory.mktemp("olah"), TEST_CACHE)
    for repo_id, files in hf_files.items():
        hub.add_repo(repo_id, dict(files))
    with hub:
        yield hub


@pytest.fixture(scope="session")
def vision_repo(olah_hub, tiny_vision) -> str:
    olah_hub.add_repo(VISION_REPO, {"tiny-vision-F32.gguf": tiny_vision.gguf,
                                    "mmproj-tiny-vision-f16.gguf": tiny_vision.mmproj})
    return VISION_REPO


@pytest.fixture
def hf_env(monkeypatch, tmp_path) -> Path:
    """No Hub settings of the developer's: the test's own HF cache, no token, online. Returns the HF cache."""
    for name in ("HF_TOKEN", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_CACHE", "HF_TOKEN_PATH", "HF_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    return tmp_path / "hf-home" / "hub"


@pytest.fixture
def olah_env(hf_env, monkeypatch, olah_hub) -> Path:
    monkeypatch.setenv("HF_ENDPOINT", olah_hub.endpoint)
    return hf_env
