"""Models over HTTP (pytest-jupyter's in-process server with the extension): pull, list, inspect, tag,
push and delete, and the errors a user meets."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import time

import filelock
import httpx
import pytest

from jupyter_modelrunner import mediatypes as mt
from jupyter_modelrunner.store import Store

from ..support.faultproxy import FaultProxy
from ..support.publish import gguf_config, publish_raw

pytestmark = pytest.mark.timeout(120)
API = "modelrunner"


def lines(response) -> list[dict]:
    return [json.loads(line) for line in response.body.decode().splitlines() if line.strip()]


async def test_pull_streams_progress_and_ends_with_success(jp_fetch, jp_serverapp, registry, seeded):
    response = await jp_fetch(API, "models", "create", method="POST", body=json.dumps({"from": "ai/tiny-st"}))
    assert response.code == 200
    assert response.headers["Content-Type"].startswith("application/x-ndjson")
    events = lines(response)
    assert events[-1]["type"] == "success"
    assert "ai/tiny-st" in events[-1]["message"]
    progress = [e for e in events if e["type"] == "progress"]
    assert progress and progress[-1]["pulled"] == progress[-1]["total"]
    listed = json.loads((await jp_fetch(API, "models")).body)
    assert any(tag == "ai/tiny-st:latest" for model in listed for tag in model["tags"])


async def test_names_are_shown_as_users_type_them_where_a_default_registry_is_set(jp_fetch, registry):
    """With the default registry set (here, the test registry), no list shows its host: `ls`, `/v1/models`,
    Ollama's tags and `ps` all say `ai/tiny:latest`, the name a user types."""
    listed = json.loads((await jp_fetch(API, "models")).body)
    openai_ids = [m["id"] for m in json.loads((await jp_fetch(API, "v1", "models")).body)["data"]]
    ollama_names = [m["name"] for m in json.loads((await jp_fetch(API, "api", "tags")).body)["models"]]
    await jp_fetch(API, "models", "load", method="POST", body=json.dumps({"model": "ai/tiny"}))
    running = [r["model_name"] for r in json.loads((await jp_fetch(API, "engines", "ps")).body)]
    assert [m["tags"] for m in listed] == [["ai/tiny:latest"]]
    assert openai_ids == ollama_names == running == ["ai/tiny:latest"]
    assert registry.host not in json.dumps([listed, openai_ids, ollama_names, running])


async def test_pull_of_a_bad_reference_is_a_400_with_one_error_event(jp_fetch):
    response = await jp_fetch(API, "models", "create", method="POST", body=json.dumps({"from": "Not A Name!"}),
                              raise_error=False)
    assert response.code == 400
    (event,) = lines(response)
    assert event["type"] == "error" and "Not A Name!" in event["message"]


async def test_pull_from_a_registry_that_is_down_is_a_503(jp_fetch):
    response = await jp_fetch(API, "models", "create", method="POST",
                              body=json.dumps({"from": "127.0.0.1:1/ai/tiny"}), raise_error=False)
    assert response.code == 503
    (event,) = lines(response)
    assert event["type"] == "error" and "127.0.0.1:1" in event["message"]


async def test_pull_of_a_missing_model_is_a_404(jp_fetch):
    response = await jp_fetch(API, "models", "create", method="POST", body=json.dumps({"from": "ai/no-such-model"}),
                              raise_error=False)
    assert response.code == 404
    assert lines(response)[-1]["type"] == "error"


async def test_pull_without_a_reference_says_what_to_send(jp_fetch):
    response = await jp_fetch(API, "models", "create", method="POST", body="{}", raise_error=False)
    assert response.code == 400
    assert '"from"' in json.loads(response.body)["message"]


async def test_inspect_by_short_name_and_unknown_model(jp_fetch):
    model = json.loads((await jp_fetch(API, "models", "ai/tiny")).body)
    assert model["config"]["format"] == "gguf"
    assert model["id"].startswith("sha256:")
    assert model["engine"]["engine"] == "llama.cpp" and "gguf" in model["engine"]["reason"]
    missing = await jp_fetch(API, "models", "ai/nothing-here", raise_error=False)
    assert missing.code == 404
    assert "pull ai/nothing-here" in json.loads(missing.body)["message"]


async def test_tag_then_delete_a_tag_keeps_the_model(jp_fetch, runner_store: Store):
    response = await jp_fetch(API, "models", "ai/tiny", "tag", method="POST", body="",
                              allow_nonstandard_methods=True, params={"repo": "ai/my-tiny", "tag": "v1"})
    assert response.code == 201
    assert any(t.endswith("ai/my-tiny:v1") for t in json.loads(response.body)["tags"])
    removed = json.loads((await jp_fetch(API, "models", "ai/my-tiny:v1", method="DELETE")).body)
    assert removed["untagged"] and removed["deleted"] is None
    assert runner_store.resolve("ai/tiny")


