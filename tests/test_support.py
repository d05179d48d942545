"""The test infrastructure itself: the registry fixtures, the models the suite builds, and SmolLM2."""

from __future__ import annotations

import gguf
import pytest
import requests
from tokenizers import Tokenizer

from jupyter_modelrunner.distribution import pull
from jupyter_modelrunner.store import Store

from .support.models import SMOLLM2_BYTES
from .support.publish import publish_gguf


def test_registry_answers_and_auth_registry_wants_credentials(registry, auth_registry):
    assert requests.get(f"{registry.url}/v2/", timeout=5).status_code == 200
    assert requests.get(f"{auth_registry.url}/v2/", timeout=5).status_code == 401
    assert requests.get(f"{auth_registry.url}/v2/", auth=("alice", "s3cret-pa55"), timeout=5).status_code == 200


def test_tiny_gguf_is_a_small_llama_with_a_chat_template(tiny_gguf):
    assert tiny_gguf.stat().st_size < 2 * 1024 * 1024
    reader = gguf.GGUFReader(tiny_gguf)
    assert reader.get_field("general.architecture").contents() == "llama"
    assert reader.get_field("llama.context_length").contents() == 512
    assert "<|im_start|>" in reader.get_field("tokenizer.chat_template").contents()
    assert len(reader.tensors) == 2 + 2 * 9 + 1


def test_tiny_safetensors_tokenizer_round_trips(tiny_safetensors):
    for name in ("model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json"):
        assert (tiny_safetensors / name).is_file()
    tokenizer = Tokenizer.from_file(str(tiny_safetensors / "tokenizer.json"))
    text = "The capital of France is Paris."
    assert tokenizer.decode(tokenizer.encode(text).ids) == text


@pytest.mark.slow
def test_smollm2_is_published_as_ai_smollm2(smollm2_file, registry, tmp_path):
    assert smollm2_file.stat().st_size == SMOLLM2_BYTES
    assert smollm2_file.read_bytes()[:4] == b"GGUF"
    digest = publish_gguf(registry.host, "ai/smollm2", smollm2_file)
    model = pull(f"{registry.host}/ai/smollm2", Store(tmp_path / "store")).model
    assert model.id == digest
    assert (model.config.architecture, model.config.quantization) == ("llama", "Q4_1")
    assert model.config.parameters == "134.52M"
