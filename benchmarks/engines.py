"""Engine overhead of the scheduler: cold start to first token, and warm generation speed.

Usage: .venv/bin/python benchmarks/engines.py [--runs 3]

For llama.cpp with the real SmolLM2 GGUF (and vLLM's CPU build with the suite's tiny safetensors model,
when a vLLM environment is found), in one run: (a) the scheduler loads the model (on a Unix socket) and
streams a chat; (b) the bare engine is started by hand on a TCP port and sent the same request. Prints
time to first token for both (goal: ratio ≤ 1.1) and warm tokens/s for both (goal: ratio ≥ 0.97). Best of
N, interleaved.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from jupyter_modelrunner.distribution import package_gguf, package_safetensors  # noqa: E402
from jupyter_modelrunner.engines.base import RunConfig  # noqa: E402
from jupyter_modelrunner.engines.hardware import probe  # noqa: E402
from jupyter_modelrunner.engines.vllm import VllmEngine, default_vllm_python  # noqa: E402
from jupyter_modelrunner.reference import parse_reference  # noqa: E402
from jupyter_modelrunner.scheduler import Scheduler, sse_events  # noqa: E402
from jupyter_modelrunner.store import Store  # noqa: E402
from tests.support.models import make_tiny_safetensors, smollm2_gguf  # noqa: E402

PROMPT = [{"role": "user", "content": "Write a short story about a lighthouse keeper."}]
CONTEXT = 2048
WARM_TOKENS = 128


EXTRA: dict = {}


def body(stream: bool) -> dict:
    return {"model": "model", "messages": PROMPT, "temperature": 0, "seed": 1, "max_tokens": WARM_TOKENS,
            "stream": stream, **EXTRA}


async def first_token(client: httpx.AsyncClient, started: float) -> float:
    async with client.stream("POST", "/v1/chat/completions", json=body(True)) as response:
        async for event in sse_events(response.aiter_raw()):
            if (event.get("choices") or [{}])[0].get("delta", {}).get("content"):
                return time.perf_counter() - started
    raise RuntimeError("no token")


async def tokens_per_second(client: httpx.AsyncClient) -> float:
    started = time.perf_counter()
    response = await client.post("/v1/chat/completions", json=body(False))
    response.raise_for_status()
    return response.json()["usage"]["completion_tokens"] / (time.perf_counter() - started)


async def through_scheduler(store: Store, name: str, engines=None) -> tuple[float, float]:
    scheduler = Scheduler(store, keep_alive=-1, engines=engines)
    try:
        started = time.perf_counter()
        async with scheduler.use(name) as runner:
            ttft = await first_token(runner.client, started)
        async with scheduler.use(name) as runner:
            rate = await tokens_per_second(runner.client)
        return ttft, rate
    finally:
        await scheduler.shutdown()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


async def bare_engine(argv: list[str], port: int, env: dict | None = None) -> tuple[float, float]:
    started = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
                            start_new_session=True)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=None) as client:
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"{argv[:4]} exited with {proc.returncode}")
                try:
                    if (await client.get("/v1/models")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.05)
            ttft = await first_token(client, started)
            rate = await tokens_per_second(client)
        return ttft, rate
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait()


def bare_llamacpp(gguf: Path) -> tuple[list[str], int]:
    port = free_port()
    return [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--model_alias", "model",
            "--host", "127.0.0.1", "--port", str(port), "--n_ctx", str(CONTEXT), "--n_gpu_layers", "0"], port


def report(label: str, ours: list[tuple[float, float]], bare: list[tuple[float, float]]) -> None:
    ttft_ours, ttft_bare = min(t for t, _ in ours), min(t for t, _ in bare)
    rate_ours, rate_bare = max(r for _, r in ours), max(r for _, r in bare)
    print(f"{label:<36}{'scheduler':>12}{'bare engine':>14}{'ratio':>8}")
    print(f"{'  cold start to first token (s)':<36}{ttft_ours:>12.2f}{ttft_bare:>14.2f}{ttft_ours / ttft_bare:>8.2f}")
    print(f"{'  warm generation (tokens/s)':<36}{rate_ours:>12.1f}{rate_bare:>14.1f}{rate_ours / rate_bare:>8.2f}")


def bench_vllm(tmp: Path, runs: int) -> None:
    python = default_vllm_python()
    if python is None:
        print("vLLM: no environment found (bash scripts/install-engines.sh vllm); skipped")
        return
    folder = make_tiny_safetensors(tmp / "tiny-st")
    store = Store(tmp / "vllm-store", registry="127.0.0.1:1")
    model = package_safetensors(store, folder, parse_reference("127.0.0.1:1/ai/tiny-vllm"))
    engine = VllmEngine(python)
    launch = engine.launch(model, workdir=tmp / "bare-vllm", config=RunConfig(), hardware=probe(), mode="completion",
                           cache_dir=store.root / "cache" / "vllm")  # the cache the scheduler uses too
    EXTRA["ignore_eos"] = True  # random weights: make both sides generate the same number of tokens
    ours, bare = [], []
    for _ in range(runs):
        port = free_port()
        argv = [a for a in launch.argv]
        index = argv.index("--uds")
        argv[index : index + 2] = ["--host", "127.0.0.1", "--port", str(port)]
        bare.append(asyncio.run(bare_engine(argv, port, launch.env)))
        ours.append(asyncio.run(through_scheduler(store, "ai/tiny-vllm", [engine])))
    EXTRA.clear()
    report("vLLM CPU, tiny safetensors (f32)", ours, bare)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--skip-vllm", action="store_true")
    args = parser.parse_args()
    gguf = smollm2_gguf()
    with tempfile.TemporaryDirectory(prefix="bench-engines-") as tmp:
        store = Store(Path(tmp) / "store", registry="127.0.0.1:1")
        model = package_gguf(store, gguf, parse_reference("127.0.0.1:1/ai/smollm2"))
        Scheduler(store).configure("ai/smollm2", context_size=CONTEXT)
        ours, bare = [], []
        for _ in range(args.runs):
            argv, port = bare_llamacpp(model.gguf_files()[0])
            bare.append(asyncio.run(bare_engine(argv, port)))
            ours.append(asyncio.run(through_scheduler(store, "ai/smollm2")))
        report("llama.cpp, SmolLM2-135M Q4_1", ours, bare)
        if not args.skip_vllm:
            bench_vllm(Path(tmp), args.runs)
    print("goals: first-token ratio <= 1.10, tokens/s ratio >= 0.97")
    return 0


if __name__ == "__main__":
    sys.exit(main())