async def test_delete_by_id_of_a_model_with_two_tags_needs_force(jp_fetch, runner_store: Store):
    await jp_fetch(API, "models", "ai/tiny", "tag", method="POST", body=json.dumps({"target": "ai/second"}))
    model_id = runner_store.resolve("ai/tiny").short_id
    refused = await jp_fetch(API, "models", model_id, method="DELETE", raise_error=False)
    assert refused.code == 409
    forced = json.loads((await jp_fetch(API, "models", model_id, method="DELETE", params={"force": "true"})).body)
    assert forced["deleted"] and forced["freed_bytes"] > 0
    assert json.loads((await jp_fetch(API, "models")).body) == []


async def test_push_streams_progress_to_the_registry(jp_fetch, registry):
    target = f"{registry.host}/team/pushed-tiny:v2"
    response = await jp_fetch(API, "models", "ai/tiny", "push", method="POST", body=json.dumps({"target": target}))
    events = lines(response)
    assert events[-1]["type"] == "success", events[-1]
    assert "team/pushed-tiny:v2" in events[-1]["message"]
    pulled = await jp_fetch(API, "models", "create", method="POST", body=json.dumps({"from": target}))
    assert lines(pulled)[-1]["type"] == "success"


async def test_package_makes_a_model_from_files_on_the_server(jp_fetch, tiny_gguf, tmp_path):
    response = await jp_fetch(API, "models", "package", method="POST",
                              body=json.dumps({"tag": "ai/packaged", "gguf": [str(tiny_gguf)], "context_size": 256}))
    assert response.code == 201
    model = json.loads(response.body)
    assert model["tags"][0] == "ai/packaged:latest" and model["engine"]["engine"] == "llama.cpp"
    missing = await jp_fetch(API, "models", "package", method="POST", raise_error=False,
                             body=json.dumps({"tag": "ai/nope", "gguf": [str(tmp_path / "absent.gguf")]}))
    assert missing.code in (400, 404, 422) and "absent.gguf" in json.loads(missing.body)["message"]


async def test_package_takes_a_projector(jp_fetch, tiny_vision, tiny_gguf):
    response = await jp_fetch(API, "models", "package", method="POST", body=json.dumps(
        {"tag": "ai/seeing", "gguf": [str(tiny_vision.gguf)], "mmproj": str(tiny_vision.mmproj)}))
    assert response.code == 201 and json.loads(response.body)["multimodal"] is True
    wrong = await jp_fetch(API, "models", "package", method="POST", raise_error=False, body=json.dumps(
        {"tag": "ai/nope", "gguf": [str(tiny_vision.gguf)], "mmproj": str(tiny_gguf)}))
    assert wrong.code == 422 and "not a multimodal projector" in json.loads(wrong.body)["message"]


async def test_a_safetensors_model_lists_why_no_engine_can_run_it(jp_fetch, jp_serverapp, registry, seeded):
    await jp_fetch(API, "models", "create", method="POST", body=json.dumps({"from": "ai/tiny-st"}))
    listed = {m["tags"][0]: m for m in json.loads((await jp_fetch(API, "models")).body)}
    entry = listed["ai/tiny-st:latest"]
    assert (entry["engine"] or {}).get("engine") == "vllm" or "vLLM" in entry["engine_error"]


SLOW_BLOB_BYTES = 8 * 1024 * 1024
#: A slow network (1 MiB/s) that the proxy delivers in pieces of 16 KiB: each read of the body gets about one.
SLOW_RATE = 1024 * 1024


@pytest.fixture(scope="module")
def slow_model(registry) -> tuple[str, str]:
    """A model with one 8 MiB layer (two of the pull's 4 MiB progress steps), and that layer's digest."""
    payload = b"GGUF" + os.urandom(SLOW_BLOB_BYTES - 4)
    publish_raw(registry.host, "ai/slow", "latest", gguf_config(), mt.MODEL_CONFIG_V01, [(payload, mt.GGUF, {})])
    return "ai/slow:latest", "sha256:" + hashlib.sha256(payload).hexdigest()


async def poll(condition, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.005)


