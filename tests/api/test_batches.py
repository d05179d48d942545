"""OpenAI's Batch API, driven by the real `openai` SDK against real servers and a real llama-server: requests
answered once each under their custom_ids, bad files failed naming the line, cancel, interactive requests served
first, and batches that survive a restart and a kill -9 of the runner."""

from __future__ import annotations

import json
import shutil
import signal
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from jupyter_modelrunner.batches.records import UNFINISHED
from jupyter_modelrunner.keys import KeyRing

from ..conftest import TEST_API_KEY, server_env
from ..support.jupyter import ServerProcess
from ..support.waiting import wait_for

pytestmark = pytest.mark.timeout(600)
CHAT, EMBEDDINGS = "/v1/chat/completions", "/v1/embeddings"
ENDED = ("completed", "failed", "cancelled", "expired")


def jsonl(rows: list[dict[str, Any]]) -> bytes:
    return b"".join(json.dumps(row).encode() + b"\n" for row in rows)


def chats(count: int, *, model: str = "ai/tiny", max_tokens: int = 8, prefix: str = "row") -> list[dict[str, Any]]:
    return [{"custom_id": f"{prefix}-{i}", "method": "POST", "url": CHAT,
             "body": {"model": model, "max_tokens": max_tokens, "temperature": 0,
                      "messages": [{"role": "user", "content": f"Count to {i}"}]}} for i in range(count)]


def long_chats(count: int, max_tokens: int = 3000) -> list[dict[str, Any]]:
    """Requests that take seconds each: the tiny model never picks its end token at temperature 0."""
    return chats(count, model="ai/tiny-long", max_tokens=max_tokens, prefix="long")


def submit(client: openai.OpenAI, rows: list[dict[str, Any]], endpoint: str = CHAT, **options: Any) -> Any:
    source = client.files.create(file=("requests.jsonl", jsonl(rows)), purpose="batch")
    return client.batches.create(input_file_id=source.id, endpoint=endpoint, completion_window="24h", **options)


def finished(client: openai.OpenAI, batch_id: str, timeout: float = 400) -> Any:
    def ended() -> Any:
        batch = client.batches.retrieve(batch_id)
        return batch if batch.status in ENDED else None

    return wait_for(ended, timeout=timeout, interval=0.25)


def output(client: openai.OpenAI, file_id: str | None) -> list[dict[str, Any]]:
    if file_id is None:
        return []
    return [json.loads(line) for line in client.files.content(file_id).text.splitlines()]


def ps(server: ServerProcess, model: str) -> dict[str, Any] | None:
    with server.client() as http:
        return next((r for r in http.get("engines/ps").json() if model in str(r.get("model_name"))), None)


@pytest.fixture(scope="module")
def sdk(jupyter) -> openai.OpenAI:
    return openai.OpenAI(base_url=jupyter.url + "v1", api_key=jupyter.token, max_retries=0)


def test_sixteen_chat_requests_complete_with_their_custom_ids(jupyter, sdk):
    client = openai.OpenAI(base_url=jupyter.url + "engines/v1", api_key=TEST_API_KEY, max_retries=0)
    source = client.files.create(file=("requests.jsonl", jsonl(chats(16))), purpose="batch")
    assert source.purpose == "batch" and source.bytes == len(jsonl(chats(16))) and source.filename == "requests.jsonl"
    assert client.files.retrieve(source.id).id == source.id
    assert source.id in [f.id for f in client.files.list()]
    created = client.batches.create(input_file_id=source.id, endpoint=CHAT, completion_window="24h",
                                    metadata={"job": "sixteen"})
    assert created.object == "batch" and created.status == "validating" and created.metadata == {"job": "sixteen"}
    batch = finished(client, created.id)
    assert batch.status == "completed", batch
    assert (batch.request_counts.total, batch.request_counts.completed, batch.request_counts.failed) == (16, 16, 0)
    assert batch.in_progress_at and batch.finalizing_at and batch.completed_at and batch.error_file_id is None
    rows = output(client, batch.output_file_id)
    assert sorted(r["custom_id"] for r in rows) == sorted(f"row-{i}" for i in range(16))
    for row in rows:
        assert row["error"] is None and row["response"]["status_code"] == 200
        assert row["response"]["body"]["choices"][0]["message"]["content"] is not None
        assert row["response"]["body"]["model"] == "ai/tiny"
    assert client.files.retrieve(batch.output_file_id).purpose == "batch_output"
    assert created.id in [b.id for b in client.batches.list(limit=100)]


