"""vLLM's time to the first answered token, plain `api_server` against ours, cold and warm; and throughput.

Usage: .venv/bin/python benchmarks/vllm_start.py [--runs 2] [--streams 16]

Model: the suite's tiny safetensors model (random weights, f32), vLLM's CPU build from `install-runner vllm`.

- plain: `python -m vllm.entrypoints.openai.api_server` with only the flags it needs to start on this machine
  (`--max-model-len`, `--kv-cache-memory-bytes`); time from starting the process to the first streamed token;
  cold = empty cache folders, warm = the same folders again.
- ours: a `jupyter modelrunner serve` already up (its vLLM standby ready, as it is a few seconds after the runner
  starts), time from the chat request through its OpenAI endpoint to the first token, the model not loaded;
  cold = a store whose caches are empty, warm = the next load (after an unload).
- ours, no standby: the same with `MODEL_RUNNER_VLLM_STANDBY=0`.
- throughput: aggregate tokens/s of N concurrent streams of 128 tokens (ignore_eos), plain vs ours through the
  runner's endpoint, and ours straight to the engine's socket (what the relay through the server costs).
Goals: first token <= 0.5x plain cold and <= 0.3x plain warm; throughput >= 0.95x.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from jupyter_modelrunner.distribution import package_safetensors  # noqa: E402
from jupyter_modelrunner.engines.vllm import default_vllm_python  # noqa: E402
from jupyter_modelrunner.reference import parse_reference  # noqa: E402
from jupyter_modelrunner.sse import sse_events  # noqa: E402
from jupyter_modelrunner.store import Store  # noqa: E402
from tests.support.jupyter import ServerProcess  # noqa: E402
from tests.support.models import make_tiny_safetensors  # noqa: E402
from tests.support.registry import find_free_port  # noqa: E402

CONTEXT = 512
KV_BYTES = 256 * 1024**2
TOKENS = 128


def chat(model: str, i: int = 0, stream: bool = True) -> dict:
    return {"model": model, "stream": stream, "max_tokens": TOKENS, "temperature": 0, "ignore_eos": True,
            "messages": [{"role": "user", "content": f"Tell me about the number {i}."}]}


async def first_token(client: httpx.AsyncClient, path: str, body: dict, started: float) -> float:
    async with client.stream("POST", path, json=body) as response:
        response.raise_for_status()
        async for event in sse_events(response.aiter_raw()):
            if (event.get("choices") or [{}])[0].get("delta", {}).get("content"):
                return time.perf_counter() - started
    raise RuntimeError("the stream ended without a token")


async def aggregate(client: httpx.AsyncClient, path: str, model: str, streams: int) -> float:
    async def one(i: int) -> int:
        pieces = 0
        async with client.stream("POST", path, json=chat(model, i)) as response:
            async for event in sse_events(response.aiter_raw()):
                if (event.get("choices") or [{}])[0].get("delta", {}).get("content"):
                    pieces += 1
        return pieces

    started = time.perf_counter()
    counts = await asyncio.gather(*(one(i) for i in range(streams)))
    return sum(counts) / (time.perf_counter() - started)


# -- plain vLLM ---------------------------------------------------------------------------------------------


def plain_env(cache: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MODEL_RUNNER_", "VLLM_"))}
    env.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1",
                "VLLM_CACHE_ROOT": str(cache / "vllm"), "XDG_CACHE_HOME": str(cache),
                "TORCHINDUCTOR_CACHE_DIR": str(cache / "inductor"), "TMPDIR": str(cache / "tmp")})
    (cache / "tmp").mkdir(parents=True, exist_ok=True)
    return env


async def plain(python: str, folder: Path, cache: Path, streams: int | None) -> tuple[float, float | None]:
    port = find_free_port()
    argv = [python, "-m", "vllm.entrypoints.openai.api_server", "--model", str(folder), "--served-model-name",
            "model", "--host", "127.0.0.1", "--port", str(port), "--max-model-len", str(CONTEXT),
            "--kv-cache-memory-bytes", str(KV_BYTES)]
    started = time.perf_counter()
    process = subprocess.Popen(argv, env=plain_env(cache), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=None, trust_env=False) as client:
            while True:
                if process.poll() is not None:
                    raise RuntimeError(f"plain vLLM exited with {process.returncode}")
                try:
                    if (await client.get("/health")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.1)
            ttft = await first_token(client, "/v1/chat/completions", chat("model"), started)
            rate = await aggregate(client, "/v1/chat/completions", "model", streams) if streams else None
        return ttft, rate
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait()


# -- ours ---------------------------------------------------------------------------------------------------


def wait_for_standby(server: ServerProcess, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    with server.client() as http:
        while time.monotonic() < deadline:
            if any(e.get("mode") == "standby" and e.get("state") == "standby" for e in http.get("engines/ps").json()):
                return
            time.sleep(0.2)
    raise RuntimeError("the standby did not become ready")


async def ours(server: ServerProcess, streams: int | None, standby: bool,
               sockets: Path) -> tuple[float, float | None, float | None, dict]:
    """Time to the first token through the runner's endpoint; with `streams`, aggregate tokens/s through the
    endpoint and straight to the engine's socket (under `sockets`), which tells the relay's cost apart."""
    if standby:
        wait_for_standby(server)
    direct = None
    async with httpx.AsyncClient(base_url=server.url, headers=server.headers, timeout=None, trust_env=False) as client:
        started = time.perf_counter()
        ttft = await first_token(client, "engines/v1/chat/completions", chat("ai/tiny-vllm"), started)
        rate = await aggregate(client, "engines/v1/chat/completions", "ai/tiny-vllm", streams) if streams else None
        if streams:
            (socket,) = sockets.glob("modelrunner-*/vllm-*/engine.sock")
            async with httpx.AsyncClient(transport=httpx.AsyncHTTPTransport(uds=str(socket)), timeout=None,
                                         base_url="http://engine") as engine:
                direct = await aggregate(engine, "/v1/chat/completions", "model", streams)
        (runner,) = [e for e in (await client.get("engines/ps")).json() if e["mode"] != "standby"]
        await client.post("engines/unload", json={"all": True})
    return ttft, rate, direct, runner.get("load") or {}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2, help="warm measurements (best of)")
    parser.add_argument("--streams", type=int, default=16)
    args = parser.parse_args()
    python = default_vllm_python()
    if python is None:
        print("vLLM is not installed (jupyter modelrunner install-runner vllm)")
        return 1
    with tempfile.TemporaryDirectory(prefix="bench-vllm-") as tmp_name:
        tmp = Path(tmp_name)
        folder = make_tiny_safetensors(tmp / "tiny-st")
        results: dict[str, list[float]] = {}
        rates: dict[str, float] = {}

        # plain: cold, then warm with the same cache folders
        ttft, _ = asyncio.run(plain(python, folder, tmp / "plain-cache", None))
        results["plain cold"] = [ttft]
        warm = [asyncio.run(plain(python, folder, tmp / "plain-cache", args.streams if i == 0 else None))
                for i in range(args.runs)]
        results["plain warm"] = [t for t, _ in warm]
        rates["plain"] = warm[0][1] or 0.0

        for label, standby in (("ours", True), ("ours, no standby", False)):
            store = Store(tmp / f"store-{label}", registry="127.0.0.1:1")
            package_safetensors(store, folder, parse_reference("127.0.0.1:1/ai/tiny-vllm"))
            env = {k: v for k, v in os.environ.items() if not k.startswith("MODEL_RUNNER_")}
            sockets = Path(tempfile.mkdtemp(prefix="vb-", dir="/tmp"))  # short: socket paths have 107 bytes
            env.update({"MODEL_RUNNER_STORE": str(store.root), "MODEL_RUNNER_VLLM_STANDBY": "1" if standby else "0",
                        "XDG_RUNTIME_DIR": str(sockets)})
            (tmp / label).mkdir()
            with ServerProcess.standalone(tmp / label, env) as server:
                with server.client() as http:  # the context the plain server had
                    http.post("engines/_configure", json={"model": "ai/tiny-vllm", "context-size": CONTEXT})
                ttft, *_ = asyncio.run(ours(server, None, standby, sockets))
                results[f"{label} cold"] = [ttft]
                warm_runs = [asyncio.run(ours(server, args.streams if i == 0 and standby else None, standby, sockets))
                             for i in range(args.runs)]
                results[f"{label} warm"] = [run[0] for run in warm_runs]
                if standby:
                    rates["ours"], rates["ours, straight to the engine's socket"] = (
                        warm_runs[0][1] or 0.0, warm_runs[0][2] or 0.0)
                    print(f"({label}: the runner's own phases of its last load: {json.dumps(warm_runs[-1][3])})")

    plain_cold, plain_warm = min(results["plain cold"]), min(results["plain warm"])
    print(f"\n{'time to the first answered token (s)':<42}{'cold':>8}{'x plain':>9}{'warm':>8}{'x plain':>9}")
    for label in ("plain", "ours", "ours, no standby"):
        cold, warm_best = min(results[f"{label} cold"]), min(results[f"{label} warm"])
        print(f"{label:<42}{cold:>8.1f}{cold / plain_cold:>9.2f}{warm_best:>8.1f}{warm_best / plain_warm:>9.2f}")
    print(f"\n{args.streams} streams of {TOKENS} tokens{'aggregate tokens/s':>26}{'x plain':>9}")
    for label, rate in rates.items():
        print(f"{label:<42}{rate:>8.1f}{rate / rates['plain']:>9.2f}")
    print("goals: cold <= 0.50x, warm <= 0.30x, throughput >= 0.95x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
