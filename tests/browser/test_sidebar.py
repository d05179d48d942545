"""The JupyterLab extension in a real browser: Debian's Chromium, driven by playwright-core from Node.

JupyterLab runs in a subprocess with the extension, an empty store and the test registry holding `ai/tiny`.
`labextension/ui-tests/sidebar.mjs` then pulls the model from the sidebar, inserts a `%%chat` cell and runs it
once the kernel is idle (a cold machine's first kernel start takes tens of seconds), watches the status bar,
checks that the Running view follows an unload and a load made through the REST API from the server's events
(within seconds, no read of `engines/ps`), unloads and deletes the model, saving a screenshot of every step in
`tests/browser/artifacts/` (set UPDATE_DOCS_SCREENSHOT=1 to refresh the README's `docs/sidebar.png`). First it sees the
Hugging Face cache section list a GGUF of the server's HF cache, and the pull box suggest a model from the Hub (the
suite's named fake hub, tests/support/fakehub.py).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from ..conftest import server_env
from ..support.fakehub import FakeHub, fill_hf_cache, hub_model
from ..support.jupyter import ServerProcess
from ..support.publish import publish_gguf
from ..support.vision import png

ROOT = Path(__file__).resolve().parents[2]
LABEXTENSION = ROOT / "labextension"
BUILT = ROOT / "jupyter_modelrunner" / "labextension"
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
DOCS_SCREENSHOT = ROOT / "docs" / "sidebar.png"
#: The step whose screenshot the README shows: sidebar with the model loaded, the chat answer, the status bar.
DOCS_STEP = "-chat-and-status-bar"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (apt-get install chromium)")


class SlowProxy:
    """A TCP proxy to the registry that delivers about 1 MB/s, so a pull lasts long enough to watch and cancel."""

    CHUNK, PAUSE = 64 * 1024, 0.06

    def __init__(self, target: str) -> None:
        host, port = target.rsplit(":", 1)
        self.target = (host, int(port))
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.host = f"127.0.0.1:{self.listener.getsockname()[1]}"
        self.sockets: list[socket.socket] = []

    def __enter__(self) -> SlowProxy:
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        for sock in [self.listener, *self.sockets]:
            with contextlib.suppress(OSError):
                sock.close()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                client, _ = self.listener.accept()
                upstream = socket.create_connection(self.target)
                self.sockets += [client, upstream]
                threading.Thread(target=self._pump, args=(client, upstream, 0), daemon=True).start()
                threading.Thread(target=self._pump, args=(upstream, client, self.PAUSE), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, pause: float) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(self.CHUNK):
                sink.sendall(data)
                time.sleep(pause)
        for sock in (source, sink):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


@pytest.fixture(scope="module")
def big_model(registry, tmp_path_factory) -> str:
    """`ai/big`: a 40 MiB GGUF (one tensor of zeros), ~40 s through `SlowProxy`. The server reports progress
    and checks for a cancel every 4 MiB of a layer, so the tiny model is done before anything partial shows."""
    import gguf
    import numpy as np

    path = tmp_path_factory.mktemp("big") / "big.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("big-zeros")
    writer.add_tensor("padding", np.zeros(10 * 1024 * 1024, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    publish_gguf(registry.host, "ai/big", path)
    return "ai/big"


def assert_pull_stopped(store: Path, name: str) -> None:
    """The pull the browser cancelled stopped on the server: its partial blob no longer grows, the model is
    not in the index, and the downloaded part is kept for a resume."""
    partial = list((store / "blobs" / "sha256").glob("*.incomplete"))
    assert partial, "the cancelled pull kept no partial download"
    def sizes() -> list[int]:
        try:
            return [p.stat().st_size for p in partial]
        except FileNotFoundError:
            pytest.fail("the cancelled pull went on to complete")

    # The server learns that the browser left at its next progress write, and the pull stops at its next
    # write to disk; both come once per 4 MiB (~4 s at this speed): the partial file settles within seconds.
    settled, deadline = sizes(), time.monotonic() + 40
    while True:
        time.sleep(6)
        now = sizes()
        if now == settled:
            break
        assert time.monotonic() < deadline, "the cancelled pull is still downloading"
        settled = now
    time.sleep(6)
    assert sizes() == settled, "the cancelled pull is still downloading"
    tags = [tag for model in json.loads((store / "models.json").read_text())["models"] for tag in model["tags"]]
    assert not any(name in tag for tag in tags), tags


def private_lab_dirs(workdir: Path) -> None:
    """The extension as `jlpm build` just made it, and JupyterLab without news pop-ups.

    The build is linked into the server's private data dir, which JupyterLab then searches before the
    environment's (with JUPYTER_PREFER_ENV_PATH=0): the test sees the current sources even when
    `pip install -e .` copied an older build into the environment.
    """
    if not (BUILT / "package.json").exists():
        pytest.fail(f"The extension is not built: run `jlpm --cwd {LABEXTENSION} build` (scripts/test.sh does).")
    extensions = workdir / "data" / "labextensions"
    extensions.mkdir(parents=True, exist_ok=True)
    (extensions / "jupyter-modelrunner").symlink_to(BUILT, target_is_directory=True)
    labconfig = workdir / "config" / "labconfig"
    labconfig.mkdir(parents=True, exist_ok=True)
    (labconfig / "page_config.json").write_text(
        json.dumps({"disabledExtensions": {"@jupyterlab/apputils-extension:announcements": True}})
    )


#: The whole browser script: ~1 minute warm; a cold machine's first kernel start alone can take minutes.
SCRIPT_TIMEOUT = 900


@pytest.mark.timeout(SCRIPT_TIMEOUT + 300)
def test_sidebar_pull_chat_unload_delete(tmp_path, registry, seeded, big_model, tiny_vision, tiny_gguf):
    if not (LABEXTENSION / "node_modules" / "playwright-core").is_dir():
        pytest.fail(f"playwright-core is not installed: run `jlpm --cwd {LABEXTENSION} install`.")
    workdir = tmp_path / "lab"
    workdir.mkdir()
    # In a virtual environment Jupyter looks in the environment's folders before the user's; the other way
    # round, the private data dir's link to the fresh build wins.
    env = {**server_env(workdir, tmp_path / "store", registry.host), "JUPYTER_PREFER_ENV_PATH": "0"}
    private_lab_dirs(workdir)
    # For "Ask a vision model about this image": a picture in the file browser (the script packages the model).
    (workdir / "red square.png").write_bytes(png(32, 32))
    if ARTIFACTS.exists():
        shutil.rmtree(ARTIFACTS)

    # A Hugging Face cache holding a GGUF (filled by huggingface_hub from the fake hub, which also answers search).
    hub_models = [hub_model("Org/Tiny-GGUF", downloads=4321, likes=12, library="gguf", tags=["gguf"],
                            gguf_parameters=300_000)]
    with (FakeHub(models=hub_models) as hub, SlowProxy(registry.host) as slow):
        fill_hf_cache(hub, workdir / "hf" / "hub", "Org/Tiny-GGUF", {"tiny-Q4_K_M.gguf": tiny_gguf.read_bytes()})
        env.update({"HF_HOME": str(workdir / "hf"), "HF_ENDPOINT": hub.endpoint})
        result, elapsed, server_log = run_script(workdir, env, slow, big_model, tiny_vision, tmp_path)
    report = f"--- browser script ({elapsed:.1f} s) ---\n{result.stdout}\n{result.stderr}"
    print(report)
    assert result.returncode == 0, f"{report}\n--- JupyterLab log ---\n{server_log}"
    assert "all steps passed" in result.stdout and "Hugging Face cache listed" in result.stdout

    shots = sorted(ARTIFACTS.glob("*.png"))
    assert len(shots) >= 8, [p.name for p in shots]
    if os.environ.get("UPDATE_DOCS_SCREENSHOT") == "1":
        DOCS_SCREENSHOT.parent.mkdir(exist_ok=True)
        shutil.copyfile(next(p for p in shots if DOCS_STEP in p.name), DOCS_SCREENSHOT)


def run_script(workdir: Path, env: dict[str, str], slow: SlowProxy, big_model: str, tiny_vision,
               tmp_path: Path) -> tuple[subprocess.CompletedProcess, float, str]:
    """JupyterLab with `env`, and the browser script against it: its result, how long it took, the server's log."""
    with ServerProcess.jupyter_lab(workdir, env, "--Scheduler.keep_alive=10m") as lab:
        script_env = {**os.environ, "LAB_URL": lab.origin, "LAB_TOKEN": lab.token, "MODEL": "ai/tiny",
                      "VISION_MODEL": "ai/tiny-vision", "VISION_GGUF": str(tiny_vision.gguf),
                      "VISION_MMPROJ": str(tiny_vision.mmproj), "IMAGE": "red square.png",
                      "HF_CACHE_MODEL": "hf.co/org/tiny-gguf:Q4_K_M", "HUB_SUGGESTION": "hf.co/org/tiny-gguf",
                      "SLOW_MODEL": f"{slow.host}/{big_model}",
                      "CHROMIUM": str(CHROMIUM), "ARTIFACTS": str(ARTIFACTS),
                      "NO_PROXY": "127.0.0.1,localhost",
                      "EXPECT_BUILD": json.loads((BUILT / "package.json").read_text())["jupyterlab"]["_build"]["load"]}
        started = time.monotonic()
        result = subprocess.run(["node", str(LABEXTENSION / "ui-tests" / "sidebar.mjs")], cwd=LABEXTENSION,
                                env=script_env, capture_output=True, text=True, timeout=SCRIPT_TIMEOUT)
        elapsed = time.monotonic() - started
        server_log = lab.log_tail(60)
        if result.returncode == 0:
            assert_pull_stopped(tmp_path / "store", big_model)
    return result, elapsed, server_log