def test_an_embeddings_batch_answers_each_input(sdk):
    rows = [{"custom_id": f"text-{i}", "method": "POST", "url": EMBEDDINGS,
             "body": {"model": "ai/tiny", "input": f"text number {i}"}} for i in range(6)]
    batch = finished(sdk, submit(sdk, rows, EMBEDDINGS).id)
    assert batch.status == "completed" and batch.request_counts.completed == 6
    answers = {r["custom_id"]: r["response"]["body"] for r in output(sdk, batch.output_file_id)}
    assert sorted(answers) == [f"text-{i}" for i in range(6)]
    assert all(len(body["data"][0]["embedding"]) == 64 for body in answers.values())  # the tiny model's width


def test_a_bad_input_file_fails_with_the_line_named(sdk):
    rows = chats(3)
    rows[1]["body"] = {"model": "ai/tiny", "max_tokens": 4}  # no messages: the route would refuse it
    rows[2]["url"] = EMBEDDINGS
    batch = finished(sdk, submit(sdk, rows).id)
    assert batch.status == "failed" and batch.failed_at and batch.output_file_id is None
    named = [(e.code, e.line) for e in batch.errors.data]
    assert named == [("invalid_value", 2), ("mismatched_endpoint", 3)]
    assert "messages" in batch.errors.data[0].message


def test_a_request_the_engine_refuses_goes_to_the_error_file_and_the_rest_complete(sdk):
    rows = chats(3)
    rows[1]["body"]["messages"][0]["content"] = "word " * 40_000  # more than the model's context
    batch = finished(sdk, submit(sdk, rows).id)
    assert batch.status == "completed"
    assert (batch.request_counts.completed, batch.request_counts.failed) == (2, 1)
    [failure] = output(sdk, batch.error_file_id)
    assert failure["custom_id"] == "row-1" and failure["response"]["status_code"] >= 400
    assert failure["response"]["body"]["error"]["message"]


def test_files_for_another_purpose_and_uploads_that_are_not_forms_are_refused(sdk, jupyter):
    with pytest.raises(openai.BadRequestError, match="purpose must be"):
        sdk.files.create(file=("x.jsonl", b"{}\n"), purpose="fine-tune")
    with httpx.Client(base_url=jupyter.url, headers=jupyter.headers, trust_env=False) as http:
        answer = http.post("v1/files", json={"file": "x"})
        assert answer.status_code == 400 and "multipart/form-data" in answer.json()["error"]["message"]
        missing = http.post("v1/files", files={"purpose": (None, "batch")})
        assert missing.status_code == 400 and "no `file` part" in missing.json()["message"]
        wrong = http.post("v1/batches", json={"input_file_id": "file-" + "0" * 24, "endpoint": "/v1/models/pull"})
        assert wrong.status_code == 400
    with pytest.raises(openai.BadRequestError, match="completion_window"):
        sdk.batches.create(input_file_id="file-" + "0" * 24, endpoint=CHAT, completion_window="1h")  # type: ignore


def test_cancel_stops_a_batch_of_long_requests(jupyter, sdk):
    created = submit(sdk, long_chats(24))
    wait_for(lambda: (ps(jupyter, "tiny-long") or {}).get("background_requests"), timeout=120)
    cancelling = sdk.batches.cancel(created.id)
    assert cancelling.status in ("cancelling", "cancelled")
    batch = finished(sdk, created.id)
    assert batch.status == "cancelled" and batch.cancelling_at and batch.cancelled_at
    assert batch.request_counts.completed < 24
    assert len(output(sdk, batch.output_file_id)) == batch.request_counts.completed
    wait_for(lambda: (ps(jupyter, "tiny-long") or {}).get("background_requests") == 0, timeout=60)
    assert sdk.batches.cancel(batch.id).status == "cancelled"  # asked again: answered as it is
    done = finished(sdk, submit(sdk, chats(1)).id)
    with pytest.raises(openai.ConflictError, match="only a batch validating or in progress"):
        sdk.batches.cancel(done.id)


