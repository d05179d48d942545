"""The HF cache as `ls --hf-cache` lists it, and the Hub's search, through the real `huggingface_hub` client.

The cache is filled by `huggingface_hub`'s own downloader from the suite's fake hub (tests/support/fakehub.py),
so its layout (blobs named by their hash, snapshots of links, refs) is the client's own.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from jupyter_modelrunner.distribution.huggingface import hf_model_name, quantization_of
from jupyter_modelrunner.errors import AuthenticationFailed, InvalidReference, RegistryUnavailable
from jupyter_modelrunner.hub_catalog import (
    MAX_QUERY_CHARS,
    cached_models,
    search,
)

from .support.fakehub import FakeHub, fill_hf_cache, hub_model
from .support.models import make_tiny_gguf, make_tiny_safetensors


@pytest.fixture(scope="module")
def gguf_bytes(tmp_path_factory) -> bytes:
    return make_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf").read_bytes()


@pytest.fixture(scope="module")
def safetensors_files(tmp_path_factory) -> dict[str, bytes]:
    folder = make_tiny_safetensors(tmp_path_factory.mktemp("st") / "tiny")
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.fixture
def hub():
    with FakeHub() as fake:
        yield fake


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """An HF cache found the way users point at one: `HF_HOME`."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    return tmp_path / "hf-home" / "hub"


def test_local_names_are_lowercase_with_the_quantization_upper_case():
    assert hf_model_name("Org/Tiny-GGUF", "Q4_K_M") == "hf.co/org/tiny-gguf:Q4_K_M"
    assert hf_model_name("Org/Tiny") == "hf.co/org/tiny:latest"


@pytest.mark.parametrize(("file_name", "quant"), [
    ("Tiny-Q4_K_M.gguf", "Q4_K_M"), ("tiny.q8_0.gguf", "Q8_0"), ("qwen2.5-0.5b-instruct-q4_k_m.gguf", "Q4_K_M"),
    ("Llama-3.2-1B-Instruct-IQ4_XS.gguf", "IQ4_XS"), ("model-f16.gguf", "F16"), ("m-BF16-00001-of-00002.gguf", "BF16"),
    ("x-UD-Q4_K_XL-00002-of-00003.gguf", "UD-Q4_K_XL"), ("gpt-oss-20b-MXFP4.gguf", "MXFP4"), ("model.gguf", None),
])
def test_quantization_comes_from_the_file_name(file_name, quant):
    assert quantization_of(file_name) == quant


def test_gguf_quantizations_are_listed_apart_with_their_projector(hub, cache, gguf_bytes):
    q4, q8, projector = gguf_bytes + b"q4", gguf_bytes + b"q8-longer", gguf_bytes + b"mmproj"
    fill_hf_cache(hub, cache, "Org/Tiny-GGUF", {"tiny-Q4_K_M.gguf": q4, "tiny-Q8_0.gguf": q8,
                                                 "mmproj-tiny-f16.gguf": projector, "README.md": b"# tiny"})
    models = {m.name: m.to_json() for m in cached_models()}
    assert set(models) == {"hf.co/org/tiny-gguf:Q4_K_M", "hf.co/org/tiny-gguf:Q8_0"}
    q4_model = models["hf.co/org/tiny-gguf:Q4_K_M"]
    assert q4_model["quantization"] == "Q4_K_M" and q4_model["format"] == "gguf"
    assert q4_model["engine"] == "llama.cpp" and q4_model["repo"] == "Org/Tiny-GGUF"
    assert q4_model["files"] == ["tiny-Q4_K_M.gguf"] and q4_model["mmproj"] == "mmproj-tiny-f16.gguf"
    assert q4_model["size"] == len(q4) + len(projector)
    assert q4_model["revision"] == "main" and len(q4_model["commit"]) == 40


def test_a_lone_gguf_whose_name_says_no_quantization_is_the_repos_name(hub, cache, gguf_bytes):
    fill_hf_cache(hub, cache, "org/plain", {"model.gguf": gguf_bytes})
    fill_hf_cache(hub, cache, "org/two", {"a.gguf": gguf_bytes + b"a", "b.gguf": gguf_bytes + b"b"})
    assert [(m.name, m.quantization) for m in cached_models()] == [
        ("hf.co/org/plain:latest", None), ("hf.co/org/two:a", None), ("hf.co/org/two:b", None)]


def test_sharded_gguf_is_one_model_and_only_when_every_shard_is_there(hub, cache, gguf_bytes):
    shards = {f"big-Q4_K_M-0000{i}-of-00002.gguf": gguf_bytes + bytes([i]) for i in (1, 2)}
    fill_hf_cache(hub, cache, "org/big", shards, download=["big-Q4_K_M-00001-of-00002.gguf"])
    assert cached_models() == []  # half a download runs nowhere
    fill_hf_cache(hub, cache, "org/big", shards)
    [model] = cached_models()
    assert model.name == "hf.co/org/big:Q4_K_M" and model.files == sorted(shards)
    assert model.size == sum(len(b) for b in shards.values())


def test_safetensors_snapshot_counts_each_blob_once(hub, cache, safetensors_files):
    files = {**safetensors_files, "copy-of-config.json": safetensors_files["config.json"]}
    fill_hf_cache(hub, cache, "Org/Tiny-Chat", files)
    [model] = cached_models()
    assert model.name == "hf.co/org/tiny-chat:latest" and model.format == "safetensors"
    assert model.to_json()["engine"] == "vllm" and model.revision == "main"
    assert "model.safetensors" in model.files and "config.json" in model.files
    # The two identical files share one blob in the cache: counted once, as the disk holds it.
    assert model.size == sum(len(b) for b in safetensors_files.values())
    blobs = list((cache / "models--Org--Tiny-Chat" / "blobs").iterdir())
    assert model.size == sum(b.stat().st_size for b in blobs)


