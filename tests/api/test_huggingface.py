"""`GET huggingface/cache` and `GET huggingface/search` through a real Jupyter server: the HF cache filled by
`huggingface_hub`'s own downloader, the search answered by the suite's named fake hub
(tests/support/fakehub.py)."""

from __future__ import annotations

import json

import pytest
from tornado.httpclient import HTTPClientError

from ..support.fakehub import FakeHub, fill_hf_cache, hub_model
from ..support.models import make_tiny_gguf

pytestmark = pytest.mark.timeout(180)
API = "modelrunner"


async def get(jp_fetch, *parts, **kwargs):
    return json.loads((await jp_fetch(API, *parts, **kwargs)).body)


@pytest.fixture
def hub(monkeypatch):
    with FakeHub() as fake:
        monkeypatch.setenv("HF_ENDPOINT", fake.endpoint)
        yield fake


async def test_the_cache_lists_what_an_engine_runs_under_the_name_pull_takes(jp_fetch, hub, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    assert await get(jp_fetch, "huggingface", "cache") == {"cache": str(tmp_path / "hf" / "hub"), "models": []}
    gguf = make_tiny_gguf(tmp_path / "tiny.gguf").read_bytes()
    fill_hf_cache(hub, tmp_path / "hf" / "hub", "Org/Tiny-GGUF", {"tiny-Q4_K_M.gguf": gguf, "README.md": b"hi"})
    listing = await get(jp_fetch, "huggingface", "cache")
    [model] = listing["models"]
    assert model["name"] == "hf.co/org/tiny-gguf:Q4_K_M" and model["repo"] == "Org/Tiny-GGUF"
    assert (model["format"], model["quantization"], model["engine"]) == ("gguf", "Q4_K_M", "llama.cpp")
    assert model["size"] == len(gguf) and model["files"] == ["tiny-Q4_K_M.gguf"] and model["revision"] == "main"


async def test_search_answers_from_the_hub_in_its_order(jp_fetch, hub):
    hub.models = [
        hub_model("Org/Tiny-GGUF", downloads=10, likes=2, library="gguf", tags=["gguf"], used_storage=1234),
        hub_model("Org/Tiny", downloads=99, likes=7, library="transformers", tags=["transformers", "safetensors"]),
        hub_model("Org/Tiny-ONNX", downloads=500, likes=1, library="transformers.js", tags=["onnx"]),
    ]
    found = (await get(jp_fetch, "huggingface", "search", params={"q": "tiny", "limit": "5"}))["models"]
    assert [(m["name"], m["format"], m["downloads"], m["likes"]) for m in found] == [
        ("hf.co/org/tiny", "safetensors", 99, 7), ("hf.co/org/tiny-gguf", "gguf", 10, 2)]
    assert found[1]["size"] == 1234
    gguf_only = await get(jp_fetch, "huggingface", "search", params={"q": "tiny", "format": "gguf"})
    assert [m["repo"] for m in gguf_only["models"]] == ["Org/Tiny-GGUF"]


@pytest.mark.parametrize(("params", "fragment"), [
    ({}, "Say what to search for"), ({"q": "tiny", "limit": "0"}, "from 1 to"),
    ({"q": "tiny", "limit": "many"}, "from 1 to"), ({"q": "tiny", "format": "onnx"}, "gguf"),
])
async def test_a_search_that_cannot_be_meant_is_a_400_and_asks_nothing(jp_fetch, hub, params, fragment):
    with pytest.raises(HTTPClientError) as refused:
        await jp_fetch(API, "huggingface", "search", params=params)
    assert refused.value.code == 400
    assert fragment in json.loads(refused.value.response.body)["message"]
    assert hub.requests == []


async def test_a_hub_that_refuses_is_a_401_naming_hf_token(jp_fetch, hub):
    hub.search_status = 401
    with pytest.raises(HTTPClientError) as refused:
        await jp_fetch(API, "huggingface", "search", params={"q": "tiny"})
    assert refused.value.code == 401 and "HF_TOKEN" in json.loads(refused.value.response.body)["message"]


async def test_offline_search_is_a_503_saying_why(jp_fetch, hub, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(HTTPClientError) as refused:
        await jp_fetch(API, "huggingface", "search", params={"q": "tiny"})
    assert refused.value.code == 503 and "HF_HUB_OFFLINE" in json.loads(refused.value.response.body)["message"]
