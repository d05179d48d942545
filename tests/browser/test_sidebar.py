"""The JupyterLab extension in a real browser: Debian's Chromium, driven by playwright-core from Node.

JupyterLab runs in a subprocess with the extension, an empty store and the test registry holding `ai/tiny`.
`labextension/ui-tests/sidebar.mjs` then pulls the model from the sidebar, inserts and runs a `%%chat` cell,
watches the status bar, unloads and deletes the model, saving a screenshot of every step in
`tests/browser/artifacts/` (set UPDATE_DOCS_SCREENSHOT=1 to refresh the README's `docs/sidebar.png`).
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from ..conftest import server_env
from ..support.jupyter import ServerProcess

ROOT = Path(__file__).resolve().parents[2]
LABEXTENSION = ROOT / "labextension"
BUILT = ROOT / "jupyter_modelrunner" / "labextension"
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
DOCS_SCREENSHOT = ROOT / "docs" / "sidebar.png"
#: The step whose screenshot the README shows: sidebar with the model loaded, the chat answer, the status bar.
DOCS_STEP = "-chat-and-status-bar"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (apt-get install chromium)")


def chat_mode() -> str:
    """`magic` when this checkout has the `%%chat` magic (`%load_ext jupyter_modelrunner`), else `openai`."""
    package = importlib.import_module("jupyter_modelrunner")
    return "magic" if hasattr(package, "load_ipython_extension") else "openai"


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


def test_sidebar_pull_chat_unload_delete(tmp_path, registry, seeded):
    if not (LABEXTENSION / "node_modules" / "playwright-core").is_dir():
        pytest.fail(f"playwright-core is not installed: run `jlpm --cwd {LABEXTENSION} install`.")
    workdir = tmp_path / "lab"
    workdir.mkdir()
    # In a virtual environment Jupyter looks in the environment's folders before the user's; the other way
    # round, the private data dir's link to the fresh build wins.
    env = {**server_env(workdir, tmp_path / "store", registry.host), "JUPYTER_PREFER_ENV_PATH": "0"}
    private_lab_dirs(workdir)
    if ARTIFACTS.exists():
        shutil.rmtree(ARTIFACTS)
    mode = chat_mode()

    with ServerProcess.jupyter_lab(workdir, env, "--ModelRunner.keep_alive=10m") as lab:
        script_env = {**os.environ, "LAB_URL": lab.origin, "LAB_TOKEN": lab.token, "MODEL": "ai/tiny",
                      "CHROMIUM": str(CHROMIUM), "ARTIFACTS": str(ARTIFACTS), "CHAT_MODE": mode,
                      "NO_PROXY": "127.0.0.1,localhost",
                      "EXPECT_BUILD": json.loads((BUILT / "package.json").read_text())["jupyterlab"]["_build"]["load"]}
        started = time.monotonic()
        result = subprocess.run(["node", str(LABEXTENSION / "ui-tests" / "sidebar.mjs")], cwd=LABEXTENSION,
                                env=script_env, capture_output=True, text=True, timeout=420)
        elapsed = time.monotonic() - started
        server_log = lab.log_tail(60)

    report = f"--- browser script ({elapsed:.1f} s, chat mode {mode}) ---\n{result.stdout}\n{result.stderr}"
    print(report)
    assert result.returncode == 0, f"{report}\n--- JupyterLab log ---\n{server_log}"
    assert "all steps passed" in result.stdout

    shots = sorted(ARTIFACTS.glob("*.png"))
    assert len(shots) >= 8, [p.name for p in shots]
    if os.environ.get("UPDATE_DOCS_SCREENSHOT") == "1":
        DOCS_SCREENSHOT.parent.mkdir(exist_ok=True)
        shutil.copyfile(next(p for p in shots if DOCS_STEP in p.name), DOCS_SCREENSHOT)
