"""An engine that refuses its settings, over HTTP with the real llama-server: the first request gets a 502 whose
message starts with the engine's own reason; later ones get the same answer at once, with no new process, until
the model's settings change (`engines/_configure`)."""

from __future__ import annotations

import json

import pytest

from jupyter_modelrunner.api.base import SERVICE_SETTING

pytestmark = pytest.mark.timeout(180)
API = "modelrunner"
CHAT = {"model": "ai/tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "temperature": 0}
# Passes the allowlist (the flag takes a value); llama-server refuses the value and exits at once.
REFUSED_FLAGS = ["--cache-type-k", "bogus"]
REASON = 'error while handling argument "--cache-type-k": Unsupported cache type: bogus'


async def post(jp_fetch, *parts, body):
    return await jp_fetch(API, *parts, method="POST", body=json.dumps(body), raise_error=False)


async def test_an_engine_refusing_its_flags_answers_502_at_once_until_configure(jp_fetch, jp_serverapp):
    stats = jp_serverapp.web_app.settings[SERVICE_SETTING].scheduler.stats  # the engine starts it counted
    configured = await post(jp_fetch, "engines", "_configure", body={"model": "ai/tiny",
                                                                     "runtime-flags": REFUSED_FLAGS})
    assert configured.code == 200
    first = await post(jp_fetch, "engines", "v1", "chat", "completions", body=CHAT)
    assert first.code == 502
    message = json.loads(first.body)["error"]["message"]
    assert message.splitlines()[0] == REASON
    assert "Last lines of its log:" in message and stats["load_failures"] == 1

    for _ in range(2):  # the same answer, and no engine started for it
        again = await post(jp_fetch, "engines", "v1", "chat", "completions", body=CHAT)
        assert again.code == 502 and json.loads(again.body)["error"]["message"] == message
    assert stats["load_failures"] == 1 and stats["loads"] == 0

    configured = await post(jp_fetch, "engines", "_configure", body={"model": "ai/tiny", "runtime-flags": []})
    assert configured.code == 200
    answer = await post(jp_fetch, "engines", "v1", "chat", "completions", body=CHAT)
    assert answer.code == 200 and json.loads(answer.body)["choices"][0]["message"]["content"]
    assert stats["loads"] == 1
