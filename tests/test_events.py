"""Engine lifecycle events and pull summaries on the Jupyter server's event bus (`jupyter_modelrunner.events`).

A real `jupyter server` with the extension; the test subscribes to its `/api/events/subscribe` websocket as
JupyterLab does, chats, unloads and pulls through the HTTP API, and checks every event of ours against the
schema the package ships.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import websocket
from jupyter_events import EventLogger
from jupyter_events.schema import EventSchema

from jupyter_modelrunner.events import SCHEMA_ID, SCHEMA_PATH, PullSummary, engine_event, register_schema
from jupyter_modelrunner.service import ModelRunnerService

from .support.jupyter import ServerProcess

SCHEMA = EventSchema(SCHEMA_PATH)


class EventSocket:
    """A subscriber of the server's event bus, keeping the model runner's events in arrival order."""

    def __init__(self, server: ServerProcess) -> None:
        self.socket = websocket.create_connection(
            f"ws://127.0.0.1:{server.port}/api/events/subscribe",
            header=[f"Authorization: token {server.token}"], timeout=30,
        )
        self.events: list[dict[str, Any]] = []

    def until(self, done: Callable[[dict[str, Any]], bool], timeout: float = 60) -> list[dict[str, Any]]:
        """Read events until one satisfies `done`; returns those read by this call (ours only), validated."""
        seen: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                pytest.fail(f"no matching event within {timeout} s; got {seen}")
            self.socket.settimeout(remaining)
            try:
                capsule = json.loads(self.socket.recv())
            except websocket.WebSocketTimeoutException:
                continue
            if capsule.pop("schema_id", None) != SCHEMA_ID:
                continue
            SCHEMA.validate(capsule)
            seen.append(capsule)
            self.events.append(capsule)
            if done(capsule):
                return seen

    def close(self) -> None:
        self.socket.close()


@pytest.fixture
def bus(jupyter) -> Iterator[EventSocket]:
    events = EventSocket(jupyter)
    yield events
    events.close()


def test_a_chat_that_loads_a_model_reports_loading_then_ready_and_unload_reports_unloaded(jupyter, bus):
    with jupyter.client() as http:
        http.post("engines/unload", json={"all": True}).raise_for_status()
        answer = http.post("engines/v1/chat/completions", json={
            "model": "ai/tiny", "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]})
        assert answer.status_code == 200, answer.text
        (runner,) = http.get("engines/ps").json()

        events = bus.until(lambda e: e["action"] == "ready")
        assert events[0]["action"] == "loading"
        assert {e["action"] for e in events} <= {"loading", "ready"}
        first, ready = events[0], events[-1]
        assert first["model"] == runner["model_id"].removeprefix("sha256:")[:12]
        assert first["engine"] == runner["backend_name"] == ready["engine"] == "llama.cpp"
        assert first["reason"] == runner["reason"]
        assert ready["model"] == first["model"]
        assert ready["model_id"] == runner["model_id"]
        assert ready["model_name"] == runner["model_name"]
        assert ready["device"] == runner["device"]
        assert ready["context_size"] == runner["context_size"] and ready["slots"] == runner["slots"]
        assert ready["memory"] == runner["memory"] > 0
        assert ready["keep_alive"] == runner["keep_alive"] == 600
        ticks = [e for e in events if "elapsed" in e]  # a tiny model loads in well under the first second's tick
        assert all(e["action"] == "loading" for e in ticks)

        http.post("engines/unload", json={"models": ["ai/tiny"]}).raise_for_status()
        (unloaded,) = bus.until(lambda e: e["action"] == "unloaded", timeout=30)
        assert unloaded["model"] == ready["model"] and unloaded["engine"] == "llama.cpp"
        assert unloaded["why"] == "unloaded"
        # The scheduler no longer lists the runner, but the event still says which model it was.
        assert unloaded["model_id"] == runner["model_id"] and unloaded["model_name"] == runner["model_name"]


def test_a_pull_reports_summaries_ending_in_succeeded(jupyter, bus):
    with jupyter.client() as http:
        started = time.monotonic()
        with http.stream("POST", "models/create", json={"from": "ai/tiny-st"}) as response:
            lines = [json.loads(line) for line in response.iter_lines() if line]
        elapsed = time.monotonic() - started
        assert lines[-1]["type"] == "success", lines[-1]
        events = bus.until(lambda e: e["action"] == "pull" and e["state"] != "progress" and e["state"] != "started")

    pulls = [e for e in events if e["action"] == "pull"]
    assert {e["model"] for e in pulls} == {"ai/tiny-st"}
    assert pulls[0]["state"] == "started" and pulls[-1]["state"] == "succeeded"
    assert all(e["state"] == "progress" for e in pulls[1:-1])
    # Summaries, not chunks: at most one progress event a second of the pull.
    assert len(pulls) - 2 <= elapsed + 1
    assert pulls[-1]["fraction"] == 1.0
    assert pulls[-1]["model_id"] == lines[-1]["model"]["id"]
    assert pulls[-1]["model_name"].endswith("ai/tiny-st:latest")


def test_a_failed_pull_reports_failed_with_the_message(jupyter, bus):
    with jupyter.client() as http:
        response = http.post("models/create", json={"from": "ai/does-not-exist"})
        assert response.status_code >= 400
    events = bus.until(lambda e: e["action"] == "pull" and e["state"] == "failed")
    assert [e["state"] for e in events if e["action"] == "pull"] == ["started", "failed"]
    assert "does-not-exist" in events[-1]["message"]


def test_every_change_to_the_models_is_announced_whoever_makes_it(jupyter, bus, tiny_gguf):
    """Packaging, tagging and removing (by any client: the CLI and kernels use these routes too) reach every sidebar
    at once, instead of at its next poll."""
    with jupyter.client() as http:
        answer = http.post("models/package", json={"tag": "ai/tiny-announced", "gguf": [str(tiny_gguf)]})
        assert answer.status_code == 201, answer.text
        (added,) = bus.until(lambda e: e["action"] == "models")
        http.post("models/ai/tiny-announced/tag", json={"target": "ai/tiny-announced:v2"}).raise_for_status()
        (tagged,) = bus.until(lambda e: e["action"] == "models")
        http.delete("models/ai/tiny-announced:v2").raise_for_status()
        (untagged,) = bus.until(lambda e: e["action"] == "models")
        http.delete("models/ai/tiny-announced").raise_for_status()
        changes = bus.until(lambda e: e["action"] == "models")
    model_id = answer.json()["id"]
    assert (added["change"], added["model_id"]) == ("added", model_id)
    assert added["model"].endswith("ai/tiny-announced:latest")
    assert tagged["change"] == "tagged" and untagged["change"] == "untagged"
    assert (changes[-1]["change"], changes[-1]["model_id"]) == ("removed", model_id)  # its last name went


# -- the pieces, without a server ------------------------------------------------------------------------------

def test_the_schema_registers_once_per_logger():
    logger = EventLogger()
    register_schema(logger)
    register_schema(logger)
    assert SCHEMA_ID in logger.schemas
    assert logger.schemas.get(SCHEMA_ID).version == "1"


def test_pull_summaries_are_rate_limited_and_end_exactly_once():
    now = [0.0]
    sent: list[dict[str, Any]] = []
    summary = PullSummary("ai/big", sent.append, clock=lambda: now[0])
    for step in range(1, 41):  # 40 chunks over 2 seconds
        now[0] = step * 0.05
        summary({"type": "progress", "message": "…", "total": 400, "pulled": step * 10})
    # The distribution layer's success, then the service's with the model: one `succeeded`, at the stream's end.
    summary({"type": "success", "message": "Model ai/big pulled successfully", "total": 400, "pulled": 400})
    summary({"type": "success", "message": "Pulled ai/big", "model": {"id": "sha256:" + "ab" * 32,
                                                                     "tags": ["ai/big:latest"]}})
    assert [e["state"] for e in sent] == ["started", "progress", "progress"]
    summary(None)
    summary(None)
    summary({"type": "progress", "total": 400, "pulled": 400})
    assert [e["state"] for e in sent] == ["started", "progress", "progress", "succeeded"]
    assert [e["fraction"] for e in sent] == [None, 0.5, 1.0, 1.0]
    assert sent[-1]["model_name"] == "ai/big:latest" and sent[-1]["message"] == "Pulled ai/big"
    for event in sent:
        SCHEMA.validate(event)


def test_a_pull_ends_as_its_last_outcome_says_or_cancelled():
    sent: list[dict[str, Any]] = []
    summary = PullSummary("ai/big", sent.append)
    summary({"type": "progress", "message": "…", "total": 0, "pulled": 0})
    summary(None)
    assert [(e["state"], e["fraction"]) for e in sent] == [("started", None), ("cancelled", None)]

    failed: list[dict[str, Any]] = []
    summary = PullSummary("ai/big", failed.append)
    summary({"type": "success", "message": "Model ai/big pulled successfully"})
    summary({"type": "error", "message": "No space left on device", "status": 507})
    summary(None)
    assert [e["state"] for e in failed] == ["started", "failed"]
    assert failed[-1]["message"] == "No space left on device"

    stopped: list[dict[str, Any]] = []
    summary = PullSummary("ai/big", stopped.append)
    summary({"type": "error", "message": "Pull of ai/big cancelled; the downloaded parts are kept.", "status": 499})
    summary(None)
    assert [e["state"] for e in stopped] == ["started", "cancelled"]
    for event in sent + failed + stopped:
        SCHEMA.validate(event)


def test_engine_events_take_the_bus_form():
    status = {"backend_name": "llama.cpp", "model_name": "ai/tiny:latest", "model_id": "sha256:" + "c0" * 32,
              "mode": "completion", "device": "cpu", "reason": "…", "state": "ready", "loading": False,
              "in_use": False, "requests": 0, "last_used": 0, "keep_alive": 300.0, "expires_at": None, "memory": 1024,
              "pid": 1,
              "context_size": 512, "context_source": "training", "slots": None, "implementation": "llama-server"}
    ready = engine_event("ready", status)
    assert ready is not None
    assert ready["model"] == "c0" * 6 and ready["engine"] == "llama.cpp" and ready["slots"] is None
    assert "pid" not in ready and "in_use" not in ready
    crashed = engine_event("crashed", {"model": "c0" * 6, "engine": "vllm", "exit_code": -9})
    tick = engine_event("loading", {"model": "c0" * 6, "engine": "vllm", "elapsed": 3.0, "log": "INFO …"})
    for event in (ready, crashed, tick):
        SCHEMA.validate(event)
    assert engine_event("something-new", {}) is None


def test_transfer_watchers_see_each_event_then_the_end(store, seeded):
    async def main() -> list[tuple[str, str, dict[str, Any] | None]]:
        service = ModelRunnerService.create(store)
        seen: list[tuple[str, str, dict[str, Any] | None]] = []
        stop = service.watch_transfers(lambda mode, name: lambda event: seen.append((mode, name, event)))
        try:
            events = [event async for event in service.pull("ai/tiny")]
            assert [e for _, _, e in seen] == [*events, None]
            assert {(mode, name) for mode, name, _ in seen} == {("pull", "ai/tiny")}

            seen.clear()
            stream = service.pull("ai/tiny-st")
            first = await stream.__anext__()
            await stream.aclose()  # the client went away
            assert [e for _, _, e in seen] == [first, None]
        finally:
            stop()
            await service.shutdown()
        assert not service.transfers.watchers

    asyncio.run(main())
