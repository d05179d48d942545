"""Attacks on the answer cache of `map` and `embed` (answer_cache.py): what a model name or an input can reach.

The cache holds what the user asked and was answered, so it lives in their store only, user-only. Names and inputs
come from notebooks, data files and `--model` arguments: they must never become a path, nor select another file,
nor delete anything but cache rows. The cache's own folder and file refuse links (test_answer_cache.py).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

import jupyter_modelrunner as mr
from jupyter_modelrunner import client as client_module
from jupyter_modelrunner.answer_cache import AnswerCache
from jupyter_modelrunner.errors import ModelRunnerError
from jupyter_modelrunner.paths import answer_cache_file

pytestmark = pytest.mark.timeout(300)

HOSTILE_NAMES = ["../../../../tmp/evil", "/etc/passwd", "ai/tiny/../../x", "ai/tiny\x00.sqlite",
                 "ai/tiny'; DROP TABLE answers; --", "..", "~root/.ssh/id_rsa"]


def files_under(root: Path) -> set[Path]:
    return {p for p in root.rglob("*")} if root.exists() else set()


def test_hostile_model_names_and_inputs_never_become_paths(standalone, tmp_path, monkeypatch):
    """`map` with hostile model names is refused by the runner before anything is cached; hostile inputs are cached
    as rows of the one cache file, and every file the run made is that file (or its -wal/-shm) in the store."""
    store = tmp_path / "client-store"
    monkeypatch.setenv("MODEL_RUNNER_STORE", str(store))
    monkeypatch.setattr(client_module, "_active", None)
    client_module.connect(standalone.url, standalone.token)
    outside = tmp_path / "outside"
    outside.mkdir()
    before = files_under(Path("/tmp")) & {Path("/tmp/evil")}
    for name in HOSTILE_NAMES:
        with pytest.raises(ModelRunnerError):
            mr.map(name, ["hello"], max_tokens=2, progress=False)
    assert files_under(Path("/tmp")) & {Path("/tmp/evil")} == before
    inputs = ["../../outside/x", "/etc/passwd", "'; DROP TABLE answers; --", str(outside / "y")]
    answers = mr.map("ai/tiny", inputs, max_tokens=2, progress=False)
    assert len(answers) == 4 and list(outside.iterdir()) == []
    cache = answer_cache_file(store)
    made = {p.relative_to(store) for p in files_under(store)}
    assert made <= {Path("cache"), Path("cache") / "answers.sqlite", Path("cache") / "answers.sqlite-wal",
                    Path("cache") / "answers.sqlite-shm"}, made
    assert stat.S_IMODE(cache.parent.stat().st_mode) == 0o700
    for path in cache.parent.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600 and path.stat().st_uid == os.getuid()
    with AnswerCache(store) as answers_cache:
        assert sum(u.entries for u in answers_cache.usage()) == 4  # the DROP TABLE input is a row like the others


def test_clear_with_a_hostile_model_deletes_no_file_and_no_other_models_rows(tmp_path):
    store = tmp_path / "store"
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    with AnswerCache(store) as cache:
        cache.put("ai/tiny", "sha256:" + "a" * 64, "chat/completions", "k", {"content": "x"})
        for name in [*HOSTILE_NAMES, str(victim), "%", "_", "*", "ai/%"]:
            assert cache.clear(name) == 0, name
        assert [u.entries for u in cache.usage()] == [1]
    assert victim.read_text() == "keep me"
