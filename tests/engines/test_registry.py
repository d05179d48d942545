"""Engines come from the `jupyter_modelrunner.engines` entry points: a toy engine from another distribution
(tests/support/toy_engine), found, selected for its format and answering chats, with no change to this package."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from jupyter_modelrunner import mediatypes as mt
from jupyter_modelrunner.distribution import pull
from jupyter_modelrunner.engines.hardware import Hardware
from jupyter_modelrunner.engines.registry import ENTRY_POINT_GROUP, default_engines, engine_classes
from jupyter_modelrunner.engines.select import select_engine
from jupyter_modelrunner.reference import parse_reference
from jupyter_modelrunner.store import Store

from ..conftest import server_env
from ..support.jupyter import ServerProcess

TOY_SOURCE = Path(__file__).parents[1] / "support" / "toy_engine"
REPLY = "A toy engine from another package answered this."
CPU_ONLY = Hardware(cpu_count=2, memory_total=24 * 1024**3, memory_available=20 * 1024**3)


@pytest.fixture(scope="module")
def toy_site(tmp_path_factory) -> Path:
    """The toy engine as pip leaves an installed distribution: its package, and a dist-info whose entry point is the
    one line its pyproject.toml declares, on a path entry of its own."""
    site = tmp_path_factory.mktemp("toy-site")
    shutil.copytree(TOY_SOURCE / "toy_engine", site / "toy_engine")
    info = site / "toy_engine-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: toy-engine\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\ntoy = toy_engine:ToyEngine\n")
    return site


def package_toy_model(store: Store, name: str, reply: str) -> None:
    """A model of the toy format: one file (`reply.txt`) in Docker's v0.2 layout, as any packager would write it."""
    data = reply.encode()
    layer = {"mediaType": mt.MODEL_FILE, "digest": store.add_blob_bytes(data), "size": len(data),
             "annotations": {mt.ANNOTATION_FILEPATH: "reply.txt"}}
    config = json.dumps({"config": {"format": "toy", "size": f"{len(data)}B"},
                         "descriptor": {"created": "2026-12-02T00:00:00Z"},
                         "rootfs": {"type": "rootfs", "diff_ids": [layer["digest"]]}}).encode()
    manifest = {"schemaVersion": 2, "mediaType": mt.OCI_MANIFEST, "layers": [layer],
                "config": {"mediaType": mt.MODEL_CONFIG_V02, "digest": store.add_blob_bytes(config),
                           "size": len(config)}}
    store.add_model(parse_reference(name), json.dumps(manifest).encode())


def test_the_registry_finds_an_engine_another_package_registers(toy_site, tmp_path, monkeypatch):
    assert {"llama.cpp", "vllm"} <= set(engine_classes())
    assert "toy" not in engine_classes()  # not installed: not there
    monkeypatch.syspath_prepend(str(toy_site))
    classes = engine_classes()
    assert classes["toy"].__module__ == "toy_engine"
    store = Store(tmp_path / "store", registry="127.0.0.1:1")
    package_toy_model(store, "127.0.0.1:1/ai/toy", REPLY)
    choice = select_engine(store.resolve("ai/toy"), CPU_ONLY, default_engines())
    assert choice.engine.name == "toy" and "reply.txt" in choice.reason
    assert select_engine(store.resolve("ai/toy"), CPU_ONLY, default_engines(), forced="toy-engine").engine.name == "toy"


@pytest.fixture(scope="module")
def toy_server(tmp_path_factory, toy_site, registry, seeded) -> Iterator[ServerProcess]:
    """A real `serve` whose Python finds the toy distribution; its store holds a toy model and the tiny GGUF."""
    store = Store(tmp_path_factory.mktemp("toy") / "store", registry=registry.host)
    package_toy_model(store, f"{registry.host}/ai/toy", REPLY)
    pull("ai/tiny", store, registry=registry.host)
    workdir = tmp_path_factory.mktemp("toy-serve")
    env = server_env(workdir, store.root, registry.host)
    env["PYTHONPATH"] = str(toy_site)
    with ServerProcess.standalone(workdir, env) as process:
        yield process


def test_a_toy_engine_from_another_package_answers_a_chat(toy_server):
    sdk = openai.OpenAI(base_url=toy_server.url + "engines/v1", api_key=toy_server.token, max_retries=0)
    raw = sdk.chat.completions.with_raw_response.create(model="ai/toy", messages=[{"role": "user", "content": "Hi"}])
    assert raw.headers["X-Model-Runner-Engine"] == "toy"
    answer = raw.parse()
    assert answer.choices[0].message.content == REPLY and answer.model == "ai/toy"
    streamed = sdk.chat.completions.create(model="ai/toy", stream=True, messages=[{"role": "user", "content": "Hi"}])
    assert "".join(chunk.choices[0].delta.content or "" for chunk in streamed if chunk.choices) == REPLY
    with httpx.Client(base_url=toy_server.url, headers=toy_server.headers, trust_env=False, timeout=60) as http:
        # the engine's own route lists its models only; the other engines keep theirs
        assert [m["id"] for m in http.get("engines/toy/v1/models").json()["data"]] == ["ai/toy:latest"]
        tiny = http.post("v1/chat/completions", json={"model": "ai/tiny", "max_tokens": 2,
                                                      "messages": [{"role": "user", "content": "Hi"}]})
        assert tiny.status_code == 200 and tiny.headers["X-Model-Runner-Engine"] == "llama.cpp"
        running = {entry["model_name"]: entry["backend_name"] for entry in http.get("engines/ps").json()}
        assert running == {"ai/toy:latest": "toy", "ai/tiny:latest": "llama.cpp"}
        # it speaks every dialect through the one inference path
        anthropic = http.post("v1/messages", json={"model": "ai/toy", "max_tokens": 8,
                                                   "messages": [{"role": "user", "content": "Hi"}]})
        assert anthropic.status_code == 200 and anthropic.json()["content"][0]["text"] == REPLY
        ollama = http.post("api/chat", json={"model": "ai/toy", "stream": False,
                                             "messages": [{"role": "user", "content": "Hi"}]})
        assert ollama.status_code == 200 and ollama.json()["message"]["content"] == REPLY
