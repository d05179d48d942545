"""Default locations follow Jupyter's own answers (`jupyter --data-dir`, `jupyter --runtime-dir`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

PRINT_PATHS = (
    "import json; from jupyter_modelrunner import paths; "
    "print(json.dumps({name: str(getattr(paths, name)()) for name in ('default_store_path', 'engines_dir', "
    "'jupyter_runtime_dir')}))"
)


def _run(args: list[str], env: dict[str, str]) -> str:
    return subprocess.run(args, env=env, capture_output=True, text=True, check=True).stdout.strip()


@pytest.mark.parametrize("setting", ["data and runtime dirs", "platform dirs", "defaults"])
def test_store_and_runtime_dir_follow_jupyter_core(tmp_path, setting):
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("JUPYTER_", "XDG_")) and k != "MODEL_RUNNER_STORE"}
    env["HOME"] = str(tmp_path / "home")
    if setting == "data and runtime dirs":
        env |= {"JUPYTER_DATA_DIR": str(tmp_path / "data"), "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime")}
    elif setting == "platform dirs":
        env |= {"JUPYTER_PLATFORM_DIRS": "1", "XDG_DATA_HOME": str(tmp_path / "xdg")}
    data_dir = Path(_run([sys.executable, "-m", "jupyter", "--data-dir"], env))
    runtime_dir = Path(_run([sys.executable, "-m", "jupyter", "--runtime-dir"], env))
    ours = {name: Path(value) for name, value in json.loads(_run([sys.executable, "-c", PRINT_PATHS], env)).items()}
    assert tmp_path in data_dir.parents and tmp_path in runtime_dir.parents  # the environment was honoured
    assert ours["default_store_path"] == data_dir / "modelrunner" / "store"
    assert ours["engines_dir"] == data_dir / "modelrunner" / "engines"
    assert ours["jupyter_runtime_dir"] == runtime_dir
    if setting == "data and runtime dirs":
        assert (data_dir, runtime_dir) == (tmp_path / "data", tmp_path / "runtime")


def test_model_runner_store_overrides_the_data_dir(tmp_path):
    env = os.environ | {"MODEL_RUNNER_STORE": str(tmp_path / "store"), "JUPYTER_DATA_DIR": str(tmp_path / "data")}
    ours = json.loads(_run([sys.executable, "-c", PRINT_PATHS], env))
    assert Path(ours["default_store_path"]) == tmp_path / "store"
    assert Path(ours["engines_dir"]) == tmp_path / "data" / "modelrunner" / "engines"
