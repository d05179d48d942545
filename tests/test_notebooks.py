"""The example notebooks, executed headless as CI runs them: nbclient, a real kernel, the real SmolLM2.

The notebooks run exactly as committed; only the kernel's environment differs from a user's:
`MODEL_RUNNER_DEFAULT_REGISTRY` makes `ai/smollm2` resolve to the test registry (seeded with SmolLM2's GGUF
and its safetensors twin `ai/smollm2-vllm`), and the store, home and Jupyter directories are private. With
no Jupyter server around, the first kernel starts an embedded runner that the later ones reuse (same store,
same registry); it is stopped at the end of the module, and with it every engine.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from .conftest import server_env
from .support.models import smollm2_twin
from .support.publish import publish_gguf, publish_safetensors
from .support.runners import stop_store_owner

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
#: Per cell: the slowest is the first chat with vLLM's CPU build (~30-55 s to start here).
CELL_TIMEOUT = 300

pytestmark = pytest.mark.slow  # SmolLM2 comes from PyPI (~93 MB, cached between runs)


@pytest.fixture(scope="session")
def smollm2_registry(registry, smollm2_file) -> str:
    """The test registry serving `ai/smollm2` (the GGUF) and `ai/smollm2-vllm` (its twin), as start.sh's does."""
    publish_gguf(registry.host, "ai/smollm2", smollm2_file)
    publish_safetensors(registry.host, "ai/smollm2-vllm", smollm2_twin(smollm2_file.parent))
    return registry.host


@pytest.fixture(scope="module")
def kernel_env(tmp_path_factory, smollm2_registry) -> Iterator[dict[str, str]]:
    """The kernels' environment: the test registry, a private store, home and Jupyter dirs, vLLM's python."""
    workdir = tmp_path_factory.mktemp("notebooks")
    env = server_env(workdir, workdir / "store", smollm2_registry)
    yield env
    stop_store_owner(Path(env["MODEL_RUNNER_STORE"]))


def execute(name: str, env: dict[str, str]) -> nbformat.NotebookNode:
    """Run every cell of `notebooks/<name>` in a fresh python3 kernel (this interpreter) with `env`."""
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    workdir = Path(env["HOME"])
    client = NotebookClient(notebook, timeout=CELL_TIMEOUT, kernel_name="python3",
                            resources={"metadata": {"path": str(workdir)}})
    client.execute(env=env)
    return notebook


def output(notebook: nbformat.NotebookNode, source_start: str) -> str:
    """Everything the cell whose source starts with `source_start` shows: streams, text, Markdown."""
    cells = [c for c in notebook.cells if c.cell_type == "code" and c.source.startswith(source_start)]
    assert len(cells) == 1, f"{len(cells)} cells start with {source_start!r}"
    parts = []
    for out in cells[0].outputs:
        if out.output_type == "stream":
            parts.append(out.text)
        elif out.output_type in ("display_data", "execute_result"):
            data = out.get("data", {})
            parts.append(data.get("text/markdown") or data.get("text/plain") or "")
            if "application/vnd.jupyter.widget-view+json" in data:
                parts.append("[widget]")
        elif out.output_type == "error":
            parts.append(f"{out.ename}: {out.evalue}")
    return "\n".join(parts)


def test_quickstart_pulls_smollm2_and_chats(kernel_env):
    started = time.monotonic()
    notebook = execute("01-quickstart.ipynb", kernel_env)

    pulled = output(notebook, "%model pull ai/smollm2")
    assert "[widget]" in pulled  # the progress bar
    assert "gguf" in pulled and "llama.cpp" in pulled  # the summary: format and engine
    assert "ai/smollm2" in output(notebook, "%model ls")
    answer = output(notebook, "%%chat ai/smollm2 --temperature 0\nWhat is the capital")
    assert "Paris" in answer
    assert "llama.cpp" in answer  # the engine that answered, under the answer
    assert output(notebook, "%%chat ai/smollm2 --temperature 0 --max-tokens 60").strip()  # the conversation goes on
    assert "words:" in output(notebook, 'print(f"{len(_chat')
    assert "[widget]" in output(notebook, "%model picker")
    assert "Paris" in output(notebook, "%%chat --new")  # the model chosen with %model use
    assert "llama.cpp" in output(notebook, "%model ps")
    assert "Unloaded" in output(notebook, "%model unload --all")
    print(f"01-quickstart: {time.monotonic() - started:.1f} s")


