"""References are normalized exactly as Docker Model Runner does (FORMAT.md §1)."""

from __future__ import annotations

import pytest

from jupyter_modelrunner.errors import InvalidReference
from jupyter_modelrunner.reference import is_insecure_registry, parse_reference

DIGEST = "sha256:" + "ab" * 32


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    monkeypatch.delenv("MODEL_RUNNER_DEFAULT_REGISTRY", raising=False)
    monkeypatch.delenv("MODEL_RUNNER_INSECURE_REGISTRIES", raising=False)


@pytest.mark.parametrize(
    ("text", "full"),
    [
        ("smollm2", "docker.io/ai/smollm2:latest"),
        ("ai/smollm2", "docker.io/ai/smollm2:latest"),
        ("ai/qwen3-vllm", "docker.io/ai/qwen3-vllm:latest"),
        ("ai/smollm2:360M-Q4_K_M", "docker.io/ai/smollm2:360M-Q4_K_M"),
        ("AI/SmolLM2:Q4_K_M", "docker.io/ai/smollm2:Q4_K_M"),
        ("docker.io/ai/smollm2", "docker.io/ai/smollm2:latest"),
        ("index.docker.io/ai/smollm2", "docker.io/ai/smollm2:latest"),
        ("myorg/model", "docker.io/myorg/model:latest"),
        ("localhost:5000/smollm2", "localhost:5000/smollm2:latest"),
        ("127.0.0.1:5000/ai/smollm2:v1", "127.0.0.1:5000/ai/smollm2:v1"),
        ("ghcr.io/org/team/model:1.0", "ghcr.io/org/team/model:1.0"),
        (f"ai/smollm2@{DIGEST}", f"docker.io/ai/smollm2@{DIGEST}"),
        (f"ai/smollm2:v2@{DIGEST}", f"docker.io/ai/smollm2:v2@{DIGEST}"),
        ("hf.co/bartowski/Llama-3.2-1B-Instruct-GGUF", "hf.co/bartowski/llama-3.2-1b-instruct-gguf:latest"),
        ("hf.co/org/repo:Q8_0", "hf.co/org/repo:Q8_0"),
        ("huggingface.co/org/repo:Q8_0", "hf.co/org/repo:Q8_0"),
        ("hf://Org/Repo:main", "hf.co/org/repo:main"),
    ],
)
def test_references_normalize_like_docker_model_runner(text, full):
    assert parse_reference(text).full == full


def test_familiar_form_hides_docker_hub():
    ref = parse_reference("smollm2")
    assert ref.familiar == "ai/smollm2:latest"
    assert ref.api_host == "registry-1.docker.io"
    assert str(parse_reference("127.0.0.1:5000/ai/x")) == "127.0.0.1:5000/ai/x:latest"


def test_default_registry_moves_bare_names(monkeypatch):
    monkeypatch.setenv("MODEL_RUNNER_DEFAULT_REGISTRY", "127.0.0.1:5555")
    assert parse_reference("smollm2").full == "127.0.0.1:5555/ai/smollm2:latest"
    assert parse_reference("smollm2", registry="mirror.example.com").full == "mirror.example.com/ai/smollm2:latest"
    assert parse_reference("ghcr.io/a/b").registry == "ghcr.io"


def test_digest_pins_the_target():
    ref = parse_reference(f"ai/smollm2:v2@{DIGEST}")
    assert ref.target == DIGEST and ref.tag == "v2"
    assert parse_reference(f"ai/smollm2@{DIGEST}").tag is None


def test_loopback_is_plain_http_and_others_need_listing(monkeypatch):
    assert parse_reference("localhost:5000/x").insecure
    assert parse_reference("127.0.0.1:5000/x").insecure
    assert not parse_reference("smollm2").insecure
    assert not is_insecure_registry("registry.lan:5000")
    monkeypatch.setenv("MODEL_RUNNER_INSECURE_REGISTRIES", "registry.lan:5000, other.lan")
    assert is_insecure_registry("registry.lan:5000")
    assert is_insecure_registry("other.lan:443")


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("ai/smol lm2", "whitespace"),
        ("https://docker.io/ai/smollm2", "scheme"),
        ("ai/smollm2@sha256:1234", "digest"),
        ("ai/smollm2:-bad", "tag"),
        ("ai/smollm2:" + "x" * 200, "tag"),
        ("ai//smollm2", "name component"),
        ("ai/smollm2!", "name component"),
        ("hf.co/onlyone", "hf.co/org/repo"),
    ],
)
def test_malformed_references_say_why(text, reason):
    with pytest.raises(InvalidReference, match=reason):
        parse_reference(text)


@pytest.mark.parametrize(
    ("text", "repo_id", "tag", "local"),
    [
        ("hf.co/Bartowski/Llama-3.2-1B-Instruct-GGUF", "Bartowski/Llama-3.2-1B-Instruct-GGUF", None,
         "hf.co/bartowski/llama-3.2-1b-instruct-gguf:latest"),
        ("huggingface.co/org/Repo:q8_0", "org/Repo", "q8_0", "hf.co/org/repo:q8_0"),
        ("hf://org/Repo:v1.0", "org/Repo", "v1.0", "hf.co/org/repo:v1.0"),
        ("https://huggingface.co/org/Repo", "org/Repo", None, "hf.co/org/repo:latest"),
    ],
)
def test_hugging_face_references_keep_the_repo_id_as_typed(text, repo_id, tag, local):
    from jupyter_modelrunner.reference import parse_hub_reference

    hub = parse_hub_reference(text)
    assert (hub.repo_id, hub.tag, hub.reference.full) == (repo_id, tag, local)


def test_other_references_are_not_hugging_face_ones():
    from jupyter_modelrunner.reference import parse_hub_reference

    assert parse_hub_reference("ai/smollm2") is None and parse_hub_reference("ghcr.io/org/model:1") is None
    with pytest.raises(InvalidReference, match=r"hf\.co/org/repo"):
        parse_hub_reference("hf.co/a/b/c")