async def test_a_client_that_leaves_stops_the_pull_within_a_read_and_the_next_pull_resumes(
    jp_fetch, jp_http_port, jp_base_url, jp_auth_header, registry, runner_store: Store, slow_model
):
    name, layer = slow_model
    partial, lock = runner_store.incomplete_path(layer), runner_store.blob_lock(layer)

    def size() -> int:
        return partial.stat().st_size if partial.exists() else 0

    def download_over() -> bool:  # the downloader holds the layer's lock until it has stopped writing
        try:
            lock.acquire(timeout=0)
        except filelock.Timeout:
            return False
        lock.release()
        return True

    with FaultProxy(registry.host) as proxy:
        proxy.rate = SLOW_RATE
        url = f"http://localhost:{jp_http_port}{jp_base_url}{API}/models/create"
        async with (httpx.AsyncClient(headers=jp_auth_header, trust_env=False) as http,
                    http.stream("POST", url, json={"from": f"{proxy.host}/{name}"}) as response):
            assert response.status_code == 200
            await poll(lambda: size() >= 1024 * 1024, "the first MiB on disk")  # mid-blob, mid-step
        # Leaving the block closed the connection: the user's cancel.
        at_close, closed_at = size(), time.monotonic()
        await poll(download_over, "the download to stop")
        stopped_after, have = time.monotonic() - closed_at, size()
        # Within a read or two of the slow network, not at the end of the 4 MiB progress step.
        assert have - at_close <= 4 * (SLOW_RATE // 64), (have, at_close)
        assert stopped_after < 1.0
        assert 0 < have < SLOW_BLOB_BYTES  # the partial download is kept

        proxy.rate = None
        proxy.reset_counters()
        response = await jp_fetch(API, "models", "create", method="POST",
                                  body=json.dumps({"from": f"{proxy.host}/{name}"}))
        assert lines(response)[-1]["type"] == "success"
        assert proxy.bytes_downstream < SLOW_BLOB_BYTES - have + 256 * 1024  # the rest, not the whole layer
    assert runner_store.has_blob(layer) and not partial.exists()


def _flip_weights(store: Store, name: str) -> None:
    """Damage the model's weights blob in place (same size), as a failing disk would."""
    model = store.resolve(name)
    path = store.blob_path(model.manifest.layers[0].digest)
    path.chmod(0o644)
    with path.open("r+b") as handle:
        handle.seek(64)
        handle.write(b"\xff" * 16)
    path.chmod(0o444)


async def test_fsck_reports_and_repairs_through_the_api(jp_fetch, runner_store: Store):
    async def fsck(**body):
        return json.loads((await jp_fetch(API, "models", "fsck", method="POST", body=json.dumps(body))).body)

    clean = await fsck()
    assert clean["clean"] and clean["problems"] == [] and clean["models"] == 1 and clean["checked_bytes"] > 0

    await jp_fetch(API, "models", "load", method="POST", body=json.dumps({"model": "ai/tiny"}))
    _flip_weights(runner_store, "ai/tiny")
    found = await fsck()
    assert not found["clean"] and found["remaining"] == 1
    (problem,) = found["problems"]
    assert problem["model"] == "ai/tiny:latest" and problem["kind"] == "blob-corrupt" and not problem["repaired"]
    assert "removes the model from the index" in problem["repair"]

    repaired = await fsck(repair=True)
    assert repaired["clean"] and repaired["repair_ran"] and repaired["removed"][0]["tags"] == ["ai/tiny:latest"]
    assert json.loads((await jp_fetch(API, "models")).body) == []
    assert json.loads((await jp_fetch(API, "engines", "ps")).body) == []  # its engine was stopped first
    assert (await fsck())["clean"]
    pulled = await jp_fetch(API, "models", "create", method="POST", body=json.dumps({"from": "ai/tiny"}))
    assert lines(pulled)[-1]["type"] == "success"
    assert (await fsck())["clean"]


async def test_fsck_streams_progress_when_asked_and_refuses_a_bad_body(jp_fetch):
    response = await jp_fetch(API, "models", "fsck", method="POST", body=json.dumps({"stream": True}))
    assert response.headers["Content-Type"].startswith("application/x-ndjson")
    events = lines(response)
    assert events[-1]["type"] == "success" and events[-1]["report"]["clean"]
    progress = [e for e in events if e["type"] == "progress"]
    assert progress and progress[-1]["mode"] == "fsck" and progress[-1]["pulled"] == progress[-1]["total"]
    refused = await jp_fetch(API, "models", "fsck", method="POST", body=json.dumps({"repair": "yes"}),
                             raise_error=False)
    message = json.loads(refused.body)["message"]
    assert refused.code == 400 and "(at repair)" in message and "boolean" in message
