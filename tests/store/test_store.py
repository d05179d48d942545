"""The local store: layout, bundles of hard links, names, tags, removal, disk usage and gc."""

from __future__ import annotations

import json
import os
import time

import pytest

from jupyter_modelrunner import mediatypes as mt
from jupyter_modelrunner.distribution import package_gguf, package_safetensors
from jupyter_modelrunner.errors import ModelNotFound, StoreError, UnsafePath
from jupyter_modelrunner.reference import parse_reference
from jupyter_modelrunner.store import Store

from ..support.publish import tar_bytes


@pytest.fixture
def local(tmp_path, monkeypatch) -> Store:
    monkeypatch.setenv("MODEL_RUNNER_DEFAULT_REGISTRY", "127.0.0.1:1")
    return Store(tmp_path / "store")


def add_gguf(store: Store, gguf, name: str = "ai/tiny"):
    return package_gguf(store, gguf, parse_reference(name))


def test_packaged_gguf_has_dmr_layout_and_facts(local, tiny_gguf):
    model = add_gguf(local, tiny_gguf)
    hexid = model.id.removeprefix("sha256:")
    assert (local.root / "manifests" / "sha256" / hexid).is_file()
    index = json.loads((local.root / "models.json").read_text())
    assert index["models"][0]["id"] == model.id
    assert index["models"][0]["tags"] == ["127.0.0.1:1/ai/tiny:latest"]
    assert set(index["models"][0]["files"]) == {b.digest for b in model.manifest.blobs}
    assert model.format == "gguf"
    assert model.config.architecture == "llama"
    assert model.config.quantization == "F32"
    assert model.config.parameters and model.config.parameters[-1] in "KM"
    config = json.loads(local.blob_path(model.manifest.config.digest).read_bytes())
    assert config["config"]["gguf"]["general.architecture"] == "llama"
    assert "tokenizer.ggml.tokens" not in config["config"]["gguf"]  # arrays over 50 items are skipped
    assert config["rootfs"]["diff_ids"] == [layer.digest for layer in model.manifest.layers]


def test_bundle_files_are_hard_links_of_the_blobs(local, tiny_gguf):
    model = add_gguf(local, tiny_gguf)
    bundled = model.bundle / "model.gguf"
    blob = local.blob_path(model.manifest.layers[0].digest)
    assert bundled.stat().st_ino == blob.stat().st_ino
    assert blob.stat().st_nlink == 2
    assert not os.access(blob, os.W_OK) or os.geteuid() == 0  # blobs are read-only (root ignores modes)
    assert oct(blob.stat().st_mode & 0o777) == oct(0o444)


def test_safetensors_bundle_keeps_relative_paths(local, tiny_safetensors):
    model = package_safetensors(local, tiny_safetensors, parse_reference("ai/tiny-st"))
    assert model.format == "safetensors"
    assert model.manifest.config.media_type == mt.MODEL_CONFIG_V02
    names = sorted(p.name for p in model.bundle.iterdir())
    assert "model.safetensors" in names and "config.json" in names and "tokenizer.json" in names
    weights = next(layer for layer in model.manifest.layers if layer.media_type == mt.SAFETENSORS)
    assert weights.annotations[mt.ANNOTATION_FILEPATH] == "model.safetensors"
    assert (model.bundle / "model.safetensors").stat().st_ino == local.blob_path(weights.digest).stat().st_ino
    assert model.config.architecture == "llama"


def test_lookup_by_full_ref_short_name_digest_and_id(local, tiny_gguf):
    model = add_gguf(local, tiny_gguf)
    for name in ("127.0.0.1:1/ai/tiny:latest", "ai/tiny", "tiny", "ai/tiny:latest", model.id, model.short_id,
                 model.id.removeprefix("sha256:")):
        assert local.resolve(name).id == model.id, name
    with pytest.raises(ModelNotFound, match="pull ai/nothing"):
        local.resolve("ai/nothing")


def test_short_name_still_found_after_default_registry_changes(local, tiny_gguf, monkeypatch):
    model = add_gguf(local, tiny_gguf)
    monkeypatch.setenv("MODEL_RUNNER_DEFAULT_REGISTRY", "elsewhere.example.com")
    assert local.resolve("ai/tiny").id == model.id


def test_shared_tags_rm_untags_until_the_last(local, tiny_gguf):
    model = add_gguf(local, tiny_gguf)
    local.tag("ai/tiny", "ai/tiny:v1")
    local.tag("ai/tiny", "mine/copy:2")
    assert len(local.resolve("ai/tiny").tags) == 3
    with pytest.raises(StoreError, match="--force"):
        local.remove(model.short_id)
    result = local.remove("ai/tiny:v1")
    assert result.untagged == ("ai/tiny:v1",) and result.deleted is None  # as users name it here
    assert local.has_blob(model.manifest.layers[0].digest)
    local.remove("ai/tiny")
    result = local.remove("mine/copy:2")
    assert result.deleted == model.id and result.freed_bytes >= model.size
    assert local.models() == []
    assert not local.has_blob(model.manifest.layers[0].digest)
    assert not model.bundle.exists()


