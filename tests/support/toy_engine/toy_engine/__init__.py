"""A toy engine, as a separate distribution would ship one: it proves that an engine is one package plus one
entry-point line (`jupyter_modelrunner.engines`), with no change to jupyter-modelrunner.

It runs models of the made-up format `toy`, whose artifact is one file, `reply.txt`: its engine process (a small
OpenAI-compatible server on a Unix socket, `toy_engine.server`) answers every chat with that text.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from jupyter_modelrunner.engines.base import Availability, Engine, Launch, LoadPlan, RunConfig

#: The format of the models this engine runs (a model config's `format`).
FORMAT = "toy"


class ToyEngine(Engine):
    """Answers every chat with its model's `reply.txt`."""

    name = "toy"
    aliases = ("toy-engine",)
    formats = frozenset({FORMAT})
    overhead_bytes = 32 * 1024**2

    def availability(self, hardware: Any) -> Availability:
        return Availability(True, "the toy engine answers with its model's reply.txt", device="cpu",
                            implementation="toy-server")

    def launch(self, model: Any, *, workdir: Path, config: RunConfig, hardware: Any, mode: str,
               cache_dir: Path | None = None, plan: LoadPlan | None = None) -> Launch:
        socket = workdir / "engine.sock"
        plan = plan or self.plan(model, config, budget=1 << 62, mode=mode)
        env = {key: value for key, value in os.environ.items() if key in ("PATH", "PYTHONPATH", "HOME", "LANG")}
        return Launch(argv=[sys.executable, "-m", "toy_engine.server", str(socket), str(model.bundle / "reply.txt")],
                      env=env, socket=socket, health_path="/health", plan=plan, implementation="toy-server")
