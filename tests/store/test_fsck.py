"""`fsck` on a real store filled from the test registry: what it finds, what `--repair` does, and that a pull
running at the same time is neither reported nor broken."""

from __future__ import annotations

import hashlib
import os
import shutil
import threading
import time
from pathlib import Path

import pytest

from jupyter_modelrunner import mediatypes as mt
from jupyter_modelrunner.distribution import pull
from jupyter_modelrunner.presentation import fsck_text
from jupyter_modelrunner.store import Store
from jupyter_modelrunner.store.findings import (
    BLOB_CORRUPT,
    BLOB_MISSING,
    BUNDLE_LINK,
    BUNDLE_MISSING,
    BUNDLE_UNPACKED,
    MANIFEST_CORRUPT,
    PARTIAL_ORPHANED,
)
from jupyter_modelrunner.store.fsck import check, fsck
from jupyter_modelrunner.store.repair import repair_store

from ..support.faultproxy import FaultProxy
from ..support.publish import gguf_config, publish_raw

pytestmark = pytest.mark.timeout(120)

SLOW_BLOB_BYTES = 8 * 1024 * 1024
SLOW_RATE = 1024 * 1024


def weights_of(store: Store, name: str) -> Path:
    """The blob of the model's largest layer: its weights."""
    model = store.resolve(name)
    return store.blob_path(max(model.manifest.layers, key=lambda layer: layer.size).digest)


