"""Attacks on the store from the two things that can write into it: a model artifact (its tar layers) and whoever
can write the store's `runner/` folder (the lease that tells clients where the owner listens and with what token).

Issue 19, items 8 and 10. Each test plays the attacker against the real pull code and a real registry, or the real
lease and client code on a real store folder.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from jupyter_modelrunner import client as client_module
from jupyter_modelrunner import lease as lease_module
from jupyter_modelrunner import mediatypes as mt
from jupyter_modelrunner.distribution import pull
from jupyter_modelrunner.errors import ArtifactTooLarge, ModelRunnerError, UnsafePath
from jupyter_modelrunner.lease import StoreLease, lease_is_held, read_owner
from jupyter_modelrunner.scheduling import SettingsFile
from jupyter_modelrunner.store import Store
from jupyter_modelrunner.store.fsck import fsck

from ..support.publish import gguf_config, publish_raw, tar_bytes
from ..support.runners import stop_store_owner

pytestmark = pytest.mark.timeout(300)

BOMB_BYTES = 64 * 1024 * 1024  # what each bomb would unpack to: above the floor of any layer's cap, cheap to refuse


def sha256_of(path: Path) -> str:
    hasher = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            hasher.update(chunk)
    return "sha256:" + hasher.hexdigest()


def assert_nothing_kept(store: Store, name: str) -> None:
    """A refused pull leaves no model, no half-built bundle and no blob nobody uses."""
    assert not any(name in tag for model in store.models() for tag in model.tags)
    assert not [p for p in (store.root / "bundles").iterdir() if ".tmp-" in p.name]
    assert store.df().orphans == 0


# -- item 8: tar layers --------------------------------------------------------------------------------------


def test_a_tar_layer_cannot_write_through_a_hard_link_into_another_models_blob(store, seeded, registry):
    """The attacker's manifest names the victim's GGUF blob (public: its digest is in the victim's manifest), so the
    bundle gets `model.gguf` as a hard link to the victim's blob; a dir-tar entry of the same name then opened that
    path for writing and rewrote the shared blob in place, poisoning the victim model for every later load."""
    victim = pull("ai/tiny", store).model
    (gguf_layer,) = [layer for layer in victim.manifest.layers if layer.media_type == mt.GGUF]
    blob = store.blob_path(gguf_layer.digest)
    publish_raw(registry.host, "evil/overwrite", "latest", gguf_config(), mt.MODEL_CONFIG_V01, [
        (blob.read_bytes(), mt.GGUF, {}),
        (tar_bytes({"model.gguf": b"pwned by a tar layer"}), mt.DIR_TAR, {}),
    ])

    with pytest.raises(UnsafePath, match=r"model\.gguf.*already") as refused:
        pull("evil/overwrite", store)

    assert "tar entry" in str(refused.value)
    assert sha256_of(blob) == gguf_layer.digest  # the victim's blob is byte for byte what it was
    assert sha256_of(victim.bundle / "model.gguf") == gguf_layer.digest
    assert_nothing_kept(store, "evil/overwrite")
    assert fsck(store).clean


def test_a_tar_layer_cannot_name_one_file_twice(store, registry):
    """Two entries of one name: the second used to truncate and rewrite the first (the same write-through, within
    one layer). Refused, as the artifact naming a file twice is everywhere else."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for data in (b"{}", b'{"second": true}'):
            info = tarfile.TarInfo("config.json")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    publish_raw(registry.host, "evil/twice", "latest", gguf_config(), mt.MODEL_CONFIG_V01, [
        (b"GGUF" + b"\2" * 1000, mt.GGUF, {}), (buffer.getvalue(), mt.VLLM_CONFIG_TAR, {})])
    with pytest.raises(UnsafePath, match=r"config\.json"):
        pull("evil/twice", store)
    assert_nothing_kept(store, "evil/twice")


def sparse_bomb() -> bytes:
    """A plain (uncompressed) tar of a few KiB whose one entry is a GNU sparse file (PAX format 0.1) of BOMB_BYTES:
    one 512-byte data block, the rest a hole that `tarfile` hands out as zeros, which extraction wrote to disk."""
    data = b"x" * 512
    info = tarfile.TarInfo("weights.bin")
    info.size = len(data)
    info.pax_headers = {"GNU.sparse.map": f"0,{len(data)}", "GNU.sparse.numblocks": "1",
                        "GNU.sparse.size": str(BOMB_BYTES), "GNU.sparse.name": "weights.bin"}
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        tar.addfile(info, io.BytesIO(data))
    raw = buffer.getvalue()
    with tarfile.open(fileobj=io.BytesIO(raw)) as check:  # what the pull's extraction will see
        (member,) = check.getmembers()
        assert member.sparse and member.size == BOMB_BYTES
    return raw


def gzip_bomb() -> bytes:
    """A gzip-compressed tar (tarfile's `r:*` opens it) whose one file is BOMB_BYTES of zeros: ~64 KiB on the wire."""
    buffer = io.BytesIO()
    with gzip.GzipFile(fileobj=buffer, mode="wb", compresslevel=9) as packed, \
            tarfile.open(fileobj=packed, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("tokenizer.json")
        info.size = BOMB_BYTES

        class Zeros(io.RawIOBase):
            left = BOMB_BYTES

            def readable(self) -> bool:
                return True

            def readinto(self, target) -> int:
                n = min(len(target), self.left)
                target[:n] = bytes(n)
                self.left -= n
                return n

        tar.addfile(info, io.BufferedReader(Zeros()))
    return buffer.getvalue()


@pytest.mark.parametrize("bomb", [sparse_bomb, gzip_bomb], ids=["sparse-plain-tar", "gzip-tar"])
def test_a_tar_bomb_is_refused_naming_the_cap(store, registry, bomb):
    layer = bomb()
    assert len(layer) < BOMB_BYTES // 100
    name = f"evil/bomb-{bomb.__name__}"
    publish_raw(registry.host, name, "latest", gguf_config(), mt.MODEL_CONFIG_V01, [
        (b"GGUF" + b"\3" * 1000, mt.GGUF, {}), (layer, mt.DIR_TAR, {})])
    with pytest.raises(ArtifactTooLarge, match=r"(?s)weights\.bin|tokenizer\.json") as refused:
        pull(name, store)
    message = str(refused.value)
    assert "MiB" in message and "may unpack" in message  # the cap, in a unit a user reads
    assert_nothing_kept(store, name)
    written = sum(p.stat().st_size for p in store.root.rglob("*") if p.is_file())
    assert written < 2 * len(layer) + 8 * 1024 * 1024  # nothing near the bomb's size reached the disk


def test_a_tar_layer_of_real_side_files_still_unpacks(store, seeded):
    """The caps and exclusive opens leave honest packagings alone (both tar media types, folders inside)."""
    for name in ("ai/tiny-st-tar", "ai/tiny-st-dir"):
        model = pull(name, store).model
        assert (model.bundle / "config.json").is_file()
        assert oct((model.bundle / "config.json").stat().st_mode & 0o777) == "0o644"
    assert fsck(store).clean


# -- item 10: the lease -------------------------------------------------------------------------------------------


class Listener:
    """An HTTP server standing for the attacker's: records every request's headers, answers 200 `[]`."""

    def __init__(self) -> None:
        seen = self.seen = []

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                seen.append(f"{self.path}\n{self.headers}")
                body = b"[]"
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Listener:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def store_root(tmp_path) -> Path:
    root = tmp_path / "store"
    Store(root)
    return root


def test_a_planted_token_path_is_never_read_or_sent(store_root, tmp_path, monkeypatch):
    """Whoever can write the store's `runner/` folder wrote a record whose `token_file` named another file (one
    holding a secret) and whose URL was theirs: the client read that file and sent it as its token."""
    secret = tmp_path / "secret.txt"
    secret.write_text("SECRET-0f3a9")
    holder = StoreLease(store_root)
    assert holder.acquire()  # the lock is held, as it is while any real owner lives
    try:
        with Listener() as attacker:
            record = {"url": attacker.url, "token_file": str(secret), "pid": os.getpid(), "kind": "serve",
                      "started": 0}
            (store_root / "runner" / "owner.json").write_text(json.dumps(record))
            owner = read_owner(store_root)
            assert owner is None or "SECRET" not in owner.token
            monkeypatch.setattr(client_module, "_active", None)
            try:
                location = client_module.locate(store=store_root, start=False)
            except client_module.RunnerUnreachable:
                pass
            else:
                client_module.RunnerClient(location=location).models()
            assert not any("SECRET" in request for request in attacker.seen)
    finally:
        holder.release()


@pytest.mark.parametrize("tamper", ["foreign-owner", "group-writable", "world-writable"])
def test_a_lease_record_others_could_have_written_is_refused(store_root, tamper):
    """A record (or token file) owned by another user, or one others may write, says nothing about this user's
    runner: refused with the file named, never used."""
    holder = StoreLease(store_root)
    assert holder.acquire()
    try:
        holder.publish("http://127.0.0.1:9/", "genuine", kind="serve")
        record = store_root / "runner" / "owner.json"
        if tamper == "foreign-owner":
            os.chown(record, 65534, 65534)
        else:
            record.chmod(0o620 if tamper == "group-writable" else 0o606)
        with pytest.raises(ModelRunnerError, match=r"owner\.json") as refused:
            read_owner(store_root)
        assert "not trusted" in str(refused.value)
    finally:
        holder.release()


@pytest.mark.parametrize("folder", ["store", "runner"])
def test_a_store_folder_writable_by_others_is_refused_with_the_fix(store_root, folder, tmp_path):
    """Anyone who may write the store (or its runner folder) may swap the lease record: the lease is not taken, no
    record is read, and the user is told the command that fixes it."""
    target = store_root if folder == "store" else store_root / "runner"
    target.mkdir(exist_ok=True)
    target.chmod(0o777)
    with pytest.raises(ModelRunnerError, match=r"chmod go-w") as refused:
        StoreLease(store_root).acquire()
    assert str(target) in str(refused.value)
    with pytest.raises(ModelRunnerError, match=r"chmod go-w"):
        read_owner(store_root)
    assert not lease_is_held(store_root)

    env = {**os.environ, "MODEL_RUNNER_STORE": str(store_root)}
    for name in ("MODEL_RUNNER_HOST", "MODEL_RUNNER_TOKEN", "JPY_PARENT_PID"):
        env.pop(name, None)
    try:
        done = subprocess.run([sys.executable, "-m", "jupyter_modelrunner", "ps"], capture_output=True, text=True,
                              env=env, timeout=120)
    finally:
        target.chmod(0o700)
        stop_store_owner(store_root)  # (without the fix, `ps` started an embedded runner on the open store)
    assert done.returncode != 0 and "chmod go-w" in done.stderr, done.stderr


def test_symlinks_planted_where_the_lease_and_settings_write_are_not_followed(store_root, tmp_path):
    """The old temporary names were predictable (`.owner.token.<pid>`, `.runner-config.json.<pid>.tmp`) and opened
    without O_EXCL|O_NOFOLLOW: a symlink planted there made the owner write its token into, or truncate, any file
    it could write. The lock file was opened with O_CREAT through a planted link, creating a file anywhere."""
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    runner = store_root / "runner"
    runner.mkdir(mode=0o700)
    pid = os.getpid()
    for name in (f".owner.token.{pid}", f".owner.json.{pid}"):
        (runner / name).symlink_to(victim)
    (store_root / f".runner-config.json.{pid}.tmp").symlink_to(victim)

    lease = StoreLease(store_root)
    assert lease.acquire()
    try:
        lease.publish("http://127.0.0.1:9/", "the-token", kind="serve")
        assert read_owner(store_root).token == "the-token"
    finally:
        lease.release()
    SettingsFile(store_root).update("ai/tiny:latest", context_size=2048)
    assert SettingsFile(store_root).get("ai/tiny:latest").context_size == 2048
    assert victim.read_text() == "keep me"

    created = tmp_path / "created-through-the-lock-link"
    (runner / "lease.lock").unlink()
    (runner / "lease.lock").symlink_to(created)
    with pytest.raises(ModelRunnerError, match=r"lease\.lock.*link"):
        StoreLease(store_root).acquire()
    assert not created.exists()


def test_a_guessed_temporary_name_is_never_written_through(store_root, tmp_path, monkeypatch):
    """The temporary names are random now; this fake makes the first one the attacker's guess (a fault no test can
    provoke honestly) to show the exclusive open refuses it and the write goes on under another name."""
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    runner = store_root / "runner"
    runner.mkdir(mode=0o700)
    guesses = iter(["guessed"])
    real = lease_module._random_suffix
    monkeypatch.setattr(lease_module, "_random_suffix", lambda: next(guesses, None) or real())
    (runner / ".owner.token.guessed.tmp").symlink_to(victim)
    lease = StoreLease(store_root)
    assert lease.acquire()
    try:
        lease.publish("http://127.0.0.1:9/", "the-token", kind="serve")
        assert read_owner(store_root).token == "the-token"
    finally:
        lease.release()
    assert victim.read_text() == "keep me"


def test_a_store_made_under_a_group_writable_umask_is_still_trusted(tmp_path):
    """Refusing group-writable stores must not refuse the ones this package makes where the umask is 002."""
    previous = os.umask(0o002)
    try:
        for root in (tmp_path / "by-store", tmp_path / "by-lease"):
            if root.name == "by-store":
                Store(root)
            lease = StoreLease(root)
            assert lease.acquire()
            lease.publish("http://127.0.0.1:9/", "t", kind="serve")
            assert read_owner(root).token == "t"
            lease.release()
    finally:
        os.umask(previous)