def test_an_interactive_chat_gets_its_first_token_while_batch_rows_are_in_flight(jupyter, sdk):
    created = submit(sdk, long_chats(24))
    runner = wait_for(lambda: (r := ps(jupyter, "tiny-long")) and r["background_requests"] == r["background_slots"]
                      and r, timeout=120)
    assert runner["background_slots"] >= 1
    stream = sdk.chat.completions.create(model="ai/tiny-long", messages=[{"role": "user", "content": "Hi"}],
                                         max_tokens=4, temperature=0, stream=True)
    first = next(chunk for chunk in stream if chunk.choices and chunk.choices[0].delta.content)
    during = ps(jupyter, "tiny-long")
    assert first.choices[0].delta.content
    assert 1 <= during["background_requests"] <= during["background_slots"]  # the batch still runs, one slot free
    stream.close()
    sdk.batches.cancel(created.id)
    assert finished(sdk, created.id).status == "cancelled"


# -- restarts ---------------------------------------------------------------------------------------------------


@pytest.fixture
def own_store(live_store, tmp_path) -> Path:
    """A copy of the module's store, for a runner of the test's own (no lease, locks or batches of the original)."""
    copy = tmp_path / "store"
    shutil.copytree(live_store.root, copy, symlinks=True,
                    ignore=shutil.ignore_patterns("runner", "locks", "batches", "files"))
    return copy


def standalone(tmp_path: Path, store: Path, registry: Any, name: str) -> ServerProcess:
    workdir = tmp_path / name
    workdir.mkdir()
    return ServerProcess.standalone(workdir, server_env(workdir, store, registry.host))


def output_lines(store: Path, batch_id: str) -> int:
    path = store / "batches" / batch_id / "output.jsonl"
    return path.read_bytes().count(b"\n") if path.exists() else 0


@pytest.mark.parametrize("how", ["stopped", "killed"])
def test_a_batch_survives_its_runner_and_each_row_is_answered_once(own_store, tmp_path, registry, how):
    first = standalone(tmp_path, own_store, registry, "first").start()
    try:
        client = openai.OpenAI(base_url=first.url + "v1", api_key=TEST_API_KEY, max_retries=0)
        created = submit(client, long_chats(40, max_tokens=600))
        wait_for(lambda: output_lines(own_store, created.id) >= 2, timeout=300)  # some rows done...
        if how == "killed":
            first.process.send_signal(signal.SIGKILL)  # nothing runs on its way out
            first.process.wait(30)
        else:
            first.stop()
    finally:
        first.stop()
    done_before = output_lines(own_store, created.id)
    assert 2 <= done_before < 40  # ...not all
    record = json.loads((own_store / "batches" / created.id / "batch.json").read_text())
    assert record["status"] in UNFINISHED

    with standalone(tmp_path, own_store, registry, "second") as second:
        client = openai.OpenAI(base_url=second.url + "v1", api_key=TEST_API_KEY, max_retries=0)
        batch = finished(client, created.id)
        assert batch.status == "completed", batch
        assert batch.request_counts.completed == 40 and batch.request_counts.failed == 0
        counted = Counter(row["custom_id"] for row in output(client, batch.output_file_id))
        assert counted == Counter(f"long-{i}" for i in range(40))  # every row, each exactly once


def test_through_a_server_that_relays_to_the_owner_each_key_keeps_its_own_batches(own_store, tmp_path, registry):
    """A second server on the store (JupyterLab beside a `serve`) writes files to the store itself and relays batch
    requests to the owner, saying which key its client used: the batch is that key's, not every relayed key's."""
    with standalone(tmp_path, own_store, registry, "owner") as owner:
        workdir = tmp_path / "relay"
        workdir.mkdir()
        with ServerProcess.jupyter_server(workdir, server_env(workdir, own_store, registry.host)) as relay:
            client = openai.OpenAI(base_url=relay.url + "v1", api_key=TEST_API_KEY, max_retries=0)
            batch = finished(client, submit(client, chats(2)).id)
            assert batch.status == "completed" and batch.request_counts.completed == 2
            assert sorted(r["custom_id"] for r in output(client, batch.output_file_id)) == ["row-0", "row-1"]
            record = json.loads((own_store / "batches" / batch.id / "batch.json").read_text())
            assert record["owner"] == "key:key 1 from the configuration"  # the key's name, as the owner sees it
            other = KeyRing(Path(relay.env["JUPYTER_CONFIG_DIR"]) / "modelrunner" / "keys.json").create("other")
            stranger = openai.OpenAI(base_url=relay.url + "v1", api_key=other, max_retries=0)
            with pytest.raises(openai.NotFoundError):  # relayed too, yet not the same caller
                stranger.batches.retrieve(batch.id)
            assert owner.process.poll() is None
