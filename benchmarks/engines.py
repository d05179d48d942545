"""The llama.cpp engine against its fallback, and the runner against the bare engines, in one run.

Usage: .venv/bin/python benchmarks/engines.py [--runs 3] [--streams 1,4,8,16] [--skip-vllm] [--skip-bare]

1. llama-server vs llama-cpp-python's server (the fallback), the same SmolLM2 GGUF, each behind its own
   `jupyter modelrunner serve`: aggregate tokens/s of 1, 4, 8 and 16 concurrent streams through the runner's
   OpenAI endpoint, and time to model loaded. Goals: >= 2x the fallback at 8 streams, >= 1.0x at 1 stream,
   load time <= 1.0x.
2. The scheduler against the bare engine started by hand (llama-server on TCP; vLLM's CPU build with the suite's
   tiny safetensors model): cold start to first token (goal: ratio <= 1.1) and warm tokens/s (goal: >= 0.97).
Best of N, interleaved.
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
from jupyter_modelrunner.engines.llamacpp import LlamaServer  # noqa: E402
from jupyter_modelrunner.engines.vllm import Vllm, default_vllm_python  # noqa: E402
from jupyter_modelrunner.reference import parse_reference  # noqa: E402
from jupyter_modelrunner.scheduling import Scheduler  # noqa: E402
from jupyter_modelrunner.sse import sse_events  # noqa: E402
from jupyter_modelrunner.store import Store  # noqa: E402
from tests.support.jupyter import ServerProcess  # noqa: E402
from tests.support.models import make_tiny_safetensors, smollm2_gguf  # noqa: E402

PROMPT = [{"role": "user", "content": "Write a short story about a lighthouse keeper."}]
CONTEXT = 2048
WARM_TOKENS = 128
STREAM_TOKENS = 128


EXTRA: dict = {}


def body(stream: bool) -> dict:
    return {"model": "model", "messages": PROMPT, "temperature": 0, "seed": 1, "max_tokens": WARM_TOKENS,
            "stream": stream, **EXTRA}


# -- 1. llama-server vs the fallback, through the runner's endpoint -----------------------------------------


async def one_stream(client: httpx.AsyncClient, i: int) -> int:
    """One streamed chat; the number of content pieces (one per token with both servers)."""
    request = {"model": "ai/smollm2", "stream": True, "max_tokens": STREAM_TOKENS, "temperature": 0.7, "seed": i,
               "messages": [{"role": "user", "content": f"Tell me a long story about the number {i}."}]}
    pieces = 0
    async with client.stream("POST", "engines/v1/chat/completions", json=request) as response:
        response.raise_for_status()
        async for event in sse_events(response.aiter_raw()):
            if "error" in event:
                raise RuntimeError(event["error"])
            if (event.get("choices") or [{}])[0].get("delta", {}).get("content"):
                pieces += 1
    return pieces


async def aggregate_rate(server: ServerProcess, streams: int) -> float:
    async with httpx.AsyncClient(base_url=server.url, headers=server.headers, timeout=None,
                                 trust_env=False) as client:
        started = time.perf_counter()
        tokens = await asyncio.gather(*(one_stream(client, i) for i in range(streams)))
        return sum(tokens) / (time.perf_counter() - started)


async def load_time(store: Store, engine: LlamaServer) -> float:
    """Seconds from asking for the model to its engine answering health checks (the scheduler's own load)."""
    scheduler = Scheduler(store, engines=[engine], keep_alive=-1)
    try:
        started = time.perf_counter()
        await scheduler.load("ai/smollm2")
        return time.perf_counter() - started
    finally:
        await scheduler.shutdown()


def serve(workdir: Path, store: Path, llama_server: str | None) -> ServerProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODEL_RUNNER_")}
    env.update({"MODEL_RUNNER_STORE": str(store), "NO_PROXY": "127.0.0.1,localhost", "PYTHONUNBUFFERED": "1"})
    if llama_server is not None:
        env["MODEL_RUNNER_LLAMA_SERVER"] = llama_server
    workdir.mkdir(parents=True, exist_ok=True)
    return ServerProcess.standalone(workdir, env)


def bench_implementations(tmp: Path, gguf: Path, runs: int, streams: list[int]) -> None:
    server_engine, fallback = LlamaServer(), LlamaServer(server="none")
    if server_engine.server is None:
        print("llama-server is not installed (jupyter modelrunner install-runner llama.cpp); skipped")
        return
    if not fallback.availability(probe()).ok:
        print("llama-cpp-python is not installed (pip install 'llama-cpp-python[server]'); skipped")
        return
    stores = {}
    for label in ("llama-server", "llama-cpp-python"):
        store = Store(tmp / f"store-{label}", registry="127.0.0.1:1")
        package_gguf(store, gguf, parse_reference("127.0.0.1:1/ai/smollm2"))
        Scheduler(store).configure("ai/smollm2", context_size=CONTEXT, keep_alive="-1")
        stores[label] = store
    loads: dict[str, list[float]] = {"llama-server": [], "llama-cpp-python": []}
    for _ in range(runs):
        loads["llama-server"].append(asyncio.run(load_time(stores["llama-server"], server_engine)))
        loads["llama-cpp-python"].append(asyncio.run(load_time(stores["llama-cpp-python"], fallback)))
    rates: dict[str, dict[int, list[float]]] = {label: {n: [] for n in streams} for label in stores}
    with serve(tmp / "serve-server", stores["llama-server"].root, None) as ours, \
            serve(tmp / "serve-fallback", stores["llama-cpp-python"].root, "none") as theirs:
        servers = {"llama-server": ours, "llama-cpp-python": theirs}
        for server in servers.values():
            asyncio.run(aggregate_rate(server, 1))  # load and warm up before measuring
        for _ in range(runs):
            for n in streams:
                for label, server in servers.items():
                    rates[label][n].append(asyncio.run(aggregate_rate(server, n)))
        with ours.client() as http:
            (runner,) = [e for e in http.get("engines/ps").json() if e.get("mode") != "standby"]
    ours_load, theirs_load = min(loads["llama-server"]), min(loads["llama-cpp-python"])
    print(f"llama.cpp, SmolLM2-135M Q4_1, through the endpoint (llama-server: {runner['slots']} slots of "
          f"{runner['context_size']} tokens)")
    print(f"{'':<38}{'llama-server':>14}{'fallback':>12}{'ratio':>8}")
    print(f"{'  time to model loaded (s)':<38}{ours_load:>14.2f}{theirs_load:>12.2f}{ours_load / theirs_load:>8.2f}")
    for n in streams:
        mine, fallback_rate = max(rates["llama-server"][n]), max(rates["llama-cpp-python"][n])
        label = f"  {n} stream{'s' if n > 1 else ''}, aggregate tokens/s"
        print(f"{label:<38}{mine:>14.1f}{fallback_rate:>12.1f}{mine / fallback_rate:>8.2f}")
    print("goals: >= 2.0x at 8 streams, >= 1.0x at 1 stream, load time ratio <= 1.0")


# -- 2. the scheduler against the bare engine ----------------------------------------------------------------


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
    with socket.socket() as probe_socket:
        probe_socket.bind(("127.0.0.1", 0))
        return probe_socket.getsockname()[1]


async def bare_engine(argv: list[str], port: int, env: dict | None = None, health: str = "/v1/models"
                      ) -> tuple[float, float]:
    started = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
                            start_new_session=True)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=None) as client:
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"{argv[:4]} exited with {proc.returncode}")
                try:
                    if (await client.get(health)).status_code == 200:
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


