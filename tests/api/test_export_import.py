"""Export and import over HTTP (DMR's `GET models/{name}/export` and `POST models/load` with a tar body): a round trip
through a second store, an archive as DMR writes it, and the JSON preload still answering on `models/load`."""

from __future__ import annotations

import io
import json
import tarfile

import pytest

from jupyter_modelrunner.store import Store
from jupyter_modelrunner.store.exchange import export_archive, import_archive

pytestmark = pytest.mark.timeout(120)
API = "modelrunner"
TAR = {"Content-Type": "application/x-tar"}  # copied per request: jp_fetch adds its token to the dict it gets


def chunked(data: bytes, size: int = 64 * 1024):
    """A body producer: the archive sent in chunks of unannounced total length (`Transfer-Encoding: chunked`)."""

    async def produce(write):
        for start in range(0, len(data), size):
            await write(data[start:start + size])

    return produce


def dmr_archive(store: Store, name: str) -> bytes:
    """The archive exactly as DMR's `tarball.Target` writes it: blobs, then `manifest.json`; no names."""
    model = store.resolve(name)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for blob in model.manifest.blobs:
            tar.add(store.blob_path(blob.digest), arcname=f"blobs/sha256/{blob.digest.removeprefix('sha256:')}")
        raw = store.manifest_path(model.id).read_bytes()
        info = tarfile.TarInfo("manifest.json")
        info.size = len(raw)
        tar.addfile(info, io.BytesIO(raw))
    return buffer.getvalue()


async def test_export_then_import_round_trips_through_a_second_store(jp_fetch, runner_store, tmp_path):
    original = runner_store.resolve("ai/tiny")
    response = await jp_fetch(API, "models", "ai/tiny", "export")
    assert response.headers["Content-Type"] == "application/x-tar"
    assert 'filename="ai_tiny_latest.tar"' in response.headers["Content-Disposition"]
    with tarfile.open(fileobj=io.BytesIO(response.body)) as tar:
        names = tar.getnames()
    assert "manifest.json" in names and "index.json" in names and "oci-layout" in names

    second = Store(tmp_path / "second", registry=runner_store.registry)
    imported = import_archive(second, io.BytesIO(response.body))
    assert imported.id == original.id and imported.tags == original.tags
    assert (imported.bundle / "model.gguf").read_bytes() == (original.bundle / "model.gguf").read_bytes()

    # Back over HTTP into the first store, which has lost the model meanwhile: streamed, chunked, from the copy.
    await jp_fetch(API, "models", "ai/tiny", method="DELETE")
    assert not runner_store.models()
    _, chunks = export_archive(second, "ai/tiny")
    response = await jp_fetch(API, "models", "load", method="POST", headers=dict(TAR),
                              body_producer=chunked(b"".join(chunks)))
    assert response.code == 201
    model = json.loads(response.body)
    assert model["id"] == original.id and model["tags"] == ["ai/tiny:latest"]
    back = runner_store.resolve("ai/tiny")
    assert (back.bundle / "model.gguf").read_bytes() == (original.bundle / "model.gguf").read_bytes()
    assert not list((runner_store.root / "tmp").iterdir())
    assert runner_store.df().orphans == 0  # the layout's manifest blob is not left behind


async def test_an_archive_as_dmr_writes_it_imports_under_the_name_given(jp_fetch, runner_store):
    archive = dmr_archive(runner_store, "ai/tiny")
    unnamed = await jp_fetch(API, "models", "load", method="POST", headers=dict(TAR), body=archive, raise_error=False)
    assert unnamed.code == 422, unnamed.body
    assert "give it a name" in json.loads(unnamed.body)["message"]
    named = await jp_fetch(API, "models", "load", method="POST", headers=dict(TAR), body=archive,
                           params={"tag": "ai/tiny-from-dmr:v1"})
    assert named.code == 201 and json.loads(named.body)["tags"] == ["ai/tiny:latest", "ai/tiny-from-dmr:v1"]


async def test_models_load_with_json_still_preloads(jp_fetch):
    response = await jp_fetch(API, "models", "load", method="POST", body=json.dumps({"model": "ai/tiny"}),
                              headers={"Content-Type": "application/json"})
    assert json.loads(response.body)["model_name"].endswith("ai/tiny:latest")


async def test_x_preload_only_on_chat_completions_preloads_as_dmr_does(jp_fetch):
    response = await jp_fetch(API, "engines", "v1", "chat", "completions", method="POST",
                              headers={"X-Preload-Only": "true", "Content-Type": "application/json"},
                              body=json.dumps({"model": "ai/tiny", "messages": []}))
    assert response.code == 200
    assert json.loads(response.body)["model_name"].endswith("ai/tiny:latest")