def test_force_removes_a_model_with_several_tags(local, tiny_gguf):
    model = add_gguf(local, tiny_gguf)
    local.tag("ai/tiny", "ai/tiny:v1")
    result = local.remove(model.short_id, force=True)
    assert result.deleted == model.id and len(result.untagged) == 2
    assert local.models() == []


def test_blobs_shared_between_models_are_reference_counted(local, tiny_gguf, tmp_path):
    first = add_gguf(local, tiny_gguf, "ai/one")
    second = package_gguf(local, tiny_gguf, parse_reference("ai/two"), context_size=256)
    assert first.id != second.id  # different config, same weights blob
    weights = first.manifest.layers[0].digest
    assert second.manifest.layers[0].digest == weights
    local.remove("ai/one")
    assert local.has_blob(weights)
    assert (second.bundle / "model.gguf").is_file()
    local.remove("ai/two")
    assert not local.has_blob(weights)


def test_retagging_moves_a_tag_and_drops_the_untagged_model(local, tiny_gguf):
    old = add_gguf(local, tiny_gguf, "ai/tiny")
    new = package_gguf(local, tiny_gguf, parse_reference("ai/tiny"), context_size=128)
    assert [m.id for m in local.models()] == [new.id]
    assert not old.bundle.exists()


def test_df_numbers_add_up_and_gc_removes_orphans_only(local, tiny_gguf):
    model = add_gguf(local, tiny_gguf)
    orphan = local.add_blob_bytes(b"nobody references me")
    partial = local.incomplete_path("sha256:" + "0" * 64)
    partial.write_bytes(b"x" * 1000)
    usage = local.df()
    on_disk = sum(p.stat().st_size for p in (local.root / "blobs" / "sha256").iterdir())
    assert usage.models + usage.orphans + usage.incomplete == on_disk
    assert usage.total == on_disk + usage.manifests
    assert usage.models == sum(b.size for b in model.manifest.blobs)
    assert usage.orphans == len(b"nobody references me") and usage.incomplete == 1000

    assert local.gc().total == 0  # everything is younger than the grace period
    freed = local.gc(min_age_seconds=0)
    assert freed.orphans == len(b"nobody references me") and freed.incomplete == 1000
    assert not local.has_blob(orphan) and not partial.exists()
    assert local.resolve("ai/tiny").bundle.joinpath("model.gguf").is_file()
    assert local.df().orphans == 0


def test_gc_keeps_a_partial_download_in_progress(local):
    digest = "sha256:" + "1" * 64
    part = local.incomplete_path(digest)
    part.write_bytes(b"downloading")
    old = time.time() - 7200
    os.utime(part, (old, old))
    with local.blob_lock(digest):
        assert local.gc(min_age_seconds=0).incomplete == 0
    assert part.exists()


def _raw_model(store: Store, layers):
    config = store.add_blob_bytes(b'{"config": {"format": "gguf"}}')
    descriptors = []
    for data, media_type, notes in layers:
        digest = store.add_blob_bytes(data)
        descriptors.append({"mediaType": media_type, "digest": digest, "size": len(data), "annotations": notes})
    manifest = {"schemaVersion": 2, "mediaType": mt.OCI_MANIFEST,
                "config": {"mediaType": mt.MODEL_CONFIG_V01, "digest": config, "size": 30}, "layers": descriptors}
    return json.dumps(manifest).encode()


@pytest.mark.parametrize(
    "tar",
    [
        tar_bytes({"../../escaped.txt": b"owned"}),
        tar_bytes({"/tmp/escaped-abs.txt": b"owned"}),
        tar_bytes({"config.json": b"{}"}, links={"evil": "/etc/passwd"}),
    ],
    ids=["dotdot", "absolute", "symlink"],
)
def test_tar_layers_cannot_write_outside_the_bundle(local, tmp_path, tar):
    raw = _raw_model(local, [(b"GGUF" + b"\0" * 60, mt.GGUF, {}), (tar, mt.VLLM_CONFIG_TAR, {})])
    with pytest.raises(UnsafePath, match="Refusing tar entry"):
        local.add_model(parse_reference("ai/evil"), raw)
    assert local.models() == []
    assert not any(tmp_path.rglob("escaped*.txt"))
    assert not list((local.root / "bundles" / "sha256").iterdir())


def test_concurrent_index_writers_lose_no_tag(local, tiny_gguf):
    import threading

    add_gguf(local, tiny_gguf)
    errors = []

    def tag(i: int) -> None:
        try:
            Store(local.root).tag("ai/tiny", f"ai/tiny:t{i}")
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=tag, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(local.resolve("ai/tiny").tags) == 13