def on_tcp(argv: list[str], option: str, port: int) -> list[str]:
    """The engine's command line, listening on 127.0.0.1:port instead of its socket (`option` names the socket)."""
    argv = list(argv)
    index = argv.index(option)
    argv[index : index + 2] = ["--host", "127.0.0.1", "--port", str(port)]
    return argv


def report(label: str, ours: list[tuple[float, float]], bare: list[tuple[float, float]]) -> None:
    ttft_ours, ttft_bare = min(t for t, _ in ours), min(t for t, _ in bare)
    rate_ours, rate_bare = max(r for _, r in ours), max(r for _, r in bare)
    print(f"{label:<38}{'scheduler':>14}{'bare engine':>12}{'ratio':>8}")
    print(f"{'  cold start to first token (s)':<38}{ttft_ours:>14.2f}{ttft_bare:>12.2f}{ttft_ours / ttft_bare:>8.2f}")
    print(f"{'  warm generation (tokens/s)':<38}{rate_ours:>14.1f}{rate_bare:>12.1f}{rate_ours / rate_bare:>8.2f}")


def bench_bare_llama_server(tmp: Path, gguf: Path, runs: int) -> None:
    engine = LlamaServer()
    if engine.server is None:
        return
    store = Store(tmp / "bare-store", registry="127.0.0.1:1")
    model = package_gguf(store, gguf, parse_reference("127.0.0.1:1/ai/smollm2"))
    Scheduler(store).configure("ai/smollm2", context_size=CONTEXT)
    (tmp / "bare-llama").mkdir()
    plan = engine.plan(model, RunConfig(context_size=CONTEXT), budget=probe().memory_total)
    launch = engine.launch(model, workdir=tmp / "bare-llama", config=RunConfig(), hardware=probe(),
                           mode="completion", plan=plan)
    ours, bare = [], []
    for _ in range(runs):
        port = free_port()
        bare.append(asyncio.run(bare_engine(on_tcp(launch.argv, "--host", port), port, launch.env, "/health")))
        ours.append(asyncio.run(through_scheduler(store, "ai/smollm2", [engine])))
    report("llama-server, SmolLM2-135M Q4_1", ours, bare)


