"""A vision model's multimodal projector through package, push and pull: Docker's media type on the way out, either
of the two spellings accepted on the way in, `model.mmproj` in the bundle every time."""

from __future__ import annotations

import json

import pytest

from jupyter_modelrunner import mediatypes as mt
from jupyter_modelrunner.distribution import package_gguf, pull, push
from jupyter_modelrunner.errors import UnsupportedArtifact
from jupyter_modelrunner.reference import parse_reference
from jupyter_modelrunner.store import Store

from ..support.publish import gguf_config, publish_raw


def mmproj_layers(model):
    return [layer for layer in model.manifest.layers if layer.media_type in (mt.MMPROJ, mt.MMPROJ_SPEC)]


def test_package_writes_the_projector_as_dockers_mmproj_layer(tmp_path, tiny_vision):
    store = Store(tmp_path / "store")
    model = package_gguf(store, tiny_vision.gguf, parse_reference("127.0.0.1:1/ai/tiny-vision"),
                         mmproj=tiny_vision.mmproj)
    (layer,) = mmproj_layers(model)
    assert layer.media_type == "application/vnd.docker.ai.mmproj"
    assert layer.size == tiny_vision.mmproj.stat().st_size
    assert model.projector == model.bundle / "model.mmproj"
    assert model.projector.read_bytes() == tiny_vision.mmproj.read_bytes()
    assert (model.bundle / "model.gguf").read_bytes() == tiny_vision.gguf.read_bytes()
    assert model.to_json()["multimodal"] is True
    # The config describes the language model, not the projector.
    config = json.loads(store.blob_path(model.manifest.config.digest).read_bytes())["config"]
    assert config["architecture"] == "gemma3" and config["gguf"]["general.architecture"] == "gemma3"


def test_a_model_without_a_projector_says_so(tmp_path, tiny_gguf):
    model = package_gguf(Store(tmp_path / "store"), tiny_gguf, parse_reference("127.0.0.1:1/ai/tiny"))
    assert model.projector is None and model.to_json()["multimodal"] is False


def test_package_refuses_a_projector_that_is_not_one_and_a_projector_as_the_model(tmp_path, tiny_vision, tiny_gguf):
    store = Store(tmp_path / "store")
    ref = parse_reference("127.0.0.1:1/ai/mixed-up")
    with pytest.raises(UnsupportedArtifact, match=r"not a multimodal projector.*llama.*--mmproj"):
        package_gguf(store, tiny_vision.gguf, ref, mmproj=tiny_gguf)
    with pytest.raises(UnsupportedArtifact, match="is a multimodal projector, not a model: give it with --mmproj"):
        package_gguf(store, tiny_vision.mmproj, ref)
    text = tmp_path / "notes.txt"
    text.write_text("not a gguf")
    with pytest.raises(UnsupportedArtifact, match="not a GGUF file"):
        package_gguf(store, tiny_vision.gguf, ref, mmproj=text)
    assert store.models() == []


def test_push_and_pull_keep_the_mmproj_layer_and_its_media_type(tmp_path, registry, tiny_vision):
    source = Store(tmp_path / "source")
    ref = parse_reference(f"{registry.host}/ai/tiny-vision:roundtrip")
    packaged = package_gguf(source, tiny_vision.gguf, ref, mmproj=tiny_vision.mmproj)
    pushed = push(source, ref.full)
    assert pushed.digest == packaged.id

    target = Store(tmp_path / "target")
    pulled = pull(ref.full, target).model
    assert pulled.id == packaged.id
    assert [(layer.media_type, layer.digest) for layer in mmproj_layers(pulled)] == [
        (mt.MMPROJ, mmproj_layers(packaged)[0].digest)]
    assert pulled.projector is not None and pulled.projector.read_bytes() == tiny_vision.mmproj.read_bytes()
    # Linked, not copied: the bundle's file is the blob.
    assert pulled.projector.stat().st_ino == target.blob_path(mmproj_layers(pulled)[0].digest).stat().st_ino


def test_pull_accepts_the_model_specs_spelling_of_the_mmproj_media_type(tmp_path, registry, tiny_vision):
    """docker/model-spec writes `application/vnd.docker.ai.gguf.v3.mmproj`; DMR's code writes `…ai.mmproj`."""
    digest = publish_raw(registry.host, "ai/tiny-vision-spec", "latest", gguf_config(architecture="gemma3"),
                         mt.MODEL_CONFIG_V01, [(tiny_vision.gguf, mt.GGUF, {}),
                                               (tiny_vision.mmproj, "application/vnd.docker.ai.gguf.v3.mmproj", {})])
    events = []
    model = pull(f"{registry.host}/ai/tiny-vision-spec", Store(tmp_path / "store"), on_progress=events.append).model
    assert model.id == digest
    assert not [e for e in events if e.type == "warning"]  # a known layer type, not "ignoring a layer"
    assert model.projector is not None and model.projector.read_bytes() == tiny_vision.mmproj.read_bytes()

