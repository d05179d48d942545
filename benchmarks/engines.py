"""Engine overhead of the scheduler: cold start to first token, and warm generation speed.

Usage: .venv/bin/python benchmarks/engines.py [--runs 3]

For llama.cpp with the real SmolLM2 GGUF, in one run: (a) the scheduler loads the model (our launcher on
a Unix socket) and streams a chat; (b) the bare engine is started by hand (`python -m llama_cpp.server`
on a TCP port) and sent the same request. Prints time to first token for both (goal: ratio ≤ 1.1) and
warm tokens/s for both (goal: ratio ≥ 0.97). Best of N, interleaved.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from jupyter_modelrunner.distribution import package_gguf  # noqa: E402
from jupyter_modelrunner.reference import parse_reference  # noqa: E402
from jupyter_modelrunner.scheduler import Scheduler, sse_events  # noqa: E402
from jupyter_modelrunner.store import Store  # noqa: E402
from tests.support.models import smollm2_gguf  # noqa: E402

PROMPT = [{"role": "user", "content": "Write a short story about a lighthouse keeper."}]
CONTEXT = 2048
WARM_TOKENS = 128


def body(stream: bool) -> dict:
    return {"model": "model", "messages": PROMPT, "temperature": 0, "seed": 1, "max_tokens": WARM_TOKENS,
            "stream": stream}


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


async def through_scheduler(store: Store) -> tuple[float, float]:
    scheduler = Scheduler(store, keep_alive=-1)
    try:
        started = time.perf_counter()
        async with scheduler.use("ai/smollm2") as runner:
            ttft = await first_token(runner.client, started)
        async with scheduler.use("ai/smollm2") as runner:
            rate = await tokens_per_second(runner.client)
        return ttft, rate
    finally:
        await scheduler.shutdown()


async def bare_engine(gguf: Path) -> tuple[float, float]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--model_alias", "model",
                             "--host", "127.0.0.1", "--port", str(port), "--n_ctx", str(CONTEXT),
                             "--n_gpu_layers", "0"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=None) as client:
            while True:
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
        proc.terminate()
        proc.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    gguf = smollm2_gguf()
    with tempfile.TemporaryDirectory(prefix="bench-engines-") as tmp:
        store = Store(Path(tmp) / "store", registry="127.0.0.1:1")
        model = package_gguf(store, gguf, parse_reference("127.0.0.1:1/ai/smollm2"))
        Scheduler(store).configure("ai/smollm2", context_size=CONTEXT)
        ours, bare = [], []
        for _ in range(args.runs):
            bare.append(asyncio.run(bare_engine(model.gguf_files()[0])))
            ours.append(asyncio.run(through_scheduler(store)))
    ttft_ours, ttft_bare = min(t for t, _ in ours), min(t for t, _ in bare)
    rate_ours, rate_bare = max(r for _, r in ours), max(r for _, r in bare)
    print(f"{'llama.cpp, SmolLM2-135M Q4_1':<32}{'scheduler':>12}{'bare engine':>14}{'ratio':>8}")
    print(f"{'cold start to first token (s)':<32}{ttft_ours:>12.2f}{ttft_bare:>14.2f}{ttft_ours / ttft_bare:>8.2f}")
    print(f"{'warm generation (tokens/s)':<32}{rate_ours:>12.1f}{rate_bare:>14.1f}{rate_ours / rate_bare:>8.2f}")
    print("goals: first-token ratio <= 1.10, tokens/s ratio >= 0.97")
    return 0


if __name__ == "__main__":
    sys.exit(main())
