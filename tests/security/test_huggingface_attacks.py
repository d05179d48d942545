"""A hostile Hugging Face hub (the named fake of tests/support/fakehub.py: a git tree cannot hold these names):
file names that try to leave the store or the HF cache, a redirect of a download elsewhere, and the token kept out
of logs and the store."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from jupyter_modelrunner.distribution import pull
from jupyter_modelrunner.errors import DigestMismatch, ModelRunnerError, UnsafePath
from jupyter_modelrunner.store import Store

from ..support.fakehub import FakeHub
from ..support.models import make_tiny_gguf

TOKEN = "hf_attack_test_secret_token_0123456789"


@pytest.fixture
def hostile(monkeypatch, tmp_path):
    for name in ("HF_TOKEN", "HF_HUB_OFFLINE", "HF_HUB_CACHE", "HF_TOKEN_PATH"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    with FakeHub() as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
        yield hub


def files_under(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*")} if folder.exists() else set()


@pytest.mark.parametrize("name", ["../escape-Q4_K_M.gguf", "/tmp/abs-Q4_K_M.gguf", "a/../../up-Q4_K_M.gguf",
                                  "..\\win-Q4_K_M.gguf", "mmproj/../../../x-mmproj-f16.gguf"])
def test_file_names_that_escape_are_refused_and_write_nothing(hostile, tmp_path, name):
    gguf = make_tiny_gguf(tmp_path / "tiny.gguf")
    hostile.add_repo("Evil/Repo", {name: gguf.read_bytes(), "ok-Q8_0.gguf": gguf.read_bytes()})
    before = files_under(tmp_path.parent)
    with pytest.raises(UnsafePath, match="Refusing"):
        pull("hf.co/Evil/Repo", Store(tmp_path / "store"))
    created = files_under(tmp_path.parent) - before
    allowed = (tmp_path / "store", tmp_path / "hf-home")
    assert all(any(p.is_relative_to(root) for root in allowed) for p in created), created
    assert not [p for p in created if p.is_file() and p.suffix == ".gguf"]
    assert not any(r for r in hostile.requests if "/resolve/" in r.path)  # refused before any download


def test_a_cache_snapshot_link_out_of_the_cache_is_ignored_offline(hostile, monkeypatch, tmp_path):
    """A snapshot entry that links outside the cache's blobs (a planted symlink) is not taken as the model."""
    secret = tmp_path / "secret-Q4_K_M.gguf"
    make_tiny_gguf(secret)
    repo = tmp_path / "hf-home" / "hub" / "models--Evil--Links"
    (repo / "refs").mkdir(parents=True)
    (repo / "blobs").mkdir()
    commit = "a" * 40
    (repo / "refs" / "main").write_text(commit)
    (repo / "snapshots" / commit).mkdir(parents=True)
    (repo / "snapshots" / commit / "tiny-Q4_K_M.gguf").symlink_to(secret)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelRunnerError, match="neither GGUF nor safetensors"):
        pull("hf.co/Evil/Links", Store(tmp_path / "store"))


def test_a_download_redirected_elsewhere_is_not_taken_for_the_model(hostile, tmp_path):
    """huggingface_hub follows a hub's redirects (the real Hub sends downloads to its CDN), so the guard is the
    sha256 the listing promised: bytes fetched from wherever the redirect points never become the model."""
    gguf = make_tiny_gguf(tmp_path / "tiny.gguf")
    other = make_tiny_gguf(tmp_path / "other.gguf", context_length=64)
    hostile.add_repo("Evil/Redirect", {"tiny-Q4_K_M.gguf": gguf.read_bytes()})
    hostile.add_repo("Evil/Internal", {"secret.gguf": other.read_bytes()})
    hostile.redirects["Evil/Redirect"] = f"{hostile.endpoint}/Evil/Internal/resolve/main/secret.gguf"
    store = Store(tmp_path / "store")
    with pytest.raises(DigestMismatch, match="the Hub says sha256:"):
        pull("hf.co/Evil/Redirect", store)
    assert store.models() == []


def test_the_token_is_in_no_log_and_nowhere_in_the_store(hostile, monkeypatch, tmp_path, caplog):
    gguf = make_tiny_gguf(tmp_path / "tiny.gguf")
    hostile.add_repo("Evil/Private", {"tiny-Q4_K_M.gguf": gguf.read_bytes()})
    hostile.token = TOKEN
    store = Store(tmp_path / "store")
    caplog.set_level(logging.DEBUG)
    with pytest.raises(ModelRunnerError) as refused:
        pull("hf.co/Evil/Private", store, hf_token="hf_wrong_token_9876543210")
    assert "hf_wrong_token" not in str(refused.value)
    pull("hf.co/Evil/Private", store, hf_token=TOKEN)
    assert TOKEN not in caplog.text and "hf_wrong_token" not in caplog.text
    for path in store.root.rglob("*"):
        if path.is_file() and not path.is_symlink():
            assert TOKEN.encode() not in path.read_bytes(), path
    assert not (tmp_path / "hf-home" / "token").exists()  # a token passed with a pull is not saved
    assert os.environ.get("HF_TOKEN") is None