def test_a_revision_that_is_not_main_is_in_the_name(hub, cache, safetensors_files):
    fill_hf_cache(hub, cache, "org/tiny", safetensors_files, revision="v1.0")
    [model] = cached_models()
    assert model.name == "hf.co/org/tiny:v1.0" and model.revision == "v1.0"


def test_what_no_engine_runs_is_not_listed(hub, cache, safetensors_files):
    fill_hf_cache(hub, cache, "org/only-config", {"config.json": safetensors_files["config.json"]})
    fill_hf_cache(hub, cache, "org/onnx", {"config.json": b"{}", "onnx/model.onnx": b"onnx"})
    index = {"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}
    fill_hf_cache(hub, cache, "org/half", {"config.json": b"{}", "model.safetensors.index.json":
                                           json.dumps(index).encode(),
                                           "model-00001-of-00002.safetensors": safetensors_files["model.safetensors"],
                                           "model-00002-of-00002.safetensors": b"x"},
                  download=["config.json", "model.safetensors.index.json", "model-00001-of-00002.safetensors"])
    assert cached_models() == []


def test_an_absent_cache_holds_nothing(cache):
    assert not cache.exists()
    assert cached_models() == []


# -- search ------------------------------------------------------------------------------------------------------


@pytest.fixture
def search_hub(hub, monkeypatch):
    hub.models = [
        hub_model("Qwen/Qwen2.5-0.5B-Instruct-GGUF", downloads=900, likes=50, library="gguf", used_storage=6_000_000,
                  tags=["gguf", "qwen2", "text-generation", "conversational"], gguf_parameters=494_032_768),
        hub_model("Qwen/Qwen2.5-0.5B-Instruct", downloads=5000, likes=300, library="transformers",
                  tags=["transformers", "safetensors", "qwen2", "text-generation"], used_storage=988_000_000,
                  safetensors_parameters=494_032_768),
        hub_model("onnx-community/Qwen2.5-0.5B-Instruct", downloads=7000, likes=9, library="transformers.js",
                  tags=["transformers.js", "onnx", "qwen2"]),
        hub_model("someone/llama-tiny", downloads=10, likes=0, library="transformers",
                  tags=["transformers", "safetensors"]),
    ]
    monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    return hub


def test_search_lists_what_an_engine_runs_most_downloaded_first(search_hub):
    found = search("qwen2.5")
    assert [m["name"] for m in found] == ["hf.co/qwen/qwen2.5-0.5b-instruct", "hf.co/qwen/qwen2.5-0.5b-instruct-gguf"]
    safetensors, gguf = found
    assert safetensors["format"] == "safetensors" and safetensors["engine"] == "vllm"
    assert (safetensors["downloads"], safetensors["likes"], safetensors["size"]) == (5000, 300, 988_000_000)
    assert gguf["format"] == "gguf" and gguf["parameters"] == 494_032_768
    assert gguf["repo"] == "Qwen/Qwen2.5-0.5B-Instruct-GGUF"
    [asked] = search_hub.searches()
    assert asked["search"] == ["qwen2.5"] and asked["sort"] == ["downloads"]


def test_search_for_one_format_asks_the_hub_for_it(search_hub):
    assert [m["repo"] for m in search("qwen", fmt="gguf", limit=5)] == ["Qwen/Qwen2.5-0.5B-Instruct-GGUF"]
    assert search_hub.searches()[-1]["filter"] == ["gguf"]


def test_search_sends_the_users_hf_token(search_hub, monkeypatch):
    seen: list[str | None] = []
    monkeypatch.setenv("HF_TOKEN", "hf_secret_token")
    import http.server

    original = http.server.BaseHTTPRequestHandler.parse_request

    def spy(self):
        ok = original(self)
        seen.append(self.headers.get("Authorization"))
        return ok

    monkeypatch.setattr(http.server.BaseHTTPRequestHandler, "parse_request", spy)
    search("qwen")
    assert seen == ["Bearer hf_secret_token"]


def test_a_refused_search_names_hf_token(search_hub):
    search_hub.search_status = 401
    with pytest.raises(AuthenticationFailed, match="HF_TOKEN"):
        search("qwen")


def test_offline_mode_asks_nothing(search_hub, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(RegistryUnavailable, match="HF_HUB_OFFLINE"):
        search("qwen")
    assert search_hub.requests == []


def test_a_hub_that_is_down_is_said_so(monkeypatch):
    with FakeHub() as stopped:
        url = stopped.endpoint
    monkeypatch.setenv("HF_ENDPOINT", url)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with pytest.raises(RegistryUnavailable, match="cannot be reached"):
        search("qwen")


@pytest.mark.parametrize("query", ["", "   ", "a" * (MAX_QUERY_CHARS + 1), "qwen\r\nHost: evil"])
def test_a_query_that_cannot_be_meant_is_refused_before_asking(search_hub, query):
    with pytest.raises(InvalidReference):
        search(query)
    assert search_hub.requests == []


def test_the_suite_never_reaches_the_real_hub():
    """huggingface_hub reads its endpoint and telemetry switch once, at import: tests/__init__.py sets them first."""
    from huggingface_hub import constants

    assert constants.ENDPOINT == "http://127.0.0.1:9" and constants.HF_HUB_DISABLE_TELEMETRY
