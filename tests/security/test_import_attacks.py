"""Attacks on the model archive routes (`POST models/load` with a tar body, `GET models/{name}/export`), against a
real `serve` whose import cap is small: hostile tar members, forged digests, uploads past the cap (announced and
chunked), inference keys, and export names that try to leave the store. Every refusal leaves the store as it was:
no model, no blob, nothing in `tmp/`."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import httpx
import pytest

from jupyter_modelrunner.distribution import pull
from jupyter_modelrunner.store import Store
from jupyter_modelrunner.store.exchange import export_archive

from ..conftest import TEST_API_KEY, server_env
from ..support.jupyter import ServerProcess

pytestmark = pytest.mark.timeout(300)
CAP = 2 * 1024 * 1024  # the tiny model's archive is ~0.6 MB
TAR = {"Content-Type": "application/x-tar"}


@pytest.fixture(scope="module")
def served(tmp_path_factory, registry, seeded):
    workdir = tmp_path_factory.mktemp("import-attacks")
    store = Store(workdir / "store", registry=registry.host)
    pull("ai/tiny", store, registry=registry.host)
    with ServerProcess.standalone(workdir, server_env(workdir, store.root, registry.host),
                                  f"--ModelRunner.max_import_bytes={CAP}") as server:
        yield server, store


@pytest.fixture
def http(served):
    server, _ = served
    with server.client() as client:
        yield client


@pytest.fixture
def store(served) -> Store:
    return served[1]


def blob_names(store: Store) -> set[str]:
    return {p.name for p in (store.root / "blobs" / "sha256").iterdir()}


def assert_unchanged(store: Store, blobs: set[str]) -> None:
    assert blob_names(store) == blobs
    assert [m.tags for m in store.models()] == [(f"{store.registry}/ai/tiny:latest",)]
    assert not list((store.root / "tmp").iterdir())


def archive(members: list[tarfile.TarInfo], data: dict[str, bytes] | None = None) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for info in members:
            payload = (data or {}).get(info.name)
            tar.addfile(info, io.BytesIO(payload) if payload is not None else None)
    return buffer.getvalue()


def regular(name: str, payload: bytes) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    return info, payload


def link(name: str, target: str, kind: bytes) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info


def fresh_blob(payload: bytes) -> tuple[str, bytes]:
    return hashlib.sha256(payload).hexdigest(), payload


@pytest.mark.parametrize("member", [
    pytest.param(regular("../escaped", b"x"), id="dot-dot"),
    pytest.param(regular("blobs/sha256/../../../../escaped", b"x"), id="dot-dot-inside-blobs"),
    pytest.param(regular("/tmp/escaped", b"x"), id="absolute"),
    pytest.param(link("blobs/sha256/" + "a" * 64, "/etc/passwd", tarfile.SYMTYPE), id="symlink"),
    pytest.param(link("blobs/sha256/" + "b" * 64, "/etc/passwd", tarfile.LNKTYPE), id="hardlink"),
    pytest.param(link("dev", "", tarfile.CHRTYPE), id="device"),
])
def test_hostile_members_are_refused_and_nothing_is_kept(http, store, member, tmp_path):
    before = blob_names(store)
    good_hex, good = fresh_blob(b"a blob that came before the hostile member")
    first, payload = regular(f"blobs/sha256/{good_hex}", good)
    members, data = [first], {first.name: payload}
    if isinstance(member, tuple):
        info, body = member
        members.append(info)
        data[info.name] = body
    else:
        members.append(member)
    response = http.post("models/load", content=archive(members, data), headers=TAR)
    assert response.status_code == 422, response.text
    assert "Refusing" in response.json()["message"]
    assert_unchanged(store, before)  # the good blob imported before the refusal is gone too
    assert not Path("/tmp/escaped").exists() and not (store.root.parent / "escaped").exists()


def test_a_blob_whose_bytes_do_not_match_its_name_is_refused(http, store):
    before = blob_names(store)
    forged, _ = regular("blobs/sha256/" + hashlib.sha256(b"what it claims").hexdigest(), b"what it is")
    response = http.post("models/load", content=archive([forged], {forged.name: b"what it is"}), headers=TAR)
    assert response.status_code == 422
    assert "hashes to" in response.json()["message"]
    assert_unchanged(store, before)


def test_a_manifest_naming_blobs_the_archive_lacks_is_refused(http, store):
    before = blob_names(store)
    _, chunks = export_archive(store, "ai/tiny")
    with tarfile.open(fileobj=io.BytesIO(b"".join(chunks))) as tar:
        raw = tar.extractfile("manifest.json").read()
    doc = json.loads(raw)
    doc["layers"][0]["digest"] = "sha256:" + "c" * 64
    info, payload = regular("manifest.json", json.dumps(doc).encode())
    response = http.post("models/load", params={"tag": "ai/ghost"}, content=archive([info], {info.name: payload}),
                         headers=TAR)
    assert response.status_code == 422 and "lacks blob" in response.json()["message"]
    assert_unchanged(store, before)


def test_an_announced_upload_over_the_cap_is_refused_before_it_is_read(http, store):
    before = blob_names(store)
    response = http.post("models/load", content=b"\0" * (CAP + 1), headers=TAR)
    assert response.status_code == 413
    assert "max_import_bytes" in response.json()["message"]
    assert_unchanged(store, before)


def test_a_chunked_upload_running_past_the_cap_is_cut_off_and_its_partial_blob_removed(http, store):
    """No length announced: the runner counts as it reads; the half-written blob in tmp/ is deleted."""
    before = blob_names(store)
    big = b"\1" * (CAP + 512 * 1024)
    header = tarfile.TarInfo("blobs/sha256/" + hashlib.sha256(big).hexdigest())
    header.size = len(big)

    def body():
        yield header.tobuf()
        for start in range(0, len(big), 64 * 1024):
            yield big[start:start + 64 * 1024]

    try:
        response = http.post("models/load", content=body(), headers=TAR)
        assert response.status_code == 413, response.text
    except httpx.TransportError:
        pass  # the server may close the connection rather than read the rest: refused either way
    assert_unchanged(store, before)


def test_an_inference_key_may_neither_import_nor_export(served, store):
    server, _ = served
    key = {"Authorization": f"Bearer {TEST_API_KEY}"}
    before = blob_names(store)
    _, chunks = export_archive(store, "ai/tiny")
    with httpx.Client(base_url=server.url, headers=key, trust_env=False, timeout=60) as client:
        response = client.post("models/load", params={"tag": "ai/by-key"}, content=b"".join(chunks), headers=TAR)
        assert response.status_code == 403 and "inference key" in response.json()["message"]
        exported = client.get("models/ai/tiny/export")
        assert exported.status_code == 403 and not exported.content.startswith(b"blobs")
    assert_unchanged(store, before)


@pytest.mark.parametrize("name", ["../../../etc/passwd", "..%2F..%2Fetc%2Fpasswd", "%2Fetc%2Fpasswd",
                                  "ai/tiny/../../../../etc", "sha256:..%2F..%2Fx"])
def test_export_names_that_try_to_leave_the_store_find_nothing(http, name):
    response = http.get(f"models/{name}/export")
    # 400 (a dot segment, refused by every route) or 404 (no such model; or, for a name the client normalizes
    # out of the API's prefix, no such page): never a tar, never a file's content.
    assert response.status_code in (400, 404), (name, response.status_code)
    assert response.headers.get("Content-Type", "") != "application/x-tar"
    assert b"root:" not in response.content
