"""Pulling from a real registry: layout, no-op re-pulls, resume, corruption, errors and hostile input."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from jupyter_modelrunner import mediatypes as mt
from jupyter_modelrunner.distribution import pull, push
from jupyter_modelrunner.errors import (
    AuthenticationFailed,
    DigestMismatch,
    InsufficientStorage,
    InvalidReference,
    ModelNotFound,
    PullCancelled,
    RegistryUnavailable,
    UnsafePath,
    UnsupportedArtifact,
)
from jupyter_modelrunner.store import Store

from ..conftest import REGISTRY_USER, write_docker_credentials
from ..support.faultproxy import FaultProxy
from ..support.publish import gguf_config, publish_gguf, publish_raw, tar_bytes
from ..support.registry import find_free_port
from ..support.runners import stop_store_owner

BIG_BLOB_BYTES = 24 * 1024 * 1024


@pytest.fixture(scope="module")
def big_model(registry) -> tuple[str, str]:
    """A model whose one layer is large enough to interrupt mid-way (random bytes in a GGUF layer)."""
    payload = b"GGUF" + os.urandom(BIG_BLOB_BYTES - 4)
    digest = publish_raw(registry.host, "ai/big", "latest", gguf_config(), mt.MODEL_CONFIG_V01,
                         [(payload, mt.GGUF, {})])
    return f"{registry.host}/ai/big:latest", digest


def events_of(kind, events):
    return [e for e in events if e.type == kind]


def test_pull_gguf_lays_out_the_store_and_reports_progress(store, seeded):
    events = []
    result = pull("ai/tiny", store, on_progress=events.append)
    model = result.model
    assert result.digest == seeded["ai/tiny"] == model.id
    assert result.downloaded_bytes == model.manifest.total_size
    gguf = model.bundle / "model.gguf"
    assert gguf.stat().st_ino == store.blob_path(model.manifest.layers[0].digest).stat().st_ino
    assert (model.format, model.config.quantization, model.config.architecture) == ("gguf", "F32", "llama")
    assert model.config.parameters
    assert events_of("success", events) and events[-1].type == "success"
    progress = events_of("progress", events)
    assert progress and progress[-1].pulled == progress[-1].total == model.manifest.total_size
    line = progress[-1].to_json()
    assert set(line) >= {"type", "message", "total", "layer", "mode"} and line["mode"] == "pull"
    assert not list((store.root / "blobs" / "sha256").glob("*.incomplete"))


@pytest.mark.parametrize("name", ["ai/tiny-st", "ai/tiny-st-tar", "ai/tiny-st-dir"])
def test_pull_safetensors_in_every_packaging(store, seeded, name, tiny_safetensors):
    model = pull(name, store).model
    assert model.format == "safetensors"
    for source in tiny_safetensors.iterdir():
        bundled = model.bundle / source.name
        assert bundled.is_file(), source.name
        assert bundled.read_bytes() == source.read_bytes()
    weights = next(layer for layer in model.manifest.layers if layer.media_type == mt.SAFETENSORS)
    assert (model.bundle / "model.safetensors").stat().st_ino == store.blob_path(weights.digest).stat().st_ino


def test_repull_is_a_no_op_and_a_second_tag_downloads_nothing(store, seeded, registry, tiny_gguf):
    first = pull("ai/tiny", store)
    again = pull("ai/tiny", store)
    assert again.downloaded_bytes == 0 and again.digest == first.digest
    push(store, "ai/tiny", target=f"{registry.host}/ai/tiny:v2")  # the same manifest under another tag
    second = pull("ai/tiny:v2", store)
    assert second.downloaded_bytes == 0 and second.digest == first.digest
    assert sorted(store.resolve("ai/tiny").tags) == sorted(
        [f"{registry.host}/ai/tiny:latest", f"{registry.host}/ai/tiny:v2"])


def test_interrupted_pull_resumes_where_it_stopped(store, registry, big_model):
    reference, digest = big_model
    with FaultProxy(registry.host) as proxy:
        proxy.cut_after = 4 * 1024 * 1024
        proxied = reference.replace(registry.host, proxy.host)
        with pytest.raises(RegistryUnavailable, match="resume"):
            pull(proxied, store)
        partials = list((store.root / "blobs" / "sha256").glob("*.incomplete"))
        assert len(partials) == 1
        have = partials[0].stat().st_size
        assert 0 < have < BIG_BLOB_BYTES
        assert store.models() == []

        proxy.cut_after = None
        proxy.reset_counters()
        result = pull(proxied, store)
        assert result.digest == digest
        assert proxy.bytes_downstream < BIG_BLOB_BYTES - have + 64 * 1024  # only the rest crossed the wire
    blob = store.blob_path(result.model.manifest.layers[0].digest)
    assert blob.stat().st_size == BIG_BLOB_BYTES
    assert not partials[0].exists()


#: A slow network (1 MiB/s) that the proxy delivers in pieces of 16 KiB: each read of the body gets about one.
SLOW_RATE = 1024 * 1024
SLOW_PIECE = SLOW_RATE // 64


def wait_until(condition, timeout: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)


def partial_size(store) -> int:
    total = 0
    for path in (store.root / "blobs" / "sha256").glob("*.incomplete"):
        with contextlib.suppress(FileNotFoundError):  # finished (renamed) between the listing and the stat
            total += path.stat().st_size
    return total


def test_cancel_stops_a_slow_download_within_a_read_and_the_next_pull_resumes(store, registry, big_model):
    reference, digest = big_model
    with FaultProxy(registry.host) as proxy:
        proxy.rate = SLOW_RATE
        proxied = reference.replace(registry.host, proxy.host)
        cancel, outcome = threading.Event(), []

        def pulling() -> None:
            try:
                outcome.append(pull(proxied, store, cancel=cancel))
            except Exception as exc:  # the test asserts what it was
                outcome.append(exc)

        worker = threading.Thread(target=pulling)
        worker.start()
        wait_until(lambda: partial_size(store) >= 1024 * 1024, what="the first MiB on disk")  # mid-blob
        cancel.set()
        at_cancel, cancelled_at = partial_size(store), time.monotonic()
        wait_until(lambda: not worker.is_alive(), what="the download to stop")
        stopped_after = time.monotonic() - cancelled_at
        (error,) = outcome
        assert isinstance(error, PullCancelled)
        have = partial_size(store)  # kept for the next pull
        # One read (a piece of the slow network) after the cancel at most, not the rest of a 4 MiB step.
        assert have - at_cancel <= 2 * SLOW_PIECE, (have, at_cancel)
        assert stopped_after < 0.5
        assert store.models() == []

        proxy.rate = None
        proxy.reset_counters()
        result = pull(proxied, store)
        assert result.digest == digest
        # Resumed where the cancel left it (the config, a few hundred bytes, may come now too).
        assert BIG_BLOB_BYTES - have <= result.downloaded_bytes <= BIG_BLOB_BYTES - have + 4096
    assert partial_size(store) == 0


def test_corrupt_blob_is_refused_and_the_store_stays_usable(store, registry, tiny_gguf, seeded):
    digest = publish_gguf(registry.host, "ai/corrupt", tiny_gguf, context_size=64)
    manifest = json.loads(subprocess.run(
        ["curl", "-sf", "-H", f"Accept: {mt.OCI_MANIFEST}", f"{registry.url}/v2/ai/corrupt/manifests/latest"],
        check=True, capture_output=True).stdout)
    assert manifest["config"]["digest"] != digest
    config_blob = registry.blob_data_path(manifest["config"]["digest"])
    original = config_blob.read_bytes()
    config_blob.write_bytes(original.replace(b'"gguf"', b'"GGUF"', 1))  # same length, other bytes
    try:
        with pytest.raises(DigestMismatch, match="corrupt"):
            pull("ai/corrupt", store)
        assert store.models() == []
        assert not store.has_blob(manifest["config"]["digest"])
        assert not list((store.root / "blobs" / "sha256").glob("*.incomplete"))
        assert pull("ai/tiny", store).model.id == seeded["ai/tiny"]
    finally:
        config_blob.write_bytes(original)


def test_unknown_model_and_tag(store, seeded):
    with pytest.raises(ModelNotFound, match="ai/does-not-exist"):
        pull("ai/does-not-exist", store)
    with pytest.raises(ModelNotFound, match="not found"):
        pull("ai/tiny:no-such-tag", store)


def test_registry_down_fails_fast_with_the_address(store):
    port = find_free_port()
    started = time.monotonic()
    with pytest.raises(RegistryUnavailable, match=rf"127\.0\.0\.1:{port}.*connection refused"):
        pull(f"127.0.0.1:{port}/ai/tiny", store)
    assert time.monotonic() - started < 10


def test_malformed_reference(store):
    with pytest.raises(InvalidReference):
        pull("ai/Bad Name", store)


def test_registry_credentials(store, auth_registry, tiny_gguf):
    host = auth_registry.host
    write_docker_credentials(host, *REGISTRY_USER)
    publish_gguf(host, "ai/private", tiny_gguf)
    (Path(os.environ["DOCKER_CONFIG"]) / "config.json").unlink()
    with pytest.raises(AuthenticationFailed, match="docker login"):
        pull(f"{host}/ai/private", store)
    write_docker_credentials(host, REGISTRY_USER[0], "wrong-password")
    with pytest.raises(AuthenticationFailed, match="rejected"):
        pull(f"{host}/ai/private", store)
    write_docker_credentials(host, *REGISTRY_USER)
    assert pull(f"{host}/ai/private", store).model.format == "gguf"


def test_container_images_are_not_models(store, registry):
    config = b'{"architecture": "amd64", "os": "linux"}'
    publish_raw(registry.host, "ai/not-a-model", "latest", config, "application/vnd.oci.image.config.v1+json",
                [(b"layer", "application/vnd.oci.image.layer.v1.tar", {})])
    with pytest.raises(UnsupportedArtifact, match="not a model"):
        pull("ai/not-a-model", store)


def test_path_traversal_in_annotation_is_refused_before_download(store, registry, tmp_path):
    weights = b"GGUF" + b"\0" * 1000
    publish_raw(registry.host, "ai/traversal", "latest", gguf_config(), mt.MODEL_CONFIG_V02, [
        (weights, mt.GGUF, {}),
        (b"pwned", mt.MODEL_FILE, {mt.ANNOTATION_FILEPATH: "../../../escaped.txt"}),
    ])
    with pytest.raises(UnsafePath, match=r"escaped\.txt"):
        pull("ai/traversal", store)
    assert store.models() == []
    assert list((store.root / "blobs" / "sha256").iterdir()) == []  # refused before any download
    assert not any(tmp_path.parent.rglob("escaped.txt"))


def test_path_traversal_in_tar_layer_leaves_nothing_behind(store, registry, tmp_path):
    publish_raw(registry.host, "ai/tarslip", "latest", gguf_config(), mt.MODEL_CONFIG_V01, [
        (b"GGUF" + b"\1" * 1000, mt.GGUF, {}),
        (tar_bytes({"config.json": b"{}", "../../tar-escaped.txt": b"pwned"}), mt.VLLM_CONFIG_TAR, {}),
    ])
    with pytest.raises(UnsafePath, match="tar entry"):
        pull("ai/tarslip", store)
    assert store.models() == []
    assert store.df().orphans == 0
    assert not any(tmp_path.parent.rglob("tar-escaped.txt"))


def test_two_processes_pulling_the_same_model_share_the_work(tmp_path, registry, big_model):
    reference, digest = big_model
    root = tmp_path / "shared-store"
    command = [sys.executable, "-m", "jupyter_modelrunner", "--store", str(root), "pull", "-q", reference]
    procs = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    try:
        outputs = [p.communicate(timeout=120) for p in procs]
    finally:
        stop_store_owner(root)  # the embedded runner the first of them started for the store
    assert [p.returncode for p in procs] == [0, 0], outputs
    store = Store(root)
    (model,) = store.models()
    assert model.id == digest
    blob = store.blob_path(model.manifest.layers[0].digest)
    import hashlib

    assert "sha256:" + hashlib.sha256(blob.read_bytes()).hexdigest() == model.manifest.layers[0].digest
    assert not list((root / "blobs" / "sha256").glob("*.incomplete"))


@pytest.fixture
def tiny_disk(tmp_path):
    """A 16 MiB tmpfs to fill up; needs the right to mount (root in CI), skipped otherwise."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {done.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_full_disk_is_reported_before_downloading(tiny_disk, registry, big_model):
    store = Store(tiny_disk / "store", registry=registry.host)
    with pytest.raises(InsufficientStorage, match=r"needs .* more but only"):
        pull(big_model[0], store)
    assert store.models() == []


def test_disk_filling_up_mid_download_keeps_the_partial_file(tiny_disk, registry, big_model, monkeypatch):
    store = Store(tiny_disk / "store", registry=registry.host)
    # Fault injection: pretend there is room so the write itself hits ENOSPC mid-blob.
    monkeypatch.setattr(store, "free_bytes", lambda: 1 << 40)
    with pytest.raises(InsufficientStorage, match="filled up"):
        pull(big_model[0], store)
    (partial,) = (store.root / "blobs" / "sha256").glob("*.incomplete")
    have = partial.stat().st_size
    assert have > 0
    subprocess.run(["mount", "-o", "remount,size=64m", str(tiny_disk)], check=True)
    result = pull(big_model[0], store)
    assert result.downloaded_bytes <= BIG_BLOB_BYTES - have + 4096
    assert result.digest == big_model[1]
