"""Inference keys: stored as digests only, user-only, and a change to the file is seen by a running ring."""

from __future__ import annotations

import pytest

from jupyter_modelrunner.errors import KeyNotFound, ModelRunnerError
from jupyter_modelrunner.keys import KeyRing, digest


def test_a_key_is_stored_as_its_digest_in_a_user_only_file(tmp_path):
    ring = KeyRing(tmp_path / "modelrunner" / "keys.json")
    key = ring.create("notebook-app")
    text = ring.path.read_text()
    assert key not in text and digest(key) in text
    assert ring.path.stat().st_mode & 0o777 == 0o600 and ring.path.parent.stat().st_mode & 0o777 == 0o700
    assert ring.match(key) == "notebook-app" and ring.match(key + "x") is None and ring.match("") is None


def test_another_process_revoking_is_seen_without_a_restart(tmp_path):
    path = tmp_path / "keys.json"
    server_side, cli_side = KeyRing(path), KeyRing(path)
    key = cli_side.create("app")
    assert server_side.match(key) == "app"
    cli_side.revoke("app")
    assert server_side.match(key) is None
    with pytest.raises(KeyNotFound, match="No key named 'app'"):
        cli_side.revoke("app")


def test_fixed_keys_from_the_configuration(tmp_path, monkeypatch):
    ring = KeyRing(tmp_path / "keys.json", fixed=["mrk-one", " mrk-two ", ""])
    assert ring.match("mrk-one") and ring.match("mrk-two") and ring.match("mrk-three") is None
    assert not (tmp_path / "keys.json").exists()


@pytest.mark.parametrize("name", ["", "has space", "x" * 65])
def test_names_are_checked(tmp_path, name):
    with pytest.raises(ModelRunnerError, match="1-64 characters"):
        KeyRing(tmp_path / "keys.json").create(name)


def test_a_damaged_keys_file_is_named(tmp_path):
    path = tmp_path / "keys.json"
    path.write_text("{not json")
    with pytest.raises(ModelRunnerError, match=f"Cannot read the keys file {path}"):
        KeyRing(path).records()
    assert KeyRing(path, fixed=["mrk-one"]).match("mrk-one")  # a server keeps answering: fixed keys still work
