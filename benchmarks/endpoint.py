"""What the Jupyter endpoint adds on top of the engine: tokens/s, time to first byte, server responsiveness.

Usage: .venv/bin/python benchmarks/endpoint.py [--model smollm2|tiny] [--runs 7]

In one run, with the same llama.cpp engine build and settings on both paths:
  (a) straight to an engine started by our scheduler in this process, over its Unix socket;
  (b) through a real `jupyter server` with the extension (auth, routing, the streaming proxy) and the
      `/v1/chat/completions` route, exactly as the `openai` SDK in a notebook calls it.
Requests alternate between the paths. Prints medians, the tokens/s ratio (goal ≥ 0.97), the added time to
first byte (goal ≤ 5 ms at the median), and the p99 latency of Jupyter's `/api/status` while 16 chats
stream through the endpoint (goal < 50 ms). Then 16 chats at once on each path (512 tokens each, `ignore_eos`):
aggregate server-sent events/s and the ratio, and the server process's own CPU time per 1000 events it relays.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from jupyter_modelrunner.distribution import package_gguf  # noqa: E402
from jupyter_modelrunner.reference import parse_reference  # noqa: E402
from jupyter_modelrunner.scheduling import Scheduler  # noqa: E402
from jupyter_modelrunner.store import Store  # noqa: E402
from tests.conftest import server_env  # noqa: E402
from tests.support.jupyter import ServerProcess  # noqa: E402
from tests.support.models import make_tiny_gguf, smollm2_gguf  # noqa: E402

PROMPT = [{"role": "user", "content": "Write a short story about a lighthouse keeper."}]
MODEL = "127.0.0.1:1/ai/bench"


def body(max_tokens: int) -> dict:
    return {"model": MODEL, "messages": PROMPT, "temperature": 0, "seed": 1, "max_tokens": max_tokens,
            "stream": True}


def stream_once(client: httpx.Client, path: str, max_tokens: int) -> tuple[float, float, int]:
    """(time to first byte, tokens/s after the first token, tokens) of one streamed chat."""
    started = time.perf_counter()
    first_byte = first_token = None
    tokens = 0
    with client.stream("POST", path, json=body(max_tokens)) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if first_byte is None:
                first_byte = time.perf_counter() - started
            if not line.startswith("data: {"):
                continue
            event = json.loads(line[6:])
            if (event.get("choices") or [{}])[0].get("delta", {}).get("content"):
                tokens += 1
                if first_token is None:
                    first_token = time.perf_counter()
    elapsed = time.perf_counter() - (first_token or started)
    return first_byte or 0.0, (tokens - 1) / elapsed if tokens > 1 else 0.0, tokens


class DirectEngine:
    """The engine as our scheduler starts it, in this process; requests go straight to its socket."""

    def __init__(self, store: Store) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.scheduler = Scheduler(store, keep_alive=-1)
        runner = asyncio.run_coroutine_threadsafe(self.scheduler.load(MODEL), self.loop).result(300)
        self.launch = runner.launch
        self.client = self.fresh_client()

    def fresh_client(self) -> httpx.Client:
        return httpx.Client(transport=httpx.HTTPTransport(uds=str(self.launch.socket)), base_url="http://engine",
                            headers=self.launch.headers, timeout=300)

    def close(self) -> None:
        self.client.close()
        asyncio.run_coroutine_threadsafe(self.scheduler.shutdown(), self.loop).result(60)
        self.loop.call_soon_threadsafe(self.loop.stop)


def status_under_load(server: ServerProcess, streams: int, max_tokens: int) -> tuple[list[float], int]:
    """Latencies of `GET /api/status` polled while `streams` chats stream through the endpoint."""
    done: list[int] = []

    def chat() -> None:
        with server.client() as client:
            done.append(stream_once(client, "v1/chat/completions", max_tokens)[2])

    threads = [threading.Thread(target=chat) for _ in range(streams)]
    for thread in threads:
        thread.start()
    latencies = []
    with httpx.Client(base_url=server.origin, headers=server.headers, trust_env=False) as http:
        while any(t.is_alive() for t in threads):
            started = time.perf_counter()
            http.get("api/status").raise_for_status()
            latencies.append(time.perf_counter() - started)
            time.sleep(0.01)
    for thread in threads:
        thread.join()
    return latencies, len(done)


def server_cpu_seconds(pid: int) -> float:
    """User + system CPU time of the server process itself (not its engines), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def concurrent_events(make_client: Callable[[], httpx.Client], path: str, streams: int,
                      max_tokens: int) -> tuple[int, float]:
    """(server-sent events received, seconds) for `streams` chats streamed at once, each event counted whether or
    not it carries text (a random-weight model's often carry none): the relay's work is per event."""
    counts: list[int] = []

    def chat() -> None:
        events = 0
        with make_client() as client, client.stream("POST", path, json={
                **body(max_tokens), "ignore_eos": True}) as response:
            for line in response.iter_lines():
                events += line.startswith("data: {")
        counts.append(events)

    threads = [threading.Thread(target=chat) for _ in range(streams)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(counts), time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["smollm2", "tiny"], default="smollm2")
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--max-tokens", type=int, default=128)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-endpoint-"))
    store = Store(work / "store", registry="127.0.0.1:1")
    weights = smollm2_gguf() if args.model == "smollm2" else make_tiny_gguf(work / "tiny.gguf")
    package_gguf(store, weights, parse_reference(MODEL), context_size=16384)

    direct = DirectEngine(store)
    server = ServerProcess.jupyter_server(work, server_env(work, store.root, "127.0.0.1:1"),
                                          "--Scheduler.keep_alive=-1").start()
    try:
        proxied = server.client()
        for client, path in ((direct.client, "/v1/chat/completions"), (proxied, "v1/chat/completions")):
            stream_once(client, path, 8)  # warm-up: the server's engine loads here
        results: dict[str, list[tuple[float, float, int]]] = {"engine": [], "endpoint": []}
        for _ in range(args.runs):
            results["engine"].append(stream_once(direct.client, "/v1/chat/completions", args.max_tokens))
            results["endpoint"].append(stream_once(proxied, "v1/chat/completions", args.max_tokens))
        latencies, finished = status_under_load(server, 16, min(args.max_tokens, 32))
        # Many streams at once: what the relay costs the server per event, against the engine's own rate.
        load: dict[str, list[tuple[int, float]]] = {"engine": [], "endpoint": []}
        cpu: list[float] = []
        for _ in range(3):
            load["engine"].append(concurrent_events(direct.fresh_client, "/v1/chat/completions", 16, 512))
            before = server_cpu_seconds(server.process.pid)
            load["endpoint"].append(concurrent_events(server.client, "v1/chat/completions", 16, 512))
            cpu.append((server_cpu_seconds(server.process.pid) - before) / load["endpoint"][-1][0])
    finally:
        direct.close()
        server.stop()

    ttfb = {k: statistics.median(r[0] for r in v) * 1000 for k, v in results.items()}
    tps = {k: statistics.median(r[1] for r in v) for k, v in results.items()}
    p99 = sorted(latencies)[max(0, int(len(latencies) * 0.99) - 1)] * 1000
    print(f"model: {args.model}, {args.max_tokens} tokens per chat, {args.runs} runs per path (interleaved)\n")
    print(f"{'path':<36}{'first byte p50':>16}{'tokens/s p50':>14}")
    print(f"{'engine (Unix socket, direct)':<36}{ttfb['engine']:>13.1f} ms{tps['engine']:>14.1f}")
    print(f"{'endpoint (jupyter server, /v1)':<36}{ttfb['endpoint']:>13.1f} ms{tps['endpoint']:>14.1f}")
    print()
    print(f"tokens/s ratio endpoint/engine: {tps['endpoint'] / tps['engine']:.3f}   (goal >= 0.97)")
    print(f"added time to first byte (p50): {ttfb['endpoint'] - ttfb['engine']:+.1f} ms   (goal <= 5 ms)")
    print(f"/api/status under 16 streams: p50 {statistics.median(latencies) * 1000:.1f} ms, p99 {p99:.1f} ms, "
          f"max {max(latencies) * 1000:.1f} ms over {len(latencies)} polls; {finished}/16 streams finished   "
          "(goal p99 < 50 ms)")
    rate = {k: statistics.median(events / seconds for events, seconds in v) for k, v in load.items()}
    print(f"16 streams at once, events/s (median of 3): engine {rate['engine']:.0f}, endpoint {rate['endpoint']:.0f}, "
          f"ratio {rate['endpoint'] / rate['engine']:.3f}; the server's CPU per 1000 relayed events "
          f"{statistics.median(cpu) * 1e6:.1f} ms")


if __name__ == "__main__":
    main()
