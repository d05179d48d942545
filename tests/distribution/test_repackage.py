"""`package --from MODEL` (DMR's repackaging): a variant of a stored model with a new context size, chat template or
license, sharing the original's weight blobs (same files on disk, no copy)."""

from __future__ import annotations

import json

from jupyter_modelrunner import mediatypes as mt
from jupyter_modelrunner.distribution import package_gguf, repackage
from jupyter_modelrunner.reference import parse_reference
from jupyter_modelrunner.store import Store


def test_a_variant_shares_the_weights_and_changes_only_what_was_asked(tmp_path, tiny_gguf):
    store = Store(tmp_path / "store", registry="127.0.0.1:1")
    original = package_gguf(store, tiny_gguf, parse_reference("127.0.0.1:1/ai/tiny"))
    template, license_file = tmp_path / "chat.jinja", tmp_path / "LICENSE"
    template.write_text("{{ messages[0]['content'] }}")
    license_file.write_text("Apache-2.0\n")
    blobs_before = len(list((store.root / "blobs" / "sha256").iterdir()))

    variant = repackage(store, "ai/tiny", parse_reference("127.0.0.1:1/ai/tiny-8k"), context_size=8192,
                        chat_template=template, license_files=[license_file])
    assert variant.id != original.id and variant.config.context_size == 8192
    assert original.config.context_size is None  # the original is untouched
    weights = original.manifest.layers[0]
    assert variant.manifest.layers[0] == weights
    assert (variant.bundle / "model.gguf").stat().st_ino == (original.bundle / "model.gguf").stat().st_ino
    assert (variant.bundle / "template.jinja").read_text() == template.read_text()
    assert [layer.media_type for layer in variant.manifest.layers] == [mt.GGUF, mt.LICENSE, mt.CHAT_TEMPLATE]
    # New blobs: the config, the license and the template; never the weights again.
    assert len(list((store.root / "blobs" / "sha256").iterdir())) == blobs_before + 3
    config = json.loads(store.blob_path(variant.manifest.config.digest).read_bytes())
    assert config["config"]["gguf"] == json.loads(store.blob_path(original.manifest.config.digest).read_bytes()
                                                  )["config"]["gguf"]
    assert config["rootfs"]["diff_ids"] == [layer.digest for layer in variant.manifest.layers]

    # A second template replaces the first rather than adding another.
    template.write_text("{{ messages[-1]['content'] }}")
    again = repackage(store, "ai/tiny-8k", parse_reference("127.0.0.1:1/ai/tiny-8k:v2"), chat_template=template)
    assert [layer.media_type for layer in again.manifest.layers].count(mt.CHAT_TEMPLATE) == 1
    assert again.config.context_size == 8192
    # Removing the original keeps the weights the variants use.
    store.remove("ai/tiny")
    assert (again.bundle / "model.gguf").read_bytes() == tiny_gguf.read_bytes()
