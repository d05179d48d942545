"""Engine control over HTTP: status, ps, unload, configure, logs, df — with the real llama.cpp engine."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.timeout(180)
API = "modelrunner"
CHAT = {"model": "ai/tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "temperature": 0}


async def get(jp_fetch, *parts, **kwargs):
    return json.loads((await jp_fetch(API, *parts, **kwargs)).body)


async def post(jp_fetch, *parts, body, **kwargs):
    return await jp_fetch(API, *parts, method="POST", body=json.dumps(body), **kwargs)


async def test_status_says_which_engines_can_run_here_and_why(jp_fetch):
    status = await get(jp_fetch, "engines", "status")
    engines = {e["engine"]: e for e in status["engines"]}
    assert engines["llama.cpp"]["available"] is True
    assert engines["vllm"]["reason"]
    assert status["hardware"] and status["memory_budget"] > 0


async def test_ps_shows_a_loaded_model_and_unload_stops_it(jp_fetch):
    assert await get(jp_fetch, "engines", "ps") == []
    answer = json.loads((await post(jp_fetch, "engines", "v1", "chat", "completions", body=CHAT)).body)
    assert answer["choices"][0]["message"]["content"]
    (runner,) = await get(jp_fetch, "engines", "ps")
    assert runner["backend_name"] == "llama.cpp"
    assert runner["model_name"].endswith("ai/tiny:latest")
    assert runner["state"] == "ready" and runner["in_use"] is False
    assert runner["keep_alive"] == 300 and runner["expires_at"] > 0
    assert runner["device"] == "cpu"
    logs = (await jp_fetch(API, "engines", "logs", params={"model": "ai/tiny"})).body.decode()
    assert "llama" in logs.lower()
    unloaded = json.loads((await post(jp_fetch, "engines", "unload", body={"models": ["ai/tiny"]})).body)
    assert unloaded["unloaded_runners"] == 1
    assert await get(jp_fetch, "engines", "ps") == []


async def test_unload_needs_a_target(jp_fetch):
    response = await post(jp_fetch, "engines", "unload", body={}, raise_error=False)
    assert response.code == 400


async def test_configure_persists_settings_and_refuses_unlisted_flags(jp_fetch, runner_store):
    done = json.loads((await post(jp_fetch, "engines", "_configure", body={
        "model": "ai/tiny", "context-size": 1024, "keep_alive": "10m", "runtime-flags": ["--threads", "1"],
    })).body)
    assert done["context_size"] == 1024 and done["keep_alive"] == 600  # seconds: data, not text
    assert "1024" in (runner_store.root / "runner-config.json").read_text()
    refused = await post(jp_fetch, "engines", "_configure", raise_error=False,
                         body={"model": "ai/tiny", "runtime-flags": ["--model", "/etc/passwd"]})
    assert refused.code == 400
    assert "--model" in json.loads(refused.body)["message"]
    bad = await post(jp_fetch, "engines", "_configure", raise_error=False,
                     body={"model": "ai/tiny", "context-size": "big"})
    assert bad.code == 400


async def test_df_reports_the_store(jp_fetch, runner_store):
    usage = await get(jp_fetch, "engines", "df")
    assert usage["model_count"] == 1 and usage["models"] > 0
    assert usage["store"] == str(runner_store.root)


async def test_chat_for_a_missing_model_is_a_404_naming_the_pull(jp_fetch):
    response = await post(jp_fetch, "engines", "v1", "chat", "completions", raise_error=False,
                          body={**CHAT, "model": "ai/absent"})
    assert response.code == 404
    error = json.loads(response.body)["error"]
    assert error["type"] == "not_found_error" and "pull ai/absent" in error["message"]
