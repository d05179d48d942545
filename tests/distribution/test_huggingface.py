"""`pull hf.co/org/repo[:tag]` against a real Hub-compatible server (olah, offline, over git repos the suite builds)
with the real `huggingface_hub` client; the faults olah cannot make (401 by token, 429, a hub dying mid-body) come
from the named fake in tests/support/fakehub.py."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os

import pytest

from jupyter_modelrunner.distribution import pull
from jupyter_modelrunner.distribution.huggingface import hf_model_name
from jupyter_modelrunner.errors import AuthenticationFailed, ModelNotFound, RegistryUnavailable
from jupyter_modelrunner.store import Store

from ..conftest import server_env
from ..support.fakehub import FakeHub
from ..support.jupyter import ServerProcess
from .conftest import GGUF_REPO, SAFETENSORS_REPO, SHARDED_REPO


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def config_of(store, model) -> dict:
    return json.loads(store.blob_path(model.manifest.config.digest).read_bytes())["config"]


def test_hf_model_name_is_the_one_local_name():
    assert hf_model_name("TestOrg/Tiny-GGUF") == "hf.co/testorg/tiny-gguf:latest"
    assert hf_model_name("TestOrg/Tiny-GGUF", "q4_k_m") == "hf.co/testorg/tiny-gguf:Q4_K_M"
    assert hf_model_name("TestOrg/Tiny-Llama", "v1.0") == "hf.co/testorg/tiny-llama:v1.0"


def test_pull_gguf_takes_q4_k_m_by_default_and_says_where_it_came_from(olah_env, olah_hub, hf_files, tmp_path):
    store = Store(tmp_path / "store")
    events = []
    result = pull(f"hf.co/{GGUF_REPO}", store, on_progress=lambda e: events.append(e.to_json()))
    model = result.model
    assert set(model.tags) == {"hf.co/testorg/tiny-gguf:latest", "hf.co/testorg/tiny-gguf:Q4_K_M"}
    q4 = hf_files[GGUF_REPO]["tiny-Q4_K_M.gguf"]
    assert sha256(model.bundle / "model.gguf") == sha256(q4)  # the Q4_K_M file, not the Q8_0 one
    assert config_of(store, model)["gguf"]["llama.context_length"] == "512"
    source = model.to_json()["config"]["source"]
    assert source["repo"] == GGUF_REPO and source["revision"] == "main" and len(source["commit"]) == 40
    assert [f["path"] for f in source["files"]] == ["tiny-Q4_K_M.gguf"]
    assert source["files"][0]["digest"] == f"sha256:{sha256(q4)}"
    assert any(e["type"] == "progress" and e.get("layer") for e in events) and events[-1]["type"] == "success"
    assert store.resolve(f"hf.co/{GGUF_REPO}").id == model.id  # the name typed is the name stored
    assert store.df().models == q4.stat().st_size + model.manifest.config.size  # the linked blob counted once


def test_a_quantization_tag_is_matched_without_case(olah_env, hf_files, tmp_path):
    store = Store(tmp_path / "store")
    model = pull(f"huggingface.co/{GGUF_REPO}:q8_0", store).model
    assert model.tags == ("hf.co/testorg/tiny-gguf:Q8_0",)
    assert sha256(model.bundle / "model.gguf") == sha256(hf_files[GGUF_REPO]["tiny-Q8_0.gguf"])
    assert config_of(store, model)["gguf"]["llama.context_length"] == "1024"


def test_an_unknown_quantization_lists_those_there(olah_env, tmp_path):
    store = Store(tmp_path / "store")
    with pytest.raises(ModelNotFound, match=r"no Q5_K_M quantization; it has Q4_K_M, Q8_0\. .*:Q4_K_M"):
        pull(f"hf.co/{GGUF_REPO}:Q5_K_M", store)
    assert store.models() == []


def test_a_sharded_gguf_is_pulled_whole_and_in_order(olah_env, hf_files, tmp_path):
    store = Store(tmp_path / "store")
    model = pull(f"hf://{SHARDED_REPO}", store).model
    shards = sorted(hf_files[SHARDED_REPO].items())
    assert [p.name for p in model.gguf_files()] == ["model-00001-of-00002.gguf", "model-00002-of-00002.gguf"]
    assert [sha256(p) for p in model.gguf_files()] == [sha256(path) for _, path in shards]


def test_a_mmproj_becomes_the_vision_projector(olah_env, vision_repo, tiny_vision, tmp_path):
    store = Store(tmp_path / "store")
    model = pull(f"hf.co/{vision_repo}", store).model
    assert model.projector is not None and sha256(model.projector) == sha256(tiny_vision.mmproj)
    assert sha256(model.bundle / "model.gguf") == sha256(tiny_vision.gguf)


def test_a_safetensors_repo_becomes_a_folder_vllm_opens(olah_env, hf_files, tmp_path):
    store = Store(tmp_path / "store")
    model = pull(f"hf.co/{SAFETENSORS_REPO}", store).model
    assert model.format == "safetensors" and model.tags == ("hf.co/testorg/tiny-llama:latest",)
    for name, path in hf_files[SAFETENSORS_REPO].items():
        assert sha256(model.bundle / name) == sha256(path), name
    assert model.to_json()["config"]["source"]["revision"] == "main"


def test_the_hf_cache_is_used_first_offline_with_the_hub_stopped(olah_env, olah_hub, monkeypatch, tmp_path):
    first = pull(f"hf.co/{GGUF_REPO}", Store(tmp_path / "one"))
    assert first.downloaded_bytes > 0
    olah_hub.stop()
    try:
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        store = Store(tmp_path / "two")
        again = pull(f"hf.co/{GGUF_REPO}", store)
        assert again.downloaded_bytes == 0
        monkeypatch.delenv("HF_HUB_OFFLINE")  # the hub unreachable, not declared offline: the cache still answers
        assert pull(f"hf.co/{GGUF_REPO}:Q4_K_M", Store(tmp_path / "three")).downloaded_bytes == 0
    finally:
        olah_hub.start()
    (cached,) = (olah_env / "models--TestOrg--Tiny-GGUF" / "blobs").iterdir()
    blob = store.blob_path(again.model.manifest.layers[0].digest)
    assert blob.stat().st_ino == cached.stat().st_ino  # linked, not copied


def test_offline_without_the_revision_in_the_cache_says_so(hf_env, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(RegistryUnavailable, match="HF_HUB_OFFLINE is set"):
        pull(f"hf.co/{GGUF_REPO}", Store(tmp_path / "store"))


def test_a_private_repo_needs_hf_token(hf_env, monkeypatch, hf_files, tmp_path):
    with FakeHub() as hub:
        hub.add_repo("TestOrg/Private", {"tiny-Q4_K_M.gguf": hf_files[GGUF_REPO]["tiny-Q4_K_M.gguf"].read_bytes()})
        hub.token = "hf_secret_token_0123456789"
        monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
        store = Store(tmp_path / "store")
        with pytest.raises(AuthenticationFailed, match=rf"HF_TOKEN.*{hub.endpoint}/TestOrg/Private"):
            pull("hf.co/TestOrg/Private", store)
        monkeypatch.setenv("HF_TOKEN", hub.token)
        assert pull("hf.co/TestOrg/Private", store).model.tags[0] == "hf.co/testorg/private:latest"
        monkeypatch.delenv("HF_TOKEN")
        hub.requests.clear()  # the caller's token (a client's, sent with its pull) is used when the runner has none
        assert pull("hf.co/TestOrg/Private:Q4_K_M", Store(tmp_path / "s2"), hf_token=hub.token).model
        assert hub.requests[0].headers.get("authorization") == f"Bearer {hub.token}"


def test_a_rate_limited_hub_is_retried(hf_env, monkeypatch, hf_files, tmp_path):
    with FakeHub() as hub:
        q4 = hf_files[GGUF_REPO]["tiny-Q4_K_M.gguf"]
        hub.add_repo("TestOrg/Busy", {"tiny-Q4_K_M.gguf": q4.read_bytes()})
        hub.rate_limited = 2
        monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
        model = pull("hf.co/TestOrg/Busy", Store(tmp_path / "store")).model
        assert sha256(model.bundle / "model.gguf") == sha256(q4)
        assert sum(1 for method, *_ in hub.requests if method == "GET") >= 3


def test_a_download_cut_by_a_dying_hub_resumes_on_the_next_pull(hf_env, monkeypatch, hf_files, tmp_path):
    # huggingface_hub writes what it receives in 10 MiB chunks: a file of a few chunks, cut after two of them.
    q4 = tmp_path / "padded.gguf"
    q4.write_bytes(hf_files[GGUF_REPO]["tiny-Q4_K_M.gguf"].read_bytes() + os.urandom(24 * 2**20))
    size = q4.stat().st_size
    with FakeHub() as hub:
        hub.add_repo("TestOrg/Flaky", {"tiny-Q4_K_M.gguf": q4.read_bytes()})
        hub.cut_after = 21 * 2**20
        monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
        store = Store(tmp_path / "store")
        with contextlib.suppress(RegistryUnavailable):  # huggingface_hub may resume within this pull already
            pull("hf.co/TestOrg/Flaky", store)
        model = pull("hf.co/TestOrg/Flaky", store).model
        assert sha256(model.bundle / "model.gguf") == sha256(q4)
        ranges = [r.headers.get("range") for r in hub.requests if r.method == "GET" and "/resolve/" in r.path]
        assert ranges[0] is None and ranges[1] == f"bytes={20 * 2**20}-"  # resumed where it was cut, not from 0
        assert hub.bytes_served == 21 * 2**20 + size - 20 * 2**20


@pytest.fixture(scope="module")
def hf_server(tmp_path_factory, olah_hub, registry):
    workdir = tmp_path_factory.mktemp("hf-serve")
    env = server_env(workdir, workdir / "store", registry.host)
    env.update({"HF_ENDPOINT": olah_hub.endpoint, "HF_HOME": str(workdir / "hf-home")})
    env.pop("HF_TOKEN", None)
    with ServerProcess.standalone(workdir, env) as server:
        yield server


def test_pull_through_the_api_then_chat(hf_server, monkeypatch):
    import openai

    from jupyter_modelrunner.client import RunnerClient

    monkeypatch.setenv("HF_TOKEN", "hf_client_side_token_42")  # sent along; olah ignores it
    client = RunnerClient(hf_server.url, hf_server.token)
    events = list(client.pull(f"hf.co/{GGUF_REPO}:Q4_K_M"))
    assert events[-1]["type"] == "success" and "hf.co/testorg/tiny-gguf:Q4_K_M" in events[-1]["message"]
    assert "hf.co/testorg/tiny-gguf:Q4_K_M" in [t for m in client.models() for t in m["tags"]]
    chat = openai.OpenAI(base_url=hf_server.url + "engines/v1", api_key=hf_server.token, max_retries=0)
    answer = chat.chat.completions.create(model=f"hf.co/{GGUF_REPO}:Q4_K_M", max_tokens=8,
                                          messages=[{"role": "user", "content": "hello"}])
    assert answer.choices[0].message.content
    assert "hf_client_side_token_42" not in hf_server.log_path.read_text()
