"""Attacks on the Files and Batch APIs: an inference key reaching another caller's files and batches, ids that are
paths, uploads past the cap, input lines aimed at other routes or hosts, and lines that try to pin or resize a model
beyond a key's policy."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from jupyter_modelrunner.keys import KeyRing

from ..conftest import TEST_API_KEY, server_env
from ..support.jupyter import ServerProcess
from ..support.waiting import wait_for

pytestmark = pytest.mark.timeout(300)
CHAT = "/v1/chat/completions"


def jsonl(rows: list[dict[str, Any]]) -> bytes:
    return b"".join(json.dumps(row).encode() + b"\n" for row in rows)


def chat(custom_id: str, url: str = CHAT, **body: Any) -> dict[str, Any]:
    return {"custom_id": custom_id, "method": "POST", "url": url,
            "body": {"model": "ai/tiny", "max_tokens": 4, "messages": [{"role": "user", "content": "Hi"}], **body}}


def finished(client: openai.OpenAI, batch_id: str) -> Any:
    def ended() -> Any:
        batch = client.batches.retrieve(batch_id)
        return batch if batch.status in ("completed", "failed", "cancelled") else None

    return wait_for(ended, timeout=240, interval=0.25)


def sdk(server: ServerProcess, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "v1", api_key=key, max_retries=0)


@pytest.fixture(scope="module")
def mallory_key(jupyter) -> str:
    """A second inference key on the server (made as `jupyter modelrunner key create mallory` makes it)."""
    return KeyRing(Path(jupyter.env["JUPYTER_CONFIG_DIR"]) / "modelrunner" / "keys.json").create("mallory")


def test_an_inference_key_cannot_reach_another_callers_files_or_batches(jupyter, mallory_key):
    alice, mallory, token = sdk(jupyter, TEST_API_KEY), sdk(jupyter, mallory_key), sdk(jupyter, jupyter.token)
    source = alice.files.create(file=("mine.jsonl", jsonl([chat("a"), chat("b")])), purpose="batch")
    batch = finished(alice, alice.batches.create(input_file_id=source.id, endpoint=CHAT, completion_window="24h").id)
    assert batch.status == "completed" and batch.output_file_id
    for file_id in (source.id, batch.output_file_id):
        for attempt in (mallory.files.retrieve, mallory.files.content, mallory.files.delete):
            with pytest.raises(openai.NotFoundError, match="No such file"):
                attempt(file_id)
    for attempt in (lambda: mallory.batches.retrieve(batch.id), lambda: mallory.batches.cancel(batch.id)):
        with pytest.raises(openai.NotFoundError, match="No such batch"):
            attempt()
    with pytest.raises(openai.NotFoundError):  # nor run a batch on alice's file (and read its answers)
        mallory.batches.create(input_file_id=source.id, endpoint=CHAT, completion_window="24h")
    assert source.id not in [f.id for f in mallory.files.list()]
    assert batch.id not in [b.id for b in mallory.batches.list(limit=100)]
    # ...nor the token's: a key sees its own only; the token (the server's user) sees every caller's
    theirs = token.files.create(file=("token.jsonl", jsonl([chat("t")])), purpose="batch")
    with pytest.raises(openai.NotFoundError):
        alice.files.retrieve(theirs.id)
    assert token.batches.retrieve(batch.id).id == batch.id
    assert token.files.content(batch.output_file_id).text == alice.files.content(batch.output_file_id).text
    assert {source.id, theirs.id} <= {f.id for f in token.files.list()}
    # alice's file is still there, whatever mallory tried
    assert alice.files.retrieve(source.id).bytes == len(jsonl([chat("a"), chat("b")]))


#: Ids that are paths, percent-encoded once or twice (a bare `..` never gets here: the client resolves it away).
TRICKS = ["..%2Fsentinel.json", "%2e%2e%2fsentinel.json", "%2e%2e", "%2Fetc%2Fpasswd", "%252e%252e%252fsentinel.json",
          "file-0123456789abcdef01234567%2F..%2F..%2Fsentinel.json", "file-" + "a" * 3000,
          "file-0123456789abcdef0123456", "sentinel.json", "file-0123456789abcdef01234567.json", "C:%5Cwindows"]


@pytest.mark.parametrize("trick", TRICKS)
def test_ids_with_path_tricks_touch_nothing_outside_the_files_folder(jupyter, live_store, trick):
    sentinel = live_store.root / "sentinel.json"
    sentinel.write_text('{"id": "file-0123456789abcdef01234567", "owner": "token"}')
    inside = live_store.root / "files" / "sentinel.json"
    inside.write_text("not a file of the API")
    with httpx.Client(base_url=jupyter.url, headers=jupyter.headers, trust_env=False, timeout=30) as http:
        for method, path in (("GET", f"v1/files/{trick}"), ("GET", f"v1/files/{trick}/content"),
                             ("DELETE", f"v1/files/{trick}"), ("GET", f"engines/v1/files/{trick}/content"),
                             ("GET", f"v1/batches/{trick}"), ("POST", f"v1/batches/{trick}/cancel")):
            answer = http.request(method, path)
            assert answer.status_code in (400, 404), (method, path, answer.status_code)
            assert answer.json()["error"]["message"], (method, path)
    assert sentinel.read_text().startswith('{"id"') and inside.read_text() == "not a file of the API"
    inside.unlink()


@pytest.fixture(scope="module")
def small_cap(tmp_path_factory, registry):
    """`serve` on an empty store, taking batch files of at most 4 KiB."""
    workdir = tmp_path_factory.mktemp("small-cap")
    store = workdir / "store"
    with ServerProcess.standalone(workdir, server_env(workdir, store, registry.host),
                                  "--ModelRunner.max_batch_file_bytes=4096") as server:
        yield server, store


@pytest.mark.parametrize("how", ["announced", "counted", "chunked"])
def test_an_upload_over_the_cap_is_refused_without_being_stored(small_cap, how):
    server, store = small_cap
    boundary = "cap-test-boundary"
    size = {"announced": 200_000, "counted": 20_000, "chunked": 20_000}[how]
    body = (f'--{boundary}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="big.jsonl"\r\n'
            f"Content-Type: application/jsonl\r\n\r\n").encode() + b"x" * size + f"\r\n--{boundary}--\r\n".encode()
    headers = {**server.headers, "Content-Type": f"multipart/form-data; boundary={boundary}"}
    content: Any = body if how != "chunked" else iter([body[i:i + 4096] for i in range(0, len(body), 4096)])
    answer = httpx.post(server.url + "v1/files", content=content, headers=headers, trust_env=False, timeout=60)
    assert answer.status_code == 413 and "max_batch_file_bytes" in answer.json()["error"]["message"]
    assert [p.name for p in (store / "files").iterdir()] == []  # no file, no partial upload
    client = sdk(server, server.token)
    assert list(client.files.list()) == []
    small = client.files.create(file=("small.jsonl", b"{}\n" * 100), purpose="batch")  # under the cap: kept
    client.files.delete(small.id)


def test_lines_aimed_at_other_routes_or_hosts_are_refused_in_validation(jupyter):
    client = sdk(jupyter, TEST_API_KEY)
    urls = ["/v1/models/pull", "/models/create", "http://127.0.0.1:9/v1/chat/completions",
            "//evil.example/v1/chat/completions", "/v1/chat/completions/../../models/create",
            "/engines/v1/chat/completions", "/v1/chat/completions?stream=true", "/api/chat", "/v1/batches"]
    rows = [chat("ok"), *(chat(f"bad-{i}", url=url) for i, url in enumerate(urls))]
    source = client.files.create(file=("routes.jsonl", jsonl(rows)), purpose="batch")
    batch = finished(client, client.batches.create(input_file_id=source.id, endpoint=CHAT, completion_window="24h").id)
    assert batch.status == "failed" and batch.request_counts.completed == 0
    assert [(e.code, e.line) for e in batch.errors.data] == [("invalid_url", line) for line in range(2, 2 + len(urls))]
    with pytest.raises(openai.BadRequestError):  # nor is a batch's endpoint anything but the three
        client.batches.create(input_file_id=source.id, endpoint="/v1/models/pull", completion_window="24h")  # type: ignore[arg-type]


def test_a_batch_input_must_be_a_file_uploaded_for_batch(jupyter):
    client = sdk(jupyter, TEST_API_KEY)
    batch = finished(client, client.batches.create(
        input_file_id=client.files.create(file=("one.jsonl", jsonl([chat("a")])), purpose="batch").id,
        endpoint=CHAT, completion_window="24h").id)
    with pytest.raises(openai.BadRequestError, match="purpose"):  # its own output is no input
        client.batches.create(input_file_id=batch.output_file_id, endpoint=CHAT, completion_window="24h")


def test_a_keys_batch_lines_cannot_pin_or_resize_the_model(jupyter):
    """A line's body goes through `infer` as the key's own request would: Ollama-style `keep_alive` and `options`
    in it change nothing about the runner (the key's policy: no pinning, no context of its own)."""
    client = sdk(jupyter, TEST_API_KEY)
    with httpx.Client(base_url=jupyter.url, headers=jupyter.headers, trust_env=False, timeout=60) as http:
        http.post("engines/v1/chat/completions", json=chat("warm")["body"]).raise_for_status()
        before = next(r for r in http.get("engines/ps").json() if r["model_name"].startswith("ai/tiny:"))
        rows = [chat(f"pin-{i}", keep_alive=-1, options={"num_ctx": 65536}, context_size=65536, num_ctx=65536)
                for i in range(3)]
        source = client.files.create(file=("pin.jsonl", jsonl(rows)), purpose="batch")
        batch = finished(client, client.batches.create(input_file_id=source.id, endpoint=CHAT,
                                                       completion_window="24h").id)
        assert batch.status == "completed" and batch.request_counts.completed == 3
        after = wait_for(lambda: next((r for r in http.get("engines/ps").json()
                                       if r["model_name"].startswith("ai/tiny:") and not r["in_use"]), None))
    assert after["pid"] == before["pid"]  # not restarted with another context
    assert after["context_size"] == before["context_size"]
    assert after["keep_alive"] == before["keep_alive"] and after["keep_alive"] >= 0
    assert after["expires_at"] is not None  # not pinned: it still idles out


def test_the_key_does_not_leak_into_the_store(jupyter, live_store):
    """Who made a file or batch is kept as the key's name, never the key itself."""
    found = [p for p in (live_store.root / "files").glob("*.json") if TEST_API_KEY in p.read_text()]
    found += [p for p in (live_store.root / "batches").glob("*/batch.json") if TEST_API_KEY in p.read_text()]
    assert found == []
    assert (live_store.root / "files").stat().st_mode & 0o077 == 0  # user-only, as the rest of the store


def test_a_key_cannot_claim_another_keys_name_with_the_relay_header(jupyter, mallory_key):
    """`X-Model-Runner-Caller` is believed only from a server relaying with a relay key: a client sending it with its
    own key is still itself."""
    mallory = sdk(jupyter, mallory_key)
    theirs = mallory.files.create(file=("m.jsonl", jsonl([chat("m")])), purpose="batch")
    impostor = openai.OpenAI(base_url=jupyter.url + "v1", api_key=TEST_API_KEY, max_retries=0,
                             default_headers={"X-Model-Runner-Caller": "key:mallory"})
    with pytest.raises(openai.NotFoundError):
        impostor.files.retrieve(theirs.id)
    with pytest.raises(openai.NotFoundError):
        impostor.batches.create(input_file_id=theirs.id, endpoint=CHAT, completion_window="24h")


def test_a_refused_upload_never_holds_the_connection(jupyter, live_store):
    """A form whose purpose is refused before its file arrives: the reader stops at the purpose, and the 8 MiB that
    follow (far more than the pipe holds) are dropped, not waited on — the answer is a 400, not a hung request."""
    boundary = "purpose-first-boundary"
    body = (f'--{boundary}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nfine-tune\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="big.jsonl"\r\n'
            f"Content-Type: application/jsonl\r\n\r\n").encode() + b"x" * (8 * 2**20) \
        + f"\r\n--{boundary}--\r\n".encode()
    headers = {**jupyter.headers, "Content-Type": f"multipart/form-data; boundary={boundary}"}
    chunks = iter([body[i:i + 65536] for i in range(0, len(body), 65536)])
    answer = httpx.post(jupyter.url + "v1/files", content=chunks, headers=headers, trust_env=False, timeout=120)
    assert answer.status_code == 400 and "purpose" in answer.json()["error"]["message"]
    assert not any(p.stat().st_size > 2**20 for p in (live_store.root / "files").glob("*"))  # nothing of it kept
