"""A vLLM interpreter with its imports done, waiting for the model it will serve.

Run by the vLLM environment's own Python (`<venv>/bin/python standby.py`), so it imports nothing of
jupyter_modelrunner: only vLLM and the standard library. Importing vLLM's OpenAI server (torch, transformers,
vLLM itself) takes 7-8 s on a CPU and is the same for every model, so the runner starts one of these ahead of
time. It prints one JSON line when ready, then blocks on stdin, touching no device: a GPU's memory stays free
until a model is handed over. The runner then writes one JSON line, `{"argv": [...], "env": {...}, "cpu": bool}`:
the server's command line (what follows `python -m vllm.entrypoints.openai.api_server`), the variables that differ
for this start, and whether it runs on the CPU, where two more of vLLM's new interpreters can be avoided (see
below); the process becomes that server. End of input (the runner went away) ends it.
"""

import json
import os
import runpy
import sys
import tempfile
import time

SERVER_MODULE = "vllm.entrypoints.openai.api_server"


def _fork_engine_core() -> None:
    """Start vLLM's engine-core process by forking this one, which has its imports done, instead of spawning a new
    interpreter that imports everything again (7-8 s on a CPU). vLLM's CPU platform forces spawn because forking
    a process whose OpenMP threads already ran is unsafe; this one has computed nothing yet."""
    import importlib
    import multiprocessing

    def fork_context():  # the same signature as vLLM's get_mp_context
        return multiprocessing.get_context("fork")

    # Every module that took vLLM's get_mp_context by name: the engine core, its workers, the DP coordinator.
    for name in ("vllm.utils.system_utils", "vllm.v1.engine.utils", "vllm.v1.executor.multiproc_executor",
                 "vllm.v1.engine.coordinator"):
        module = importlib.import_module(name)
        if hasattr(module, "get_mp_context"):
            module.get_mp_context = fork_context


def _inspect_models_in_process() -> None:
    """vLLM learns what a model class supports by importing it in a new interpreter (so that CUDA is not initialised
    in the server), 7 s on a CPU for each architecture not in its cache yet. Without CUDA, this process can do it."""
    from vllm.model_executor.models import registry

    registry._run_in_subprocess = lambda fn: fn()


def main() -> int:
    started = time.monotonic()
    __import__(SERVER_MODULE)
    imports = time.monotonic() - started
    print(json.dumps({"standby": "ready", "import_seconds": round(imports, 3), "pid": os.getpid()}), flush=True)
    line = sys.stdin.readline()
    if not line.strip():
        return 0
    order = json.loads(line)
    os.environ.update(order.get("env") or {})
    tempfile.tempdir = None  # a TMPDIR given with the order applies from now on
    if order.get("cpu"):
        _fork_engine_core()
        _inspect_models_in_process()
    sys.argv = [SERVER_MODULE, *order["argv"]]
    print(json.dumps({"standby": "serving", "waited_seconds": round(time.monotonic() - started - imports, 3)}),
          flush=True)
    runpy.run_module(SERVER_MODULE, run_name="__main__", alter_sys=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
