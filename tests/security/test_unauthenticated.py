"""Attacks that need no credential, and bodies built to break the parser, against the real in-process server.

A request without credentials must cost the server nothing: no body kept (a large or endless upload is cut off,
not buffered), no activity (which would keep an idle runner, and its engines, up for whoever keeps knocking). And a
body nested 100,000 deep must be a 400 in the route's own error shape, not a RecursionError and a 500.

These tests run the server in this process (pytest-jupyter) to read `service.active` and `last_activity` directly.
pytest-jupyter's async test runner is a conftest-level hook this folder does not load, so each test drives the
server's loop itself (`jp_asyncio_loop.run_until_complete`).
"""

from __future__ import annotations

import asyncio
import json

import pytest
from pytest_jupyter.jupyter_core import *  # noqa: F403
from pytest_jupyter.jupyter_server import *  # noqa: F403

from jupyter_modelrunner.api.base import MAX_JSON_DEPTH, SERVICE_SETTING
from jupyter_modelrunner.distribution import pull
from jupyter_modelrunner.store import Store

pytestmark = pytest.mark.timeout(300)
CHAT = "modelrunner/v1/chat/completions"


@pytest.fixture
def runner_store(tmp_path, registry, seeded) -> Store:
    store = Store(tmp_path / "runner-store", registry=registry.host)
    pull("ai/tiny", store, registry=registry.host)
    return store


@pytest.fixture
def jp_server_config(runner_store, registry) -> dict:
    return {"ServerApp": {"jpserver_extensions": {"jupyter_modelrunner": True}},
            "ModelRunner": {"store_path": str(runner_store.root), "default_registry": registry.host}}


@pytest.fixture
def service(jp_serverapp, http_server_client):
    """The model runner service of the in-process server (started by `http_server_client`)."""
    return jp_serverapp.web_app.settings[SERVICE_SETTING]


async def _read_answer(reader: asyncio.StreamReader, service, seen_active: list) -> bytes:
    """Everything the server sends until it closes or the head and body of one answer are in; or, at once, nothing
    when the service counts the request as activity (noted in `seen_active`: the attack kept the runner busy)."""
    data = b""
    while True:
        seen_active += list(service.active.values())
        if seen_active:
            return data
        try:
            chunk = await asyncio.wait_for(reader.read(65536), 0.05)  # a poll, not a bound: we loop until an answer
        except TimeoutError:
            continue
        if not chunk:
            return data
        data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                       if line.lower().startswith(b"content-length:")), None)
        if length is not None and len(body) >= length:
            return data


def test_an_unauthenticated_upload_is_refused_at_the_headers_and_is_no_activity(jp_asyncio_loop, jp_http_port,
                                                                             jp_base_url, service):
    """A chat POST announcing 60 MiB (under the body limit) without credentials: the 403 comes after the headers
    alone, in OpenAI's shape, the connection closes, and the service never counted it as work."""
    before = service.last_activity

    async def attack() -> tuple[bytes, list, int]:
        reader, writer = await asyncio.open_connection("127.0.0.1", jp_http_port)
        writer.write(f"POST {jp_base_url}{CHAT} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {60 * 1024**2}\r\n\r\n".encode() + b'{"model": "ai/tiny", "messages": [')
        await writer.drain()
        seen: list = []
        answer = await _read_answer(reader, service, seen)
        sent = 0
        try:  # keep sending as an attacker would: the server has stopped reading
            for _ in range(960):
                writer.write(b"x" * 65536)
                await writer.drain()
                sent += 65536
        except (ConnectionError, OSError):
            pass
        writer.close()
        return answer, seen, sent

    answer, seen, sent = jp_asyncio_loop.run_until_complete(attack())
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 403"), head
    assert "Authentication required" in json.loads(body)["error"]["message"]
    assert not seen and not service.active
    assert service.last_activity == before
    assert sent < 960 * 65536  # the server closed the connection: the rest of the upload went nowhere


def test_a_streamed_unauthenticated_upload_is_cut_off_early(jp_asyncio_loop, jp_http_port, jp_base_url, service):
    """The same with a chunked body, whose length nobody announced: answered at once, the connection closed while
    the client still has most of 64 MiB to send."""
    before = service.last_activity

    async def attack() -> tuple[bytes, list, int]:
        reader, writer = await asyncio.open_connection("127.0.0.1", jp_http_port)
        writer.write(f"POST {jp_base_url}{CHAT} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     "Transfer-Encoding: chunked\r\n\r\n".encode())
        await writer.drain()
        seen: list = []
        answer = await _read_answer(reader, service, seen)
        sent = 0
        try:
            while sent < 64 * 1024**2:
                writer.write(b"10000\r\n" + b"x" * 65536 + b"\r\n")
                await writer.drain()
                sent += 65536
        except (ConnectionError, OSError):
            pass
        writer.close()
        return answer, seen, sent

    answer, seen, sent = jp_asyncio_loop.run_until_complete(attack())
    assert answer.startswith(b"HTTP/1.1 403"), answer[:200]
    assert not seen and service.last_activity == before
    assert sent < 64 * 1024**2


@pytest.mark.parametrize(("path", "shape"), [
    (CHAT, "openai"), ("modelrunner/api/chat", "ollama"), ("modelrunner/v1/messages", "anthropic")])
def test_a_small_unauthenticated_request_gets_the_routes_error_shape(jp_fetch, jp_asyncio_loop, service, path,
                                                                      shape):
    before = service.last_activity
    response = jp_asyncio_loop.run_until_complete(jp_fetch(
        *path.split("/"), method="POST", body=json.dumps({"model": "ai/tiny", "messages": []}),
        headers={"Authorization": ""}, raise_error=False))
    assert response.code == 403
    assert_error_shape(json.loads(response.body), shape)
    assert service.last_activity == before and not service.active


def assert_error_shape(body: dict, shape: str) -> None:
    if shape == "openai":
        assert isinstance(body["error"]["message"], str)
    elif shape == "ollama":
        assert isinstance(body["error"], str)
    else:
        assert body["type"] == "error" and isinstance(body["error"]["message"], str)


# -- bodies built to break the parser ---------------------------------------------------------------------------


@pytest.mark.parametrize(("path", "shape"), [
    (CHAT, "openai"), ("modelrunner/api/chat", "ollama"), ("modelrunner/v1/messages", "anthropic")])
@pytest.mark.parametrize("depth", [100_000, MAX_JSON_DEPTH + 1])
def test_deeply_nested_json_is_a_400_in_the_routes_error_shape(jp_fetch, jp_asyncio_loop, service, path, shape,
                                                               depth):
    nested = "[" * depth + "]" * depth
    body = ('{"model": "ai/tiny", "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}], "metadata": '
            + nested + "}")
    response = jp_asyncio_loop.run_until_complete(jp_fetch(*path.split("/"), method="POST", body=body,
                                                           raise_error=False))
    assert response.code == 400, response.body[:300]
    answer = json.loads(response.body)
    assert_error_shape(answer, shape)
    assert "deep" in json.dumps(answer)
