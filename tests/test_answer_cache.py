"""The answer cache on its own (answer_cache.py): what a key depends on, when a cached answer is exact, `cache df` and
`cache clear` as the CLI and `%model` show them, and two processes writing at once."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from IPython.core.interactiveshell import InteractiveShell
from IPython.utils.capture import capture_output

from jupyter_modelrunner.answer_cache import AnswerCache, answer_key, is_deterministic, row_seed
from jupyter_modelrunner.errors import ModelRunnerError
from jupyter_modelrunner.paths import answer_cache_file

TINY = "sha256:" + "a" * 64
OTHER = "sha256:" + "b" * 64
BODY = {"model": "ai/tiny", "messages": [{"role": "user", "content": "hi"}], "temperature": 0, "max_tokens": 8}


def test_a_key_is_what_decides_the_answer_and_nothing_else():
    key = answer_key(TINY, "chat/completions", BODY)
    assert len(key) == 64 and key == answer_key(TINY, "chat/completions", dict(reversed(BODY.items())))
    # How it is delivered, or the name it was asked by, does not change the answer...
    assert key == answer_key(TINY, "chat/completions", {**BODY, "stream": True, "model": "tiny", "user": "me"})
    # ...the model's digest, the endpoint, a parameter and the input do.
    assert len({key, answer_key(OTHER, "chat/completions", BODY), answer_key(TINY, "completions", BODY),
                answer_key(TINY, "chat/completions", {**BODY, "max_tokens": 9}),
                answer_key(TINY, "chat/completions", {**BODY, "seed": 1}),
                answer_key(TINY, "chat/completions", {**BODY, "messages": [{"role": "user", "content": "hi!"}]}),
                }) == 6


def test_greedy_or_seeded_requests_are_exact_and_sampled_rows_get_a_seed_of_their_own():
    assert is_deterministic({"temperature": 0}) and is_deterministic({"temperature": 0.0})
    assert is_deterministic({"temperature": 0.8, "seed": 3})
    assert not is_deterministic({"temperature": 0.8}) and not is_deterministic({})  # the engine's default samples
    sampled = {**BODY, "temperature": 0.8}
    seed = row_seed(sampled)
    assert 0 <= seed < 2**31 and seed == row_seed({**sampled, "stream": True})  # stable: a re-run asks the same
    assert seed != row_seed({**sampled, "messages": [{"role": "user", "content": "other row"}]})


def test_answers_round_trip_and_a_damaged_entry_is_a_miss(tmp_path):
    with AnswerCache(tmp_path) as cache:
        cache.put_many("ai/tiny", TINY, "chat/completions", [("k1", {"content": "yes"}), ("k2", {"content": "no"})])
        assert cache.get_many(["k1", "k2", "k3", "k1"]) == {"k1": {"content": "yes"}, "k2": {"content": "no"}}
        cache._db.execute("UPDATE answers SET value = ? WHERE key = 'k2'", (b"{not json",))
        assert cache.get("k2") is None and cache.get("k1") == {"content": "yes"}
    assert (tmp_path / "cache" / "answers.sqlite") == answer_cache_file(tmp_path)


def test_usage_per_model_and_clear_by_name_or_id(tmp_path):
    with AnswerCache(tmp_path) as cache:
        cache.put_many("ai/tiny", TINY, "chat/completions", [(f"t{i}", {"content": "x" * 100}) for i in range(3)])
        cache.put_many("ai/other:v1", OTHER, "embeddings", [("o1", {"f32": "AAAA"})])
        usage = {u.model: u for u in cache.usage()}
        assert usage["ai/tiny"].entries == 3 and usage["ai/tiny"].model_id == TINY
        assert usage["ai/tiny"].size > 300 and usage["ai/other:v1"].entries == 1
        assert cache.file_size() > 0
        assert cache.clear("ai/nothing") == 0
        assert cache.clear("ai/tiny:latest") == 0  # asked as `ai/tiny`: the name is kept as it was asked
        assert cache.clear("ai/tiny") == 3
        assert cache.clear("b" * 12) == 1  # the id's first 12 hex digits, as `ls` shows it
        cache.put("ai/tiny:latest", TINY, "chat/completions", "t9", {"content": "y"})
        assert cache.clear("ai/tiny") == 1  # `ai/tiny` also names `ai/tiny:latest`
        cache.put("ai/tiny", TINY, "chat/completions", "t9", {"content": "y"})
        assert cache.clear() == 1 and cache.usage() == []


def test_the_cache_is_user_only_whatever_the_umask(tmp_path):
    old = os.umask(0)
    try:
        with AnswerCache(tmp_path / "store") as cache:
            cache.put("ai/tiny", TINY, "chat/completions", "k", {"content": "secret"})
    finally:
        os.umask(old)
    folder = tmp_path / "store" / "cache"
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    for path in folder.iterdir():  # the database and sqlite's -wal and -shm files
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert not stat.S_IMODE((tmp_path / "store").stat().st_mode) & 0o022  # the store's root as the lease wants it


def test_a_cache_folder_or_file_that_is_a_link_is_refused(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "store").mkdir()
    (tmp_path / "store" / "cache").symlink_to(elsewhere)
    with pytest.raises(ModelRunnerError, match="not a folder of yours"):
        AnswerCache(tmp_path / "store")
    (tmp_path / "store" / "cache").unlink()
    (tmp_path / "store" / "cache").mkdir()
    (tmp_path / "store" / "cache" / "answers.sqlite").symlink_to(elsewhere / "target.sqlite")
    with pytest.raises(ModelRunnerError, match="not a file of yours"):
        AnswerCache(tmp_path / "store")
    assert list(elsewhere.iterdir()) == []  # nothing was written through the links


WRITER = """
import sys
from jupyter_modelrunner.answer_cache import AnswerCache
with AnswerCache(sys.argv[1]) as cache:
    for i in range(150):
        cache.put("ai/tiny", "sha256:" + "a" * 64, "chat/completions", f"{sys.argv[2]}-{i}", {"content": str(i)})
