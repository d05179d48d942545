"""`jupyter_modelrunner.map` against the loops a notebook would otherwise write, and what it leaves for a chat.

Usage: .venv/bin/python benchmarks/map.py [--prompts 64] [--max-tokens 64] [--delay 2] [--runs 2]

One run, one process, the real SmolLM2 behind a real `jupyter server` with the extension (llama-server, its default
8 slots). The same 64 short prompts (each method's own prefix, so none reuses another's cached prompts) go through:
  (a) a plain sequential loop of `openai` calls, one at a time;
  (b) an `asyncio.gather` of all 64 `AsyncOpenAI` calls at once;
  (c) `map` (cache off): as many requests at once as the engine has slots, marked as background work.
For each: wall time and aggregate tokens/s (the tokens llama-server says it generated). `--delay` seconds into each
run, one interactive streamed chat is sent (as a user typing in `%%chat` would), and its time to first token is
compared with the same chat's on the idle engine. Goals: map >= 2x the sequential loop's tokens/s, within 10 % of the
gather's, and the interactive TTFT during map <= 2x idle (during the gather, it waits behind all 64).
Then the cached re-run of (c): its wall time, with no engine request. The methods run `--runs` times, interleaved
(on a shared machine another process's burst then spoils one run, not a method): best tokens/s, median chat TTFT.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

import jupyter_modelrunner as mr  # noqa: E402
from jupyter_modelrunner import client as client_module  # noqa: E402
from jupyter_modelrunner.distribution import package_gguf  # noqa: E402
from jupyter_modelrunner.reference import parse_reference  # noqa: E402
from jupyter_modelrunner.store import Store  # noqa: E402
from tests.conftest import server_env  # noqa: E402
from tests.support.jupyter import ServerProcess  # noqa: E402
from tests.support.models import smollm2_gguf  # noqa: E402

MODEL = "127.0.0.1:1/ai/bench"
INTERACTIVE = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]


def prompts(prefix: str, count: int) -> list[str]:
    topics = ["the sea", "a mountain", "a city at night", "a robot", "the moon", "a garden", "a library", "a train"]
    return [f"[{prefix} {i}] Write two sentences about {topics[i % len(topics)]} and the number {i}."
            for i in range(count)]


def tokens_predicted(server: ServerProcess) -> float:
    with server.client() as http:
        text = http.get("metrics").text
    return sum(sample.value for family in text_string_to_metric_families(text)
               if family.name == "llamacpp:tokens_predicted" for sample in family.samples)


def ttft(openai_client, max_tokens: int = 8) -> float:
    """Seconds to the first content piece of one streamed chat (an interactive request: no priority header)."""
    started = time.perf_counter()
    stream = openai_client.chat.completions.create(model=MODEL, messages=INTERACTIVE, stream=True,
                                                   max_tokens=max_tokens, temperature=0)
    first = None
    for chunk in stream:
        if first is None and chunk.choices and chunk.choices[0].delta.content:
            first = time.perf_counter() - started
    return first if first is not None else time.perf_counter() - started


def measured(server: ServerProcess, openai_client, work: Callable[[], object], delay: float) -> tuple[float, float,
                                                                                                     float]:
    """(wall seconds, tokens generated, the interactive TTFT sent `delay` s in) of `work()`."""
    before = tokens_predicted(server)
    interactive: list[float] = []

    def chat_mid_run() -> None:
        time.sleep(delay)
        interactive.append(ttft(openai_client))

    chat = threading.Thread(target=chat_mid_run)
    started = time.perf_counter()
    chat.start()
    work()
    seconds = time.perf_counter() - started
    chat.join()
    tokens = tokens_predicted(server) - before
    print(f"  {seconds:.1f} s, {tokens:.0f} tokens, chat TTFT {interactive[0] * 1000:.0f} ms", file=sys.stderr)
    return seconds, tokens, interactive[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--delay", type=float, default=2.0, help="seconds into each run the interactive chat starts")
    parser.add_argument("--runs", type=int, default=2, help="runs of each method, interleaved")
    args = parser.parse_args()

    import openai

    work = Path(tempfile.mkdtemp(prefix="bench-map-"))
    os.environ["MODEL_RUNNER_STORE"] = str(work / "client-store")  # map's answer cache: this run's own
    store = Store(work / "store", registry="127.0.0.1:1")
    package_gguf(store, smollm2_gguf(), parse_reference(MODEL), context_size=2048)
    server = ServerProcess.jupyter_server(work, server_env(work, store.root, "127.0.0.1:1"),
                                          "--Scheduler.keep_alive=-1").start()
    try:
        runner = client_module.connect(server.url, server.token)
        status = runner.load(MODEL)
        sync = openai.OpenAI(base_url=server.url + "v1", api_key=server.token, max_retries=0)
        for _ in range(2):
            ttft(sync)  # warm-up
        idle = statistics.median(ttft(sync) for _ in range(5))
        options = {"max_tokens": args.max_tokens, "temperature": 0}

        def sequential(tag: str) -> None:
            slowest = 0.0
            for text in prompts(tag, args.prompts):
                started = time.perf_counter()
                sync.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": text}], **options)
                slowest = max(slowest, time.perf_counter() - started)
            print(f"  slowest request {slowest:.2f} s", file=sys.stderr)

        def gather(tag: str) -> None:
            async def all_at_once() -> None:
                async with openai.AsyncOpenAI(base_url=server.url + "v1", api_key=server.token,
                                              max_retries=0) as client:
                    await asyncio.gather(*(client.chat.completions.create(
                        model=MODEL, messages=[{"role": "user", "content": text}], **options)
                        for text in prompts(tag, args.prompts)))
            asyncio.run(all_at_once())

        def mapped(tag: str) -> None:
            mr.map(MODEL, prompts(tag, args.prompts), progress=False, cache=False, **options)

        methods = {"sequential openai loop": sequential, f"asyncio.gather of all {args.prompts}": gather,
                   f"map ({status.get('slots')} at once, background)": mapped}
        runs: dict[str, list[tuple[float, float, float]]] = {name: [] for name in methods}
        for run in range(args.runs):
            for index, (name, method) in enumerate(methods.items()):
                print(f"{name}, run {run + 1}:", file=sys.stderr)
                # Each run's own prompts: none finds another's in llama-server's prompt cache.
                runs[name].append(measured(server, sync, lambda m=method, t=f"{run}.{index}": m(t), args.delay))
        results = {name: (*max(((s, t) for s, t, _ in done), key=lambda st: st[1] / st[0]),
                          statistics.median(first for _, _, first in done)) for name, done in runs.items()}
        mapped_prompts = prompts("cached", args.prompts)
        mr.map(MODEL, mapped_prompts, progress=False, **options)  # fills the cache
        before = tokens_predicted(server)
        started = time.perf_counter()
        mr.map(MODEL, mapped_prompts, progress=False, **options)
        cached_seconds = time.perf_counter() - started
        cached_tokens = tokens_predicted(server) - before
    finally:
        server.stop()

    print(f"SmolLM2-135M (Q4_1) on llama-server, {status.get('slots')} slots, {os.cpu_count()} CPUs; "
          f"{args.prompts} prompts, max_tokens {args.max_tokens}, temperature 0; interactive chat {args.delay:g} s "
          f"into each run; best of {args.runs} runs (chat TTFT: median)\n")
    print(f"{'method':<36}{'wall s':>9}{'tokens':>9}{'tokens/s':>10}{'chat TTFT':>12}{'x idle':>8}")
    for name, (seconds, tokens, first) in results.items():
        print(f"{name:<36}{seconds:>9.2f}{tokens:>9.0f}{tokens / seconds:>10.1f}{first * 1000:>9.0f} ms"
              f"{first / idle:>8.2f}")
    print(f"{'idle engine':<36}{'':>9}{'':>9}{'':>10}{idle * 1000:>9.0f} ms{1:>8.2f}")
    rate = {name: tokens / seconds for name, (seconds, tokens, _) in results.items()}
    seq, gathered, map_rate = rate.values()
    map_ttft = list(results.values())[2][2]
    print()
    print(f"map / sequential tokens/s: {map_rate / seq:.2f}   (goal >= 2)")
    print(f"map / gather tokens/s:     {map_rate / gathered:.2f}   (goal >= 0.90)")
    print(f"chat TTFT during map / idle: {map_ttft / idle:.2f}   (goal <= 2); during the gather: "
          f"{list(results.values())[1][2] / idle:.2f}")
    print(f"cached re-run of map: {cached_seconds * 1000:.0f} ms, {cached_tokens:.0f} tokens generated")


if __name__ == "__main__":
    main()