def test_openai_endpoint_notebook(kernel_env):
    started = time.monotonic()
    notebook = execute("02-openai-endpoint.ipynb", kernel_env)

    assert "/engines/v1" in output(notebook, "from openai import OpenAI")
    assert "ai/smollm2" in output(notebook, "for model in client.models.list()")
    assert "Paris" in output(notebook, "response = client.chat.completions.create(")
    assert len(output(notebook, "stream = client.chat.completions.create(").split()) >= 5
    embeddings = output(notebook, "import numpy as np")
    assert "3 vectors of" in embeddings and embeddings.count("similarity") == 2
    assert "Unloaded 1 model" in output(notebook, "%model unload --all")  # its chat and embedding engines, named once
    print(f"02-openai-endpoint: {time.monotonic() - started:.1f} s")


def test_engines_notebook_runs_one_model_on_llamacpp_and_vllm(kernel_env):
    started = time.monotonic()
    notebook = execute("03-engines.ipynb", kernel_env)

    status = output(notebook, "%load_ext jupyter_modelrunner")
    assert "llama.cpp" in status and "vllm" in status
    choices = output(notebook, "import jupyter_modelrunner as mr").splitlines()
    gguf_line = next(line for line in choices if line.startswith("ai/smollm2 "))
    twin_line = next(line for line in choices if line.startswith("ai/smollm2-vllm "))
    assert "gguf" in gguf_line and "→ llama.cpp on cpu" in gguf_line
    assert "safetensors" in twin_line and "→ vllm on cpu" in twin_line
    on_llamacpp = output(notebook, "%%chat ai/smollm2 --temperature 0")
    on_vllm = output(notebook, "%%chat ai/smollm2-vllm --temperature 0")
    assert "Paris" in on_llamacpp and "llama.cpp" in on_llamacpp
    assert "Paris" in on_vllm and "vllm" in on_vllm
    loaded = output(notebook, "%model ps")
    assert "llama.cpp" in loaded and "vllm" in loaded
    assert "Refused:" in output(notebook, "from jupyter_modelrunner.errors import ModelRunnerError")
    assert "Unloaded 2 models" in output(notebook, "%model unload --all")
    print(f"03-engines: {time.monotonic() - started:.1f} s")


def _outputs_of(notebook: nbformat.NotebookNode, source_start: str) -> list[dict]:
    cells = [c for c in notebook.cells if c.cell_type == "code" and c.source.startswith(source_start)]
    assert len(cells) == 1, f"{len(cells)} cells start with {source_start!r}"
    return cells[0].outputs


def test_data_notebook_labels_a_column_batches_it_and_benches(kernel_env):
    started = time.monotonic()
    notebook = execute("04-data.ipynb", kernel_env)

    assert "kettle" in output(notebook, "import jupyter_modelrunner as mr")  # the shipped dataset
    labelled = output(notebook, "from typing import Literal")
    assert "sentiment" in labelled
    sentiments = [word for word in ("positive", "negative", "mixed") if word in labelled]
    assert sentiments, labelled  # the schema's labels, in the DataFrame
    cached = output(notebook, "import time\n\nstarted = time.perf_counter()")
    assert "40 answers from the cache" in cached
    assert "batch completed: 40 of 40 requests answered" in output(notebook, "import json")
    assert "batch_answer" in output(notebook, "answers = {}")
    bench = _outputs_of(notebook, "%model bench ai/smollm2")
    pngs = [out["data"]["image/png"] for out in bench if "image/png" in out.get("data", {})]
    assert len(pngs) == 1  # the chart: tokens/s and TTFT against concurrency
    assert base64.b64decode(pngs[0]).startswith(b"\x89PNG\r\n\x1a\n")
    assert "ai/smollm2" in output(notebook, "%model bench ai/smollm2")  # and its table
    assert "Unloaded" in output(notebook, "%model unload --all")
    print(f"04-data: {time.monotonic() - started:.1f} s")
