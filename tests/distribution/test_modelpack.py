"""CNCF ModelPack artifacts (modctl's `weight.v1.raw` / `weight.v1.tar` layers) and sharded GGUF: pushed by the
suite's own pusher to the loopback registry, pulled, laid out as DMR lays them out, and answering on llama.cpp."""

from __future__ import annotations

import asyncio

import pytest

from jupyter_modelrunner import mediatypes as mt
from jupyter_modelrunner.distribution import package_gguf, pull, push
from jupyter_modelrunner.engines.llamacpp import LlamaServer
from jupyter_modelrunner.errors import UnsupportedArtifact
from jupyter_modelrunner.reference import parse_reference
from jupyter_modelrunner.scheduling import Scheduler
from jupyter_modelrunner.store import Store

from ..support.models import make_tiny_gguf
from ..support.publish import publish_modelpack, publish_raw

pytestmark = pytest.mark.timeout(300)
HELLO = {"model": "model", "messages": [{"role": "user", "content": "Say hello"}], "temperature": 0,
         "max_tokens": 8}


@pytest.fixture(scope="module")
def engine() -> LlamaServer:
    engine = LlamaServer()
    if engine.server is None:
        pytest.skip("llama-server is not installed (jupyter modelrunner install-runner llama.cpp)")
    return engine


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> list:
    """The tiny model written as three GGUF shards (`tiny-0000N-of-00003.gguf`), as gguf-split writes them."""
    folder = tmp_path_factory.mktemp("sharded")
    make_tiny_gguf(folder / "tiny.gguf", split_max_tensors=8)
    found = sorted(folder.glob("tiny-*-of-*.gguf"))
    assert len(found) == 3, found
    return found


def answer(store: Store, name: str, engine: LlamaServer) -> dict:
    async def scenario() -> dict:
        scheduler = Scheduler(store, engines=[engine], keep_alive=60)
        try:
            async with scheduler.use(name) as runner:
                response = await runner.request("POST", "/v1/chat/completions", json=HELLO)
                assert response.status_code == 200, response.text
                return response.json()
        finally:
            await scheduler.shutdown()

    return asyncio.run(scenario())


def test_a_modelpack_raw_weight_layer_pulls_links_and_answers(store, registry, tiny_gguf, engine):
    digest = publish_modelpack(registry.host, "modelpack/tiny-raw", {"tiny.gguf": tiny_gguf})
    model = pull(f"{registry.host}/modelpack/tiny-raw", store).model
    assert model.id == digest and model.format == "gguf"
    assert model.manifest.artifact_type == mt.CNCF_MODEL_MANIFEST_ARTIFACT
    assert model.config.parameters == "1M" and model.config.created == "2025-01-01T00:00:00Z"
    gguf = model.bundle / "model.gguf"
    assert gguf.stat().st_ino == store.blob_path(model.manifest.layers[0].digest).stat().st_ino  # linked, not copied
    assert model.gguf_files() == [gguf]
    assert answer(store, "modelpack/tiny-raw", engine)["choices"][0]["message"]["content"]


def test_a_modelpack_tar_weight_layer_is_unpacked_and_answers(store, registry, tiny_gguf, engine):
    publish_modelpack(registry.host, "modelpack/tiny-tar", {"weights/tiny.gguf": tiny_gguf}, packing="tar", fmt=None)
    model = pull(f"{registry.host}/modelpack/tiny-tar", store).model
    assert model.gguf_files() == [model.bundle / "weights" / "tiny.gguf"]
    assert model.gguf_files()[0].read_bytes() == tiny_gguf.read_bytes()
    assert answer(store, "modelpack/tiny-tar", engine)["choices"][0]["message"]["content"]


def test_modelpack_names_the_format_by_file_and_finds_the_projector(store, registry, tiny_gguf, tmp_path):
    projector = tmp_path / "mmproj-tiny-f16.gguf"
    projector.write_bytes(b"GGUF-not-really")
    publish_modelpack(registry.host, "modelpack/tiny-vision", {"tiny.gguf": tiny_gguf,
                                                               "mmproj-tiny-f16.gguf": projector}, fmt=None)
    model = pull(f"{registry.host}/modelpack/tiny-vision", store).model
    assert model.format == "gguf"
    assert model.projector == model.bundle / "model.mmproj"
    assert model.projector.read_bytes() == projector.read_bytes()
    assert model.gguf_files() == [model.bundle / "model.gguf"]


def test_a_zstd_modelpack_layer_is_refused_before_anything_downloads(store, registry, tiny_gguf):
    config = b'{"config": {"format": "gguf"}, "descriptor": {"createdAt": "2025-01-01T00:00:00Z"}}'
    publish_raw(registry.host, "modelpack/tiny-zstd", "latest", config, mt.CNCF_MODEL_CONFIG_V1,
                [(b"\x28\xb5\x2f\xfd", "application/vnd.cncf.model.weight.v1.tar+zstd", {})],
                artifact_type=mt.CNCF_MODEL_MANIFEST_ARTIFACT)
    with pytest.raises(UnsupportedArtifact, match=r"zstd.*raw or tar\+gzip"):
        pull(f"{registry.host}/modelpack/tiny-zstd", store)
    assert store.models() == [] and not list((store.root / "blobs" / "sha256").iterdir())


def test_sharded_gguf_is_packaged_pushed_pulled_and_answers(tmp_path, registry, shards, engine):
    source = Store(tmp_path / "source")
    ref = parse_reference(f"{registry.host}/ai/tiny-sharded:latest")
    packaged = package_gguf(source, shards, ref)
    assert [layer.media_type for layer in packaged.manifest.layers] == [mt.GGUF] * 3
    push(source, ref.full)

    target = Store(tmp_path / "target", registry=registry.host)
    model = pull(ref.full, target).model
    assert model.id == packaged.id
    names = [path.name for path in model.gguf_files()]
    assert names == ["model-00001-of-00003.gguf", "model-00002-of-00003.gguf", "model-00003-of-00003.gguf"]
    for path, shard in zip(model.gguf_files(), shards, strict=True):
        assert path.read_bytes() == shard.read_bytes()
    # llama-server is given the first shard and finds the others beside it.
    assert answer(target, f"{registry.host}/ai/tiny-sharded", engine)["choices"][0]["message"]["content"]