def flip_bytes(path: Path) -> None:
    """Damage a blob in place, keeping its size (bit rot, a bad disk): blobs are read-only, as an engine sees them."""
    path.chmod(0o644)
    with path.open("r+b") as handle:
        handle.seek(path.stat().st_size // 2)
        data = handle.read(16)
        handle.seek(-len(data), os.SEEK_CUR)
        handle.write(bytes(b ^ 0xFF for b in data))
    path.chmod(0o444)


def kinds(report) -> list[tuple[str, str]]:
    return sorted((p.subject, p.kind) for p in report.problems)


@pytest.fixture
def filled(store, registry, seeded) -> Store:
    """A GGUF model, a safetensors one (a layer per file) and one whose side files come in a tar layer."""
    for name in ("ai/tiny", "ai/tiny-st", "ai/tiny-st-tar"):
        pull(name, store, registry=registry.host)
    return store


def test_a_clean_store_is_clean(filled):
    events = []
    report = check(filled, on_progress=events.append)
    assert report.clean and report.problems == [] and report.pulling == []
    assert report.models == 3
    on_disk = {d for m in filled.models() for d in m.files}
    assert report.blobs == len(on_disk)
    assert report.checked_bytes == sum(filled.blob_path(d).stat().st_size for d in on_disk)
    assert events and events[-1].mode == "fsck" and events[-1].pulled == events[-1].total == report.checked_bytes
    assert fsck_text(report.to_json(), "jupyter modelrunner").endswith(": clean")


def test_a_corrupt_and_a_missing_blob_are_found_and_repair_drops_those_models(filled, registry):
    flip_bytes(weights_of(filled, "ai/tiny"))
    # Not its weights: ai/tiny-st-tar shares those (and would be reported too, rightly).
    layers = filled.resolve("ai/tiny-st").manifest.layers
    tokenizer = next(layer for layer in layers if layer.filepath == "tokenizer.json")
    missing = filled.blob_path(tokenizer.digest)
    missing_digest, missing_size = "sha256:" + missing.name, missing.stat().st_size
    missing.unlink()
    tar_model = filled.resolve("ai/tiny-st-tar")

    report = check(filled)
    assert kinds(report) == [("ai/tiny-st:latest", BLOB_MISSING),
                             ("ai/tiny:latest", BLOB_CORRUPT)]
    text = fsck_text(report.to_json(), "jupyter modelrunner")
    assert "ai/tiny:latest: layer" in text and "(model.gguf) is corrupt" in text
    assert "ai/tiny-st:latest: layer" in text and "is missing" in text
    assert "--repair removes the model from the index" in text
    assert text.splitlines()[-1].endswith("2 problems (`jupyter modelrunner fsck --repair` fixes them)")
    assert not report.clean

    repair_store(filled, report)
    assert report.clean
    assert sorted(tag for m in report.removed for tag in m["tags"]) == ["ai/tiny-st:latest", "ai/tiny:latest"]
    assert [m.id for m in filled.models()] == [tar_model.id]  # the others are intact
    corrupt = next(p for p in report.problems if p.kind == BLOB_CORRUPT)
    assert not filled.blob_path(corrupt.digest).exists()
    text = fsck_text(report.to_json(), "jupyter modelrunner")
    assert "Removed from the index: ai/tiny:latest. To get it back: jupyter modelrunner pull ai/tiny:latest" in text
    assert text.splitlines()[-1].endswith("2 problems, all repaired")
    assert check(filled).clean

    # Pulling again brings them back, downloading only what was lost: the intact blobs were kept.
    again = pull("ai/tiny", filled, registry=registry.host)
    assert again.downloaded_bytes == corrupt.identity[2]
    again = pull("ai/tiny-st", filled, registry=registry.host)
    assert filled.has_blob(missing_digest) and again.downloaded_bytes == missing_size
    assert check(filled).clean and len(filled.models()) == 3


def test_a_corrupt_manifest_makes_the_model_unusable(filled):
    model = filled.resolve("ai/tiny")
    path = filled.manifest_path(model.id)
    path.chmod(0o644)
    path.write_bytes(path.read_bytes() + b" ")
    assert kinds(check(filled)) == [("ai/tiny:latest", MANIFEST_CORRUPT)]
    report = fsck(filled, repair=True)
    assert report.clean and report.removed[0]["tags"] == ["ai/tiny:latest"]
    assert "ai/tiny:latest" not in {t for m in filled.models() for t in m.tags}
    assert check(filled).clean


def test_broken_bundles_are_relinked_or_rebuilt(filled):
    gguf = filled.resolve("ai/tiny").bundle / "model.gguf"
    gguf.unlink()
    st = filled.resolve("ai/tiny-st")
    (st.bundle / "config.json").unlink()
    (st.bundle / "config.json").write_text("{}")  # another file in its place
    tar_model = filled.resolve("ai/tiny-st-tar")
    (tar_model.bundle / "tokenizer.json").unlink()  # unpacked from the tar layer: only a rebuild brings it back

    report = check(filled)
    assert kinds(report) == [("ai/tiny-st-tar:latest", BUNDLE_UNPACKED),
                             ("ai/tiny-st:latest", BUNDLE_LINK),
                             ("ai/tiny:latest", BUNDLE_LINK)]
    text = fsck_text(report.to_json(), "%model")
    assert "ai/tiny:latest: model.gguf in its folder is missing; --repair links it to its blob again" in text
    assert "config.json in its folder is not its blob" in text

    repair_store(filled, report)
    assert report.clean and report.removed == []
    model = filled.resolve("ai/tiny")
    assert gguf.stat().st_ino == filled.blob_path(model.manifest.layers[0].digest).stat().st_ino
    config = next(layer for layer in st.manifest.layers if layer.filepath == "config.json")
    assert (st.bundle / "config.json").stat().st_ino == filled.blob_path(config.digest).stat().st_ino
    assert (tar_model.bundle / "tokenizer.json").is_file()
    assert check(filled).clean

    # A whole folder gone is rebuilt; an identical copy where a link should be is no problem.
    shutil.rmtree(tar_model.bundle)
    gguf.unlink()
    shutil.copyfile(filled.blob_path(model.manifest.layers[0].digest), gguf)
    report = check(filled)
    assert kinds(report) == [("ai/tiny-st-tar:latest", BUNDLE_MISSING)]
    repair_store(filled, report)
    assert report.clean and (tar_model.bundle / "tokenizer.json").is_file()
    assert check(filled).clean


@pytest.fixture(scope="module")
def slow_model(registry) -> str:
    """A model with one 8 MiB layer: through a slow proxy its pull takes seconds, long enough to run fsck."""
    payload = b"GGUF" + os.urandom(SLOW_BLOB_BYTES - 4)
    publish_raw(registry.host, "ai/fsck-slow", "latest", gguf_config(), mt.MODEL_CONFIG_V01,
                [(payload, mt.GGUF, {})])
    return "ai/fsck-slow:latest"


def wait_for(condition, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def test_a_pull_in_progress_is_left_alone_and_orphaned_partials_are_deleted(filled, registry, slow_model):
    """The same model pulled again while fsck runs: its download is not reported, its `.incomplete` is kept, and a
    repair that must drop a model waits for the pull instead of deleting what it counts on."""
    with FaultProxy(registry.host) as proxy:
        name = f"{proxy.host}/{slow_model}"
        pull(name, filled, registry=registry.host)
        weights = weights_of(filled, name)
        digest = "sha256:" + weights.name
        weights.unlink()  # lost: the model is pulled again, slowly
        orphan = filled.incomplete_path("sha256:" + "ab" * 32)
        orphan.write_bytes(b"x" * 4096)  # left over from a pull that was interrupted long ago
        flip_bytes(weights_of(filled, "ai/tiny"))

        proxy.rate = SLOW_RATE
        outcome: dict = {}
        puller = threading.Thread(target=lambda: outcome.update(result=pull(name, filled, registry=registry.host)))
        puller.start()
        partial = filled.incomplete_path(digest)
        wait_for(lambda: partial.exists() and partial.stat().st_size >= 256 * 1024, "the pull's partial download")

        report = check(filled)
        assert report.pulling == [name]
        assert kinds(report) == [("ai/tiny:latest", BLOB_CORRUPT),
                                 ("store", PARTIAL_ORPHANED)]
        repair_store(filled, report, wait=0.3)
        assert not orphan.exists() and partial.exists()  # the orphan went, the pull's own download stays
        corrupt = next(p for p in report.problems if p.kind == BLOB_CORRUPT)
        assert not corrupt.repaired and "a pull or package is in progress" in corrupt.outcome
        assert filled.resolve("ai/tiny") and not report.clean

        proxy.rate = None
        puller.join(timeout=60)
    assert outcome["result"].downloaded_bytes > 0 and filled.has_blob(digest)
    report = check(filled)
    assert kinds(report) == [("ai/tiny:latest", BLOB_CORRUPT)]
    repair_store(filled, report, wait=0.3)  # nothing in progress now
    assert report.clean and check(filled).clean
    assert hashlib.sha256(filled.blob_path(digest).read_bytes()).hexdigest() == digest[7:]
