"""How long everyday commands take with a runner up: `ls`, a no-op `pull`, `ps`, `status`, and `%model pull`.

Usage: .venv/bin/python benchmarks/cli.py [--runs 7]

A `jupyter modelrunner serve` owns a store holding the tiny model (pushed to a loopback registry, so `pull` asks a
real registry and finds nothing to download). Each command runs as a user would type it, a fresh process each
time, found through the store's lease; the magic runs in an IPython shell in this process. Prints the median and
best wall time of each against its goal (< 0.3 s for the commands, < 0.1 s for `%model pull` of a present model),
and against the baseline of the same run: a bare `python -c pass`, what any Python command costs here.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from jupyter_modelrunner.distribution import pull  # noqa: E402
from jupyter_modelrunner.store import Store  # noqa: E402
from tests.support.jupyter import ServerProcess  # noqa: E402
from tests.support.models import make_tiny_gguf  # noqa: E402
from tests.support.publish import publish_gguf  # noqa: E402
from tests.support.registry import LocalRegistry  # noqa: E402

COMMANDS = [("ls", ["ls"]), ("pull (present)", ["pull", "-q", "ai/tiny"]), ("ps", ["ps"]), ("status", ["status"])]
GOAL_COMMAND = 0.3
GOAL_MAGIC = 0.1


def timed(argv: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    done = subprocess.run(argv, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {done.stderr}")
    return elapsed


def magic_pull_times(runs: int, env: dict[str, str]) -> list[float]:
    from IPython.core.interactiveshell import InteractiveShell
    from IPython.utils.capture import capture_output

    os.environ.update({k: v for k, v in env.items() if k.startswith("MODEL_RUNNER_")})
    os.environ["MODEL_RUNNER_MAGICS_OUTPUT"] = "text"
    shell = InteractiveShell.instance()
    shell.run_line_magic("load_ext", "jupyter_modelrunner")
    times = []
    with capture_output():
        shell.run_line_magic("model", "pull ai/tiny")  # finds the runner once, as a kernel does
        for _ in range(runs):
            started = time.perf_counter()
            shell.run_line_magic("model", "pull -q ai/tiny")
            times.append(time.perf_counter() - started)
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-cli-") as tmp, LocalRegistry(Path(tmp) / "registry") as registry:
        publish_gguf(registry.host, "ai/tiny", make_tiny_gguf(Path(tmp) / "tiny.gguf"))
        store = Store(Path(tmp) / "store", registry=registry.host)
        pull("ai/tiny", store, registry=registry.host)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MODEL_RUNNER_", "JPY_"))}
        env.update({"MODEL_RUNNER_STORE": str(store.root), "MODEL_RUNNER_DEFAULT_REGISTRY": registry.host,
                    "NO_PROXY": "127.0.0.1,localhost"})
        workdir = Path(tmp) / "serve"
        workdir.mkdir()
        cli = [sys.executable, "-m", "jupyter_modelrunner"]
        rows = []
        with ServerProcess.standalone(workdir, env):
            for label, verb in COMMANDS:
                timed(cli + verb, env)  # warm the page cache and the runner's own first call
                times = [timed(cli + verb, env) for _ in range(args.runs)]
                rows.append((f"jupyter modelrunner {label}", times, GOAL_COMMAND))
            rows.append(("%model pull (present)", magic_pull_times(args.runs, env), GOAL_MAGIC))
            floor = statistics.median([timed([sys.executable, "-c", "pass"], env) for _ in range(args.runs)])
        print(f"{'command (runner up)':<36}{'median s':>10}{'best s':>9}{'goal s':>8}{'of goal':>9}{'x python':>10}")
        for label, times, goal in rows:
            median = statistics.median(times)
            print(f"{label:<36}{median:>10.3f}{min(times):>9.3f}{goal:>8.2f}{median / goal:>9.2f}"
                  f"{median / floor:>10.1f}")
        print(f"{'python -c pass (the baseline)':<36}{floor:>10.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
