"""Pushing: digests round-trip, existing blobs are skipped, and other OCI clients agree with us."""

from __future__ import annotations

import json
import shutil
import subprocess

import oras.client
import pytest

from jupyter_modelrunner import mediatypes as mt
from jupyter_modelrunner.distribution import package_gguf, pull, push
from jupyter_modelrunner.distribution import registry as registry_module
from jupyter_modelrunner.reference import parse_reference
from jupyter_modelrunner.store import Store


def test_push_then_pull_gives_identical_digests(tmp_path, registry, tiny_gguf):
    source = Store(tmp_path / "source")
    ref = parse_reference(f"{registry.host}/ai/roundtrip:v1")
    packaged = package_gguf(source, tiny_gguf, ref, context_size=512)
    first = push(source, ref.full)
    assert first.digest == packaged.id and first.uploaded_bytes == packaged.manifest.total_size
    again = push(source, ref.full)
    assert again.uploaded_bytes == 0 and again.skipped_bytes == packaged.manifest.total_size

    target = Store(tmp_path / "target")
    pulled = pull(ref.full, target).model
    assert pulled.id == packaged.id
    for blob in packaged.manifest.blobs:
        assert target.blob_path(blob.digest).read_bytes() == source.blob_path(blob.digest).read_bytes()
    assert pulled.config.context_size == 512


def test_large_blobs_are_uploaded_in_chunks(tmp_path, registry, monkeypatch):
    monkeypatch.setattr(registry_module, "UPLOAD_CHUNK_BYTES", 256 * 1024)
    source = Store(tmp_path / "source")
    gguf = tmp_path / "big.gguf"
    from ..support.models import make_tiny_gguf

    make_tiny_gguf(gguf)
    ref = parse_reference(f"{registry.host}/ai/chunked")
    model = package_gguf(source, gguf, ref)
    events = []
    push(source, ref.full, on_progress=events.append)
    layer_events = [e for e in events if e.layer and e.layer.id == model.manifest.layers[0].digest]
    assert layer_events[-1].layer.current == model.manifest.layers[0].size
    assert pull(ref.full, Store(tmp_path / "target")).digest == model.id


def test_push_under_another_name(tmp_path, registry, tiny_gguf):
    source = Store(tmp_path / "source")
    package_gguf(source, tiny_gguf, parse_reference(f"{registry.host}/ai/local-name"))
    result = push(source, f"{registry.host}/ai/local-name", target=f"{registry.host}/team/published:1.0")
    assert pull(f"{registry.host}/team/published:1.0", Store(tmp_path / "t")).digest == result.digest


def test_skopeo_sees_the_manifest_we_push(tmp_path, registry, tiny_gguf):
    if not shutil.which("skopeo"):
        pytest.skip("skopeo is not installed")
    source = Store(tmp_path / "source")
    ref = parse_reference(f"{registry.host}/ai/interop")
    model = package_gguf(source, tiny_gguf, ref)
    push(source, ref.full)
    raw = subprocess.run(["skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{ref.full}"],
                         check=True, capture_output=True).stdout
    assert raw == model.manifest.raw


def test_artifact_pushed_by_oras_itself_is_pulled(tmp_path, registry, tiny_gguf, monkeypatch):
    work = tmp_path / "oras"
    work.mkdir()
    shutil.copy(tiny_gguf, work / "model.gguf")
    config = {"config": {"format": "gguf", "architecture": "llama", "quantization": "F32"}}
    (work / "config.json").write_text(json.dumps(config))
    monkeypatch.chdir(work)
    client = oras.client.OrasClient(hostname=registry.host, insecure=True)
    client.push(
        target=f"{registry.host}/ai/by-oras:latest",
        files=[f"model.gguf:{mt.GGUF}"],
        manifest_config=f"config.json:{mt.MODEL_CONFIG_V01}",
        disable_path_validation=True,
    )
    model = pull(f"{registry.host}/ai/by-oras", Store(tmp_path / "store")).model
    assert model.format == "gguf"
    assert (model.bundle / "model.gguf").read_bytes() == tiny_gguf.read_bytes()