print("ok")
"""


def test_two_processes_write_at_once_and_lose_nothing(tmp_path):
    AnswerCache(tmp_path).close()  # made once, as the first `map` does
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path), name], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True) for name in ("one", "two")]
    for writer in writers:
        out, err = writer.communicate(timeout=120)
        assert writer.returncode == 0 and out.strip() == "ok", err
    with AnswerCache(tmp_path) as cache:
        assert [u.entries for u in cache.usage()] == [300]
        assert cache.get("one-149") == {"content": "149"} and cache.get("two-0") == {"content": "0"}


def run_cli(*args: str, store: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MODEL_RUNNER_STORE": str(store)}
    env.pop("MODEL_RUNNER_HOST", None)
    return subprocess.run([sys.executable, "-m", "jupyter_modelrunner", *args], capture_output=True, text=True,
                          env=env, timeout=120, check=True)


def test_cache_df_and_clear_in_the_terminal_need_no_runner(tmp_path):
    """`jupyter modelrunner cache df|clear` read the store's file: no runner is started (none owns the store after)."""
    store = tmp_path / "store"
    shown = run_cli("cache", "df", store=store).stdout
    assert "No answers cached yet" in shown and not (store / "cache").exists()  # looking makes no file
    with AnswerCache(store) as cache:
        cache.put_many("ai/tiny", TINY, "chat/completions", [(f"k{i}", {"content": "x"}) for i in range(5)])
        cache.put("ai/other", OTHER, "chat/completions", "o", {"content": "y"})
    lines = run_cli("cache", "df", store=store).stdout.splitlines()
    assert lines[0] == f"Answer cache: {answer_cache_file(store)}"
    assert lines[1].split() == ["MODEL", "MODEL", "ID", "ENTRIES", "SIZE"]
    assert lines[2].split()[:3] == ["ai/tiny", "a" * 12, "5"] and lines[3].split()[:3] == ["ai/other", "b" * 12, "1"]
    assert lines[-1].startswith("6 entries, ")
    assert run_cli("cache", "clear", "--model", "ai/tiny", store=store).stdout.startswith(
        "Deleted 5 cached answers of ai/tiny")
    assert '"entries": 1' in run_cli("cache", "df", "--json", store=store).stdout
    assert run_cli("cache", "clear", store=store).stdout.startswith("Deleted 1 cached answer (")
    assert not (store / "locks").exists()  # no runner made the store its own


def test_model_cache_in_a_shell(tmp_path, monkeypatch):
    """`%model cache df|clear`: the same words in a notebook, without looking for a runner."""
    monkeypatch.setenv("MODEL_RUNNER_STORE", str(tmp_path / "store"))
    monkeypatch.setenv("MODEL_RUNNER_MAGICS_OUTPUT", "text")
    monkeypatch.setenv("MODEL_RUNNER_HOST", "http://127.0.0.1:9/")  # would fail at once if asked
    with AnswerCache(tmp_path / "store") as cache:
        cache.put("ai/tiny", TINY, "chat/completions", "k", {"content": "x"})
    InteractiveShell.clear_instance()
    shell = InteractiveShell.instance()
    try:
        shell.run_line_magic("load_ext", "jupyter_modelrunner")
        with capture_output() as captured:
            shell.run_line_magic("model", "cache df")
            shell.run_line_magic("model", "cache clear --model ai/tiny")
    finally:
        InteractiveShell.clear_instance()
    assert "ai/tiny" in captured.stdout and "1 entry, " in captured.stdout
    assert "Deleted 1 cached answer of ai/tiny" in captured.stdout
