"""A store written by the code of 877d80e (before `store.py` became the `store/` package) opens unchanged today.

The fixture `tests/fixtures/store-877d80e/` was written once by that code (`tests/fixtures/make_store_877d80e.py`
says how): a GGUF model with three tags, a safetensors model packaged one layer per file, and one pulled in the
`vllm.config.tar` packaging, whose tar layer is unpacked into its bundle. Git keeps the bundle's hard links as
copies, which fsck accepts as it does where a filesystem refuses hard links.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import tarfile
from pathlib import Path

import pytest

from jupyter_modelrunner import mediatypes as mt
from jupyter_modelrunner.errors import ModelNotFound
from jupyter_modelrunner.store import Store
from jupyter_modelrunner.store.fsck import fsck

FIXTURE = Path(__file__).parent.parent / "fixtures" / "store-877d80e"
REGISTRY = "registry.example:5000"  # the default registry the fixture was written with
GGUF_ID = "sha256:b5bcc604fa3bafbfcbc50b1acb187749463704a24e43aaf848ed4ab1d40276ae"
ST_ID = "sha256:b6eb8004c8e81c7fafd5a22f8cbb892dd1a12662e968ced21fa8a0e41508d57f"
TAR_ID = "sha256:fcf4a20393ba2852fbc1c9715d6b637fcf06a6febe07d99dab07c370ba109a78"


@pytest.fixture
def old_store(tmp_path) -> Store:
    root = tmp_path / "store"
    shutil.copytree(FIXTURE, root)
    return Store(root, registry=REGISTRY)


def snapshot(root: Path) -> dict[str, str]:
    """Every file of the store that the fixture has, by content: what opening and reading must leave alone."""
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and p.relative_to(root).parts[0] not in ("locks", "tmp")}


def sha256_of(path: Path) -> str:
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


def test_the_877d80e_store_lists_resolves_reads_and_checks_clean_unchanged(old_store):
    before = snapshot(old_store.root)
    assert before == snapshot(FIXTURE)

    listed = {model.id: model for model in old_store.models()}
    assert set(listed) == {GGUF_ID, ST_ID, TAR_ID}
    assert [m.to_json()["tags"] for m in old_store.models()] == [
        ["ai/tiny:latest", "ai/tiny:v1", "other.example/team/tiny:q8"], ["ai/tiny-st:latest"], ["ai/tiny-st-tar:1.0"]]
    assert {m.format for m in listed.values()} == {"gguf", "safetensors"}

    names = {
        GGUF_ID: [f"{REGISTRY}/ai/tiny:latest", "ai/tiny", "tiny", "ai/tiny:v1", "tiny:v1",
                  "other.example/team/tiny:q8", GGUF_ID, GGUF_ID.removeprefix("sha256:"), listed[GGUF_ID].short_id,
                  f"{REGISTRY}/ai/tiny@{GGUF_ID}"],
        ST_ID: [f"{REGISTRY}/ai/tiny-st:latest", "ai/tiny-st", "tiny-st", ST_ID, listed[ST_ID].short_id],
        TAR_ID: [f"{REGISTRY}/ai/tiny-st-tar:1.0", "ai/tiny-st-tar:1.0", TAR_ID, listed[TAR_ID].short_id],
    }
    for model_id, forms in names.items():
        assert len(listed[model_id].short_id) == 12
        for name in forms:
            assert old_store.resolve(name).id == model_id, name

    # The bundles hold what the manifests say: each file its blob, the tar layer's files unpacked.
    gguf = old_store.resolve("ai/tiny")
    assert gguf.gguf_files() == [gguf.bundle / "model.gguf"]
    assert sha256_of(gguf.bundle / "model.gguf") == next(layer.digest for layer in gguf.manifest.layers
                                                         if layer.media_type == mt.GGUF)
    assert (gguf.bundle / "template.jinja").read_text().startswith("{% for message in messages %}")
    assert gguf.config.context_size == 256 and gguf.config.architecture == "llama"
    st = old_store.resolve("ai/tiny-st")
    assert json.loads((st.bundle / "config.json").read_text())["architectures"] == ["LlamaForCausalLM"]
    tarred = old_store.resolve("ai/tiny-st-tar:1.0")
    tar_layer = next(layer for layer in tarred.manifest.layers if layer.media_type in mt.TAR_LAYERS)
    with tarfile.open(fileobj=io.BytesIO(old_store.blob_path(tar_layer.digest).read_bytes())) as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar if m.isreg()}
    assert "tokenizer.json" in members
    for name, data in members.items():
        assert (tarred.bundle / name).read_bytes() == data, name
    assert (tarred.bundle / "model.safetensors").read_bytes() == (st.bundle / "model.safetensors").read_bytes()
    manifest, ref = old_store.manifest_bytes("ai/tiny:v1")
    assert hashlib.sha256(manifest).hexdigest() == GGUF_ID.removeprefix("sha256:") and ref.tag == "v1"

    report = fsck(old_store)
    assert report.clean, [p.to_json() for p in report.problems]
    assert (report.models, report.blobs) == (3, 12)
    assert old_store.df().orphans == 0 and old_store.df().model_count == 3
    assert snapshot(old_store.root) == before  # nothing rewritten by opening, reading or checking


def test_the_877d80e_store_takes_a_tag_off_and_keeps_the_model(old_store):
    result = old_store.remove("ai/tiny:v1")
    assert result.untagged == ("ai/tiny:v1",) and result.deleted is None and result.freed_bytes == 0
    with pytest.raises(ModelNotFound):
        old_store.resolve("ai/tiny:v1")
    assert old_store.resolve("ai/tiny").tags == (f"{REGISTRY}/ai/tiny:latest", "other.example/team/tiny:q8")
    index = json.loads((old_store.root / "models.json").read_text())
    assert [set(entry) for entry in index["models"]] == [{"id", "tags", "files"}] * 3  # still the format 877d80e reads
    assert fsck(old_store).clean
