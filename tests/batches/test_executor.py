"""The executor in-process, on a real llama-server: each request answered once, a batch resumed from a cut-off
output sends only what is unanswered, it never holds every slot, and cancel stops it where it is."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest

from jupyter_modelrunner.batches.records import Batch, new_batch_id
from jupyter_modelrunner.inference import OWNER
from jupyter_modelrunner.service import ModelRunnerService

pytestmark = pytest.mark.timeout(300)
CHAT = "/v1/chat/completions"


def chat_line(custom_id: str, model: str = "ai/tiny", max_tokens: int = 6, **body: Any) -> bytes:
    request = {"custom_id": custom_id, "method": "POST", "url": CHAT,
               "body": {"model": model, "messages": [{"role": "user", "content": f"Say {custom_id}"}],
                        "max_tokens": max_tokens, "temperature": 0, **body}}
    return json.dumps(request).encode() + b"\n"


async def until(condition, timeout: float = 120.0):
    """Poll `condition` (on the loop) until it is truthy; fail if it never is."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {condition}")


async def finished(service: ModelRunnerService, batch_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        batch = await service.batches.get(batch_id, OWNER)
        if batch["status"] in ("completed", "failed", "cancelled"):
            return batch
        await asyncio.sleep(0.1)
    raise AssertionError(f"batch {batch_id} did not finish")


def run(store, work) -> Any:
    async def main() -> Any:
        service = ModelRunnerService.create(store)
        assert service.claim_store()
        try:
            return await work(service)
        finally:
            await service.shutdown()

    return asyncio.run(main())


def output_rows(service: ModelRunnerService, file_id: str) -> list[dict[str, Any]]:
    path = service.batches.files.data_path(file_id)
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_sixteen_chats_are_each_answered_once_in_the_output(live_store):
    async def work(service: ModelRunnerService) -> None:
        source = service.batches.files.add_bytes(b"".join(chat_line(f"row-{i}") for i in range(16)),
                                                 filename="in.jsonl", purpose="batch", owner=OWNER.name)
        created = await service.batches.create(OWNER, input_file_id=source.id, endpoint=CHAT)
        assert created["status"] == "validating"
        batch = await finished(service, created["id"])
        assert batch["status"] == "completed", batch
        assert batch["request_counts"] == {"total": 16, "completed": 16, "failed": 0}
        assert batch["error_file_id"] is None
        rows = output_rows(service, batch["output_file_id"])
        assert sorted(r["custom_id"] for r in rows) == sorted(f"row-{i}" for i in range(16))
        for row in rows:
            assert row["id"].startswith("batch_req_") and row["error"] is None
            assert row["response"]["status_code"] == 200 and row["response"]["request_id"]
            assert row["response"]["body"]["model"] == "ai/tiny"  # the name asked for, not the engine's
            assert row["response"]["body"]["choices"][0]["message"]["content"] is not None

    run(live_store, work)


def test_a_resumed_batch_cuts_the_partial_line_and_sends_only_the_unanswered(live_store):
    async def work(service: ModelRunnerService) -> None:
        source = service.batches.files.add_bytes(b"".join(chat_line(f"row-{i}") for i in range(10)),
                                                 filename="in.jsonl", purpose="batch", owner=OWNER.name)
        batch = Batch(new_batch_id(), CHAT, source.id, OWNER.name, OWNER.scope, status="in_progress",
                      request_counts={"total": 10, "completed": 0, "failed": 0},
                      reserved_output_file_id="file-" + "a" * 24, reserved_error_file_id="file-" + "b" * 24)
        service.batches.batches.create(batch)
        earlier = [{"id": f"batch_req_before{i}", "custom_id": f"row-{i}", "response": {"status_code": 200},
                    "error": None} for i in range(4)]
        with service.batches.batches.output_path(batch.id).open("wb") as handle:
            handle.write(b"".join(json.dumps(row).encode() + b"\n" for row in earlier))
            handle.write(b'{"id": "batch_req_cut", "custom_id": "row-4", "resp')  # a kill -9 mid-write
        assert await service.batches.resume() == [batch.id]
        done = await finished(service, batch.id)
        assert done["status"] == "completed" and done["request_counts"]["completed"] == 10
        rows = output_rows(service, done["output_file_id"])
        assert sorted(r["custom_id"] for r in rows) == sorted(f"row-{i}" for i in range(10))  # each once
        assert rows[:4] == earlier  # what was answered before is kept as it was
        sent = sum(sample.value for metric in service.metrics.requests.collect() for sample in metric.samples
                   if sample.labels.get("endpoint") == "batch/chat/completions" and sample.name.endswith("_total"))
        assert sent == 6  # the engine was asked only for the rows without an answer (row-4's was cut off)

    run(live_store, work)


def test_a_batch_never_holds_every_slot_and_cancel_stops_it_where_it_is(live_store):
    async def work(service: ModelRunnerService) -> None:
        lines = b"".join(chat_line(f"long-{i}", model="ai/tiny-long", max_tokens=4000) for i in range(24))
        source = service.batches.files.add_bytes(lines, filename="long.jsonl", purpose="batch", owner=OWNER.name)
        created = await service.batches.create(OWNER, input_file_id=source.id, endpoint=CHAT)
        runner = await until(lambda: next((r for r in service.runners() if r.share.background), None))
        seen = []
        for _ in range(40):
            seen.append((runner.share.background, runner.share.waiting))
            await asyncio.sleep(0.05)
        limit = runner.share.background_limit
        assert limit == runner.share.capacity - 1 >= 1
        assert max(b for b, _ in seen) <= limit and max(w for _, w in seen) <= 1  # one waits for the next slot
        assert max(b for b, _ in seen) == limit  # and the share it may take is used
        cancelling = await service.batches.cancel(created["id"], OWNER)
        assert cancelling["status"] == "cancelling"
        batch = await finished(service, created["id"])
        assert batch["status"] == "cancelled" and batch["cancelled_at"]
        assert batch["request_counts"]["completed"] < 24
        await until(lambda: runner.share.background == 0 and runner.share.waiting == 0)  # every slot given back

    run(live_store, work)


def test_a_bad_file_fails_naming_its_line_and_sends_nothing(live_store):
    async def work(service: ModelRunnerService) -> None:
        lines = chat_line("a") + chat_line("b", model="ai/not-pulled") + b'{"custom_id": "c"}\n'
        source = service.batches.files.add_bytes(lines, filename="bad.jsonl", purpose="batch", owner=OWNER.name)
        created = await service.batches.create(OWNER, input_file_id=source.id, endpoint=CHAT)
        batch = await finished(service, created["id"])
        assert batch["status"] == "failed" and batch["failed_at"]
        assert [(e["code"], e["line"]) for e in batch["errors"]["data"]] == [("model_not_found", 2),
                                                                          ("invalid_value", 3)]
        assert service.runners() == []  # nothing was loaded for it

    run(live_store, work)
