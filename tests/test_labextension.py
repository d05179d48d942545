"""The JupyterLab extension as users get it: enabled in the environment, and prebuilt inside the wheel."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NAME = "jupyter-modelrunner"
SHARE = f"share/jupyter/labextensions/{NAME}"


def test_labextension_list_shows_it_enabled():
    pytest.importorskip("jupyterlab")
    result = subprocess.run([sys.executable, "-m", "jupyter", "labextension", "list"], capture_output=True,
                            text=True, timeout=120)
    listing = re.sub(r"\x1b\[[0-9;]*m", "", result.stdout + result.stderr)
    assert re.search(rf"{NAME} v\S+ enabled\s+OK \(python, {NAME}\)", listing), listing


def test_wheel_ships_the_prebuilt_extension_and_the_server_config(tmp_path):
    """A wheel needs no Node to install: the built extension is shared data, its entry point included."""
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT)],
                   check=True, capture_output=True, timeout=600)
    (wheel,) = tmp_path.glob("jupyter_modelrunner-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        data = next(n.split("/data/", 1)[0] + "/data/" for n in names if "/data/" in n)
        package = json.loads(zf.read(f"{data}{SHARE}/package.json"))
        install = json.loads(zf.read(f"{data}{SHARE}/install.json"))
    assert package["name"] == NAME
    assert f"{data}{SHARE}/{package['jupyterlab']['_build']['load']}" in names
    assert f"{data}{SHARE}/static/style.js" in names
    assert install["packageName"] == "jupyter-modelrunner"
    assert f"{data}etc/jupyter/jupyter_server_config.d/jupyter_modelrunner.json" in names
