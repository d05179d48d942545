"""The limits a runner keeps under load, each provoked for real: a body too large (413), too many requests
waiting for one model (503 with Retry-After), and pulls beyond the concurrent bound (they wait their turn)."""

from __future__ import annotations

import asyncio
import json
import socket
import time

import httpx
import pytest

from ..conftest import server_env
from ..support.jupyter import ServerProcess
from ..support.publish import publish_gguf

pytestmark = pytest.mark.timeout(300)
MAX_BODY = 256 * 1024


@pytest.fixture(scope="module")
def limited(tmp_path_factory, live_store, registry):
    """`serve` with small limits: 256 KiB bodies, 1 request waiting per model, 1 pull at a time."""
    workdir = tmp_path_factory.mktemp("limited")
    with ServerProcess.standalone(workdir, server_env(workdir, live_store.root, registry.host),
                                  f"--ModelRunner.max_body_bytes={MAX_BODY}", "--Scheduler.max_waiting_requests=1",
                                  "--ModelRunner.max_concurrent_pulls=1") as server:
        yield server


def test_a_body_over_the_limit_is_413_before_it_is_read(limited):
    with httpx.Client(base_url=limited.url, headers=limited.headers, trust_env=False, timeout=30) as http:
        big = {"model": "ai/tiny", "messages": [{"role": "user", "content": "x" * (MAX_BODY + 1)}]}
        refused = http.post("v1/chat/completions", json=big)
        assert refused.status_code == 413
        assert "more than the 256.00 KiB this server accepts" in refused.json()["error"]["message"]
        small = {"model": "ai/tiny", "max_tokens": 2, "messages": [{"role": "user", "content": "Hello"}]}
        assert http.post("v1/chat/completions", json=small).status_code == 200
    # A client announcing 1 GB gets its answer without sending a byte of it.
    with socket.create_connection(("127.0.0.1", limited.port), timeout=30) as raw:
        raw.sendall(f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: token {limited.token}"
                    "\r\nContent-Type: application/json\r\nContent-Length: 1000000000\r\n\r\n".encode())
        head = raw.recv(65536).decode("latin-1")
    assert head.startswith("HTTP/1.1 413")


def test_requests_beyond_the_queue_bound_get_503_with_retry_after(limited):
    """One engine slot (configured), one request waiting: a third concurrent request is told to come back."""
    long_chat = {"model": "ai/tiny-long", "max_tokens": 3000, "stream": True, "temperature": 0,
                 "messages": [{"role": "user", "content": "Count"}]}
    with httpx.Client(base_url=limited.url, headers=limited.headers, trust_env=False, timeout=60) as http:
        http.post("engines/_configure", json={"model": "ai/tiny-long", "runtime-flags": ["--parallel", "1"]})
        http.post("models/load", json={"model": "ai/tiny-long"}).raise_for_status()

    async def stream(client: httpx.AsyncClient) -> tuple[int, str | None, int | dict]:
        async with client.stream("POST", "v1/chat/completions", json=long_chat) as response:
            if response.status_code != 200:
                return response.status_code, response.headers.get("Retry-After"), json.loads(await response.aread())
            pieces = 0
            async for line in response.aiter_lines():
                pieces += line.startswith("data: {")
            return response.status_code, None, pieces

    async def both_inside(client: httpx.AsyncClient) -> None:
        """Until the runner counts two requests on the model (`ps`'s `requests`); the test's timeout bounds it."""
        while True:
            runners = (await client.get("engines/ps")).json()
            if any(r["model_name"] == "ai/tiny-long:latest" and r["requests"] == 2 for r in runners):
                return
            await asyncio.sleep(0.05)

    async def scenario():
        async with httpx.AsyncClient(base_url=limited.url, headers=limited.headers, trust_env=False,
                                     timeout=120) as client:
            first = asyncio.create_task(stream(client))
            second = asyncio.create_task(stream(client))
            await both_inside(client)  # one streams, one waits for the slot
            third = await stream(client)
            return third, await first, await second

    third, first, second = asyncio.run(scenario())
    assert third[0] == 503 and int(third[1]) >= 1 and "requests waiting already" in third[2]["error"]["message"]
    assert first[0] == 200 and second[0] == 200 and first[2] > 10 and second[2] > 10  # the others are unharmed


def test_pulls_beyond_the_bound_wait_their_turn(limited, registry, tiny_gguf, smollm2_file):
    """While SmolLM2 (~100 MB) downloads, a second pull says it waits, then runs; both succeed."""
    stamp = time.monotonic_ns()
    big, small = f"ai/limited-big-{stamp}", f"ai/limited-small-{stamp}"
    publish_gguf(registry.host, big, smollm2_file)
    publish_gguf(registry.host, small, tiny_gguf)

    async def pull(client: httpx.AsyncClient, name: str, started: asyncio.Event | None = None) -> list[dict]:
        events = []
        async with client.stream("POST", "models/create", json={"from": name}) as response:
            async for line in response.aiter_lines():
                if line.strip():
                    events.append(json.loads(line))
                    if started is not None:
                        started.set()
        return events

    async def scenario():
        async with httpx.AsyncClient(base_url=limited.url, headers=limited.headers, trust_env=False,
                                     timeout=120) as client:
            downloading = asyncio.Event()
            first = asyncio.create_task(pull(client, big, downloading))
            await downloading.wait()
            second = await pull(client, small)
            return await first, second

    first, second = asyncio.run(scenario())
    assert first[-1]["type"] == "success" and second[-1]["type"] == "success"
    assert "Waiting: 1 other pulls are downloading" in second[0]["message"]
    assert not any("Waiting" in e.get("message", "") for e in first)