def bench_vllm(tmp: Path, runs: int) -> None:
    python = default_vllm_python()
    if python is None:
        print("vLLM: no environment found (jupyter modelrunner install-runner vllm); skipped")
        return
    folder = make_tiny_safetensors(tmp / "tiny-st")
    store = Store(tmp / "vllm-store", registry="127.0.0.1:1")
    model = package_safetensors(store, folder, parse_reference("127.0.0.1:1/ai/tiny-vllm"))
    engine = Vllm(python)
    (tmp / "bare-vllm").mkdir()
    launch = engine.launch(model, workdir=tmp / "bare-vllm", config=RunConfig(), hardware=probe(), mode="completion",
                           cache_dir=store.root / "cache" / "vllm")  # the cache the scheduler uses too
    EXTRA["ignore_eos"] = True  # random weights: make both sides generate the same number of tokens
    ours, bare = [], []
    for _ in range(runs):
        port = free_port()
        bare.append(asyncio.run(bare_engine(on_tcp(launch.argv, "--uds", port), port, launch.env)))
        ours.append(asyncio.run(through_scheduler(store, "ai/tiny-vllm", [engine])))
    EXTRA.clear()
    report("vLLM CPU, tiny safetensors (f32)", ours, bare)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--streams", default="1,4,8,16", help="concurrent streams to measure (comma-separated)")
    parser.add_argument("--skip-vllm", action="store_true")
    parser.add_argument("--skip-bare", action="store_true", help="only llama-server against the fallback")
    args = parser.parse_args()
    gguf = smollm2_gguf()
    streams = [int(n) for n in args.streams.split(",")]
    with tempfile.TemporaryDirectory(prefix="bench-engines-") as tmp:
        bench_implementations(Path(tmp), gguf, args.runs, streams)
        if not args.skip_bare:
            print()
            bench_bare_llama_server(Path(tmp), gguf, args.runs)
            if not args.skip_vllm:
                bench_vllm(Path(tmp), args.runs)
            print("goals: first-token ratio <= 1.10, tokens/s ratio >= 0.97")
    return 0


if __name__ == "__main__":
    sys.exit(main())
