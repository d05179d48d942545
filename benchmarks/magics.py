"""What the magics cost: `%load_ext` time, and the display-update rate while `%%chat` streams at full speed.

Usage: .venv/bin/python benchmarks/magics.py [--runs 5] [--tokens 1500] [--load-ext-only]

(a) `%load_ext jupyter_modelrunner` in a fresh interpreter (as a new kernel is), against `%load_ext storemagic`
    (IPython's own, one magic and nothing heavy) loaded just before it in the same process as the baseline:
    median and best seconds, the goal (< 0.3 s) and the ratio; and the heavy modules the load brought in (goal:
    none). tests/test_magics.py::test_load_ext_is_cheap checks what is imported; the time is measured only here.
(b) `%%chat` with notebook output (one Markdown display updated in place) against the tiny GGUF model
    on a real `jupyter modelrunner serve` — about the fastest an engine streams here — next to the same
    request through the client alone: display updates per second (goal ≤ 20), whether the final display
    holds every token (goal: identical text), and the tokens/s ratio magic / client (goal ≥ 0.95).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from jupyter_modelrunner import client as client_module  # noqa: E402
from jupyter_modelrunner.distribution import package_gguf  # noqa: E402
from jupyter_modelrunner.reference import parse_reference  # noqa: E402
from jupyter_modelrunner.store import Store  # noqa: E402
from tests.conftest import server_env  # noqa: E402
from tests.support.jupyter import ServerProcess  # noqa: E402
from tests.support.models import make_tiny_gguf  # noqa: E402

MODEL = "127.0.0.1:1/ai/bench"
PROMPT = "Write a long story about a lighthouse keeper."

HEAVY = ("httpx", "openai", "ipywidgets", "oras", "jupyter_server", "jupyter_modelrunner.cli",
         "jupyter_modelrunner.widgets", "jupyter_modelrunner.commands")
GOAL_LOAD_EXT = 0.3

LOAD_EXT = f"""
import json, sys, time
from IPython.core.interactiveshell import InteractiveShell
shell = InteractiveShell.instance()
started = time.perf_counter()
shell.run_line_magic("load_ext", "storemagic")
baseline = time.perf_counter() - started
started = time.perf_counter()
shell.run_line_magic("load_ext", "jupyter_modelrunner")
ours = time.perf_counter() - started
print(json.dumps({{"ours": ours, "baseline": baseline, "heavy": [m for m in {HEAVY!r} if m in sys.modules]}}))
"""


def load_ext_run() -> dict:
    """One fresh interpreter: seconds of the baseline's and our `%load_ext`, and the heavy modules ours imported."""
    env = {**os.environ, "HOME": tempfile.mkdtemp(),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, "-c", LOAD_EXT], capture_output=True, text=True, check=True, env=env)
    return json.loads(done.stdout.strip().splitlines()[-1])


def print_load_ext(runs: list[dict]) -> None:
    ours, base = [r["ours"] for r in runs], [r["baseline"] for r in runs]
    median, floor = statistics.median(ours), statistics.median(base)
    heavy = sorted({m for r in runs for m in r["heavy"]})
    print(f"{'in a fresh interpreter':<38}{'median ms':>10}{'best ms':>9}{'goal ms':>9}{'of goal':>9}"
          f"{'x baseline':>12}")
    print(f"{'%load_ext jupyter_modelrunner':<38}{median * 1000:>10.1f}{min(ours) * 1000:>9.1f}"
          f"{GOAL_LOAD_EXT * 1000:>9.0f}{median / GOAL_LOAD_EXT:>9.2f}{median / floor:>12.1f}")
    print(f"{'%load_ext storemagic (the baseline)':<38}{floor * 1000:>10.1f}{min(base) * 1000:>9.1f}")
    print(f"heavy modules imported by the load: {', '.join(heavy) or 'none'} (goal: none)")


def chat_through_magic(shell, tokens: int) -> tuple[float, int, str]:
    """(seconds, display updates, final text) of one `%%chat` with notebook output."""
    from IPython.utils.capture import capture_output

    with capture_output() as captured:
        started = time.perf_counter()
        result = shell.run_cell(f"%%chat {MODEL} --new --temperature 0 --max-tokens {tokens}\n{PROMPT}")
        elapsed = time.perf_counter() - started
    if not result.success:
        raise SystemExit(f"%%chat failed: {captured.stdout}")
    return elapsed, len(captured.outputs), shell.user_ns["_chat"]


def chat_through_client(client, tokens: int) -> tuple[float, str]:
    started = time.perf_counter()
    with client.chat(MODEL, [{"role": "user", "content": PROMPT}], temperature=0, max_tokens=tokens) as stream:
        for _ in stream:
            pass
    return time.perf_counter() - started, stream.text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=1500)
    parser.add_argument("--load-ext-only", action="store_true", help="only (a): no server, no chat")
    args = parser.parse_args()

    load_ext_run()  # warm the page cache and the bytecode caches
    print_load_ext([load_ext_run() for _ in range(args.runs)])
    if args.load_ext_only:
        return

    with tempfile.TemporaryDirectory(prefix="bench-magics-") as scratch:
        workdir = Path(scratch)
        store = Store(workdir / "store")
        package_gguf(store, make_tiny_gguf(workdir / "tiny.gguf"), parse_reference(MODEL), context_size=4096)
        with ServerProcess.standalone(workdir, server_env(workdir, store.root, "127.0.0.1:1")) as server:
            from IPython.core.interactiveshell import InteractiveShell

            os.environ["MODEL_RUNNER_MAGICS_OUTPUT"] = "rich"
            client = client_module.connect(server.url, server.token)
            shell = InteractiveShell.instance()
            shell.run_line_magic("load_ext", "jupyter_modelrunner")
            chat_through_client(client, 8)  # load the engine
            rows = []
            for _ in range(args.runs):  # alternate, so both paths see the same machine load
                magic_seconds, updates, magic_text = chat_through_magic(shell, args.tokens)
                client_seconds, client_text = chat_through_client(client, args.tokens)
                rows.append((magic_seconds, updates, magic_text == client_text, client_seconds))
    print(f"\n{'run':>3} {'magic s':>8} {'updates':>8} {'updates/s':>10} {'client s':>9} {'same text':>9}")
    for i, (magic_seconds, updates, same, client_seconds) in enumerate(rows, 1):
        print(f"{i:>3} {magic_seconds:8.2f} {updates:8d} {updates / magic_seconds:10.1f} {client_seconds:9.2f} "
              f"{'yes' if same else 'NO':>9}")
    rate = statistics.median(u / s for s, u, _, _ in rows)
    ratio = statistics.median(c for *_, c in rows) / statistics.median(s for s, *_ in rows)
    print(f"\nmedian display updates/s {rate:.1f} (goal ≤ 20); every token shown: "
          f"{'yes' if all(same for _, _, same, _ in rows) else 'NO'}; tokens/s magic / client {ratio:.2f} "
          f"(goal ≥ 0.95)")


if __name__ == "__main__":
    main()
