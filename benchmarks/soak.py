"""Chaos soak: many clients for a long time while things fail around the runner, and nothing lost.

Usage: .venv/bin/python benchmarks/soak.py [--duration 300] [--clients 32] [--kill-every 20] [--no-vllm]

A `jupyter modelrunner serve` with a GGUF model (llama-server) and, when vLLM is installed, a safetensors one
(vLLM's CPU build), both pulled from a loopback registry. `--clients` clients send requests until the duration
is over: chats streamed and not, and embeddings, across both models. Meanwhile a chaos task SIGKILLs a random
engine every ~`--kill-every` s, the registry is restarted in the middle of a pull, and now and then a client
hangs up in the middle of a stream. And an attacker mixes in what a holder of an inference key, or of nothing, would
try (`attacker`): path traversal out of the model routes, private image URLs through every API dialect, oversized and
unauthenticated bodies, management through an inference key, malformed and deeply nested JSON. Every attack must be
refused (a 4xx in its API's shape, never a 2xx or a 5xx): the script exits 1 otherwise.

Every request ends as one of: completed; failed with a clear error (a JSON error with a message, or a stream's
error event); hung up by the client on purpose; or LOST — no answer within the timeout, a stream that stopped
without `[DONE]` or an error event, or JSON that does not parse. Lost must be 0: the script exits 1 otherwise, or
when `fsck` finds the store damaged at the end. It prints the counts, latency p50/p99 of completed requests,
`/api/status` p99 while all this goes on (timed from a process of its own), how long the server's event loop ran and
how long it waited for a CPU meanwhile (on two cores shared with the engines, the clients and anything else the machine
runs, that wait, not the loop, is what a slow `/api/status` usually means), the server's memory at the start and at
the end, and fsck's verdict. The baseline is the same server at rest: `/api/status` latency before the load starts,
in the same run. `SOAK_PROFILE=FILE` records a py-spy profile of the server under load (py-spy on PATH).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import concurrent.futures
import contextlib
import json
import multiprocessing
import os
import random
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from jupyter_modelrunner import mediatypes as mt  # noqa: E402
from jupyter_modelrunner.engines.install import installed  # noqa: E402
from jupyter_modelrunner.engines.vllm import default_vllm_python  # noqa: E402
from tests.support.jupyter import ServerProcess  # noqa: E402
from tests.support.models import make_tiny_gguf, make_tiny_safetensors  # noqa: E402
from tests.support.publish import gguf_config, publish_gguf, publish_raw, publish_safetensors  # noqa: E402
from tests.support.registry import LocalRegistry  # noqa: E402

REQUEST_TIMEOUT = 180.0  # an answer later than this is counted as lost (hung)
GGUF_MODEL, ST_MODEL = "ai/soak-gguf", "ai/soak-vllm"
#: An inference key the soak's server accepts, for the attacker's scope probes.
SOAK_KEY = "mrk-soak-inference-key-0123456789"
#: The server's body limit in the soak (c.ModelRunner.max_body_bytes), small enough to cross cheaply.
SOAK_MAX_BODY = 1024 * 1024


def attacks(private_url: str) -> list[tuple[str, str, str, dict, bytes | None]]:
    """(name, method, path, headers, body) of each attack; a path is sent exactly as written (no normalisation)."""
    key = {"Authorization": f"Bearer {SOAK_KEY}"}
    chat = {"model": GGUF_MODEL, "max_tokens": 2}
    image = [{"type": "image_url", "image_url": {"url": private_url}}]

    def body(value: object) -> bytes:
        return json.dumps(value).encode()

    return [
        ("relay traversal", "GET", "/v1/models/../../../api/status", key, None),
        ("relay traversal %2e", "GET", "/v1/models/%2e%2e/%2e%2e/%2e%2e/api/status", key, None),
        ("relay traversal %2f", "GET", "/v1/models/..%2f..%2f..%2fapi%2fstatus", key, None),
        ("private image, OpenAI", "POST", "/v1/chat/completions", key,
         body({**chat, "messages": [{"role": "user", "content": image}]})),
        ("private image, Anthropic", "POST", "/v1/messages", key, body({**chat, "messages": [
            {"role": "user", "content": [{"type": "image", "source": {"type": "url", "url": private_url}}]}]})),
        ("private image, Responses", "POST", "/v1/responses", key, body({"model": GGUF_MODEL, "input": [
            {"role": "user", "content": [{"type": "input_image", "image_url": private_url}]}]})),
        ("video URL", "POST", "/v1/chat/completions", key, body({**chat, "messages": [
            {"role": "user", "content": [{"type": "video_url", "video_url": {"url": private_url}}]}]})),
        ("oversized body", "POST", "/v1/chat/completions", key, b"{" + b" " * (SOAK_MAX_BODY + 1) + b"}"),
        ("no credentials", "POST", "/v1/chat/completions", {}, body({**chat, "messages": [
            {"role": "user", "content": "Hi"}]})),
        ("wrong key", "POST", "/v1/chat/completions", {"Authorization": "Bearer mrk-not-a-key"},
         body({**chat, "messages": [{"role": "user", "content": "Hi"}]})),
        ("key pulls", "POST", "/models/create", key, body({"from": GGUF_MODEL})),
        ("key deletes", "DELETE", f"/models/{GGUF_MODEL}", key, None),
        ("key unloads", "POST", "/engines/unload", key, body({"all": True})),
        ("key unloads via Ollama", "POST", "/api/chat", key, body({"model": GGUF_MODEL, "messages": [],
                                                                    "keep_alive": 0})),
        ("key configures", "POST", "/engines/_configure", key, body({"model": GGUF_MODEL, "context-size": 64})),
        ("malformed JSON", "POST", "/v1/chat/completions", key, b'{"model": "ai/soak-gguf", "messages": ['),
        ("deeply nested JSON", "POST", "/v1/messages", key, b"[" * 100_000 + b"]" * 100_000),
        ("malformed tool", "POST", "/v1/messages", key, body({**chat, "messages": [{"role": "user", "content": "Hi"}],
                                                              "tools": [{"name": "f", "description": [1],
                                                                         "input_schema": {}}]})),
    ]


async def send_raw(host: str, port: int, prefix: str, method: str, path: str, headers: dict,
                   body: bytes | None) -> int:
    """One HTTP/1.1 request with its path exactly as written (clients normalise `..` away); the status it got."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        lines = [f"{method} /{prefix.strip('/') + '/' if prefix.strip('/') else ''}{path.lstrip('/')} HTTP/1.1",
                 f"Host: {host}:{port}", "Connection: close", *(f"{k}: {v}" for k, v in headers.items())]
        if body is not None:
            lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        if body is not None:
            writer.write(body)
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), REQUEST_TIMEOUT)
        return int(status_line.split()[1]) if status_line else 0
    except (ConnectionError, IndexError, ValueError):
        return 0  # the server closed the connection on it (an oversized body may be cut off): refused
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


async def attacker(server: ServerProcess, deadline: float, outcomes: collections.Counter, refusals: list[str],
                   private_url: str) -> None:
    """Play every attack in turn, again and again, while the clients run; tally tried and refused."""
    rng = random.Random(13)
    playbook = attacks(private_url)
    while time.monotonic() < deadline:
        name, method, path, headers, body = rng.choice(playbook)
        status = await send_raw("127.0.0.1", server.port, server.prefix, method, path, headers, body)
        outcomes["tried"] += 1
        if status == 0 or 400 <= status < 500:
            outcomes["refused"] += 1
        else:
            refusals.append(f"{name}: HTTP {status}")
        await asyncio.sleep(rng.uniform(0.05, 0.3))


class Tally:
    """What happened to every request, and how long the completed ones took."""

    def __init__(self) -> None:
        self.counts: collections.Counter[str] = collections.Counter()
        self.lost: list[str] = []
        self.latencies: list[float] = []
        self.errors: collections.Counter[str] = collections.Counter()

    def completed(self, seconds: float) -> None:
        self.counts["completed"] += 1
        self.latencies.append(seconds)

    def failed(self, message: str) -> None:
        self.counts["failed with a clear error"] += 1
        self.errors[message.splitlines()[0][:90]] += 1

    def lose(self, why: str) -> None:
        self.counts["LOST"] += 1
        self.lost.append(why)


def error_message(body: object) -> str | None:
    """The message of an OpenAI/Ollama-shaped error, or None when it is not one."""
    if not isinstance(body, dict):
        return None
    error = body.get("error")
    if isinstance(error, dict) and isinstance(error.get("message"), str) and error["message"]:
        return error["message"]
    return error if isinstance(error, str) and error else None


async def one_request(client: httpx.AsyncClient, models: list[str], tally: Tally, rng: random.Random) -> None:
    kind = rng.choices(["stream", "chat", "embed"], weights=[6, 3, 1])[0]
    model = GGUF_MODEL if kind == "embed" else rng.choice(models)
    hang_up = kind == "stream" and rng.random() < 0.05
    started = time.monotonic()
    label = f"{kind} {model}"
    try:
        if kind == "embed":
            response = await client.post("v1/embeddings", json={"model": model, "input": f"text {rng.random()}"})
            check_whole(response, label, started, tally, lambda b: bool(b.get("data")))
        elif kind == "chat":
            response = await client.post("v1/chat/completions", json=chat(model, rng, stream=False))
            check_whole(response, label, started, tally, lambda b: bool(b.get("choices")))
        else:
            await check_stream(client, model, rng, label, started, tally, hang_up)
    except httpx.TimeoutException:
        tally.lose(f"{label}: no answer within {REQUEST_TIMEOUT:.0f} s")
    except httpx.TransportError as exc:
        tally.lose(f"{label}: the connection failed ({exc.__class__.__name__}: {exc})")


def chat(model: str, rng: random.Random, *, stream: bool) -> dict:
    return {"model": model, "stream": stream, "max_tokens": rng.choice([8, 32, 96]), "temperature": 0.7,
            "messages": [{"role": "user", "content": f"Tell me about the number {rng.randint(1, 999)}."}]}


def check_whole(response: httpx.Response, label: str, started: float, tally: Tally, looks_right) -> None:
    try:
        body = response.json()
    except ValueError:
        tally.lose(f"{label}: {response.status_code} with a body that is not JSON: {response.text[:120]!r}")
        return
    if response.status_code == 200 and looks_right(body):
        tally.completed(time.monotonic() - started)
    elif response.status_code >= 400 and error_message(body):
        tally.failed(error_message(body))  # type: ignore[arg-type]
    else:
        tally.lose(f"{label}: {response.status_code} {str(body)[:160]}")


async def check_stream(client: httpx.AsyncClient, model: str, rng: random.Random, label: str, started: float,
                       tally: Tally, hang_up: bool) -> None:
    async with client.stream("POST", "v1/chat/completions", json=chat(model, rng, stream=True)) as response:
        if response.status_code != 200:
            check_whole(httpx.Response(response.status_code, content=await response.aread()), label, started, tally,
                        lambda b: False)
            return
        events = 0
        buffer = b""
        async for chunk in response.aiter_raw():
            buffer += chunk
            while b"\n\n" in buffer:
                event, buffer = buffer.split(b"\n\n", 1)
                data = event.removeprefix(b"data: ").strip()
                if data == b"[DONE]":
                    tally.completed(time.monotonic() - started)
                    return
                try:
                    parsed = json.loads(data)
                except ValueError:
                    tally.lose(f"{label}: an event that is not JSON: {data[:120]!r}")
                    return
                if message := error_message(parsed):
                    tally.failed(message)
                    return
                events += 1
                if hang_up and events >= 3:
                    tally.counts["hung up by the client on purpose"] += 1
                    return  # leaving the block closes the connection mid-stream
        tally.lose(f"{label}: the stream ended after {events} events without [DONE] or an error")


async def client_loop(server: ServerProcess, models: list[str], tally: Tally, deadline: float, seed: int) -> None:
    rng = random.Random(seed)
    async with httpx.AsyncClient(base_url=server.url, headers=server.headers, trust_env=False,
                                 timeout=httpx.Timeout(REQUEST_TIMEOUT, connect=30)) as client:
        while time.monotonic() < deadline:
            await one_request(client, models, tally, rng)


def poll_status(origin: str, headers: dict[str, str], deadline: float) -> list[float]:
    """`/api/status` every 0.25 s until `deadline` (time.monotonic, which is system-wide): the seconds each took."""
    samples = []
    with httpx.Client(base_url=origin, headers=headers, trust_env=False, timeout=30) as client:
        while time.monotonic() < deadline:
            started = time.perf_counter()
            client.get("api/status").raise_for_status()
            samples.append(time.perf_counter() - started)
            time.sleep(0.25)
    return samples


async def status_poller(server: ServerProcess, pool: concurrent.futures.Executor, deadline: float,
                        samples: list[float]) -> None:
    """Time `/api/status` from a process of its own (`pool`): this process's event loop also runs the 32 clients,
    and a sample taken on it would count the time that loop took to get round to it (seconds while the clients
    start, tens of ms per stream event parsed) as the server's."""
    samples.extend(await asyncio.get_running_loop().run_in_executor(pool, poll_status, server.origin,
                                                                    server.headers, deadline))


async def chaos(server: ServerProcess, registry: LocalRegistry, deadline: float, every: float, events: list[str],
                big_model: str) -> None:
    """SIGKILL a random engine every ~`every` s; once, restart the registry in the middle of a pull."""
    rng = random.Random(7)
    pulled_through_restart = False
    async with httpx.AsyncClient(base_url=server.url, headers=server.headers, trust_env=False,
                                 timeout=REQUEST_TIMEOUT) as client:
        start = time.monotonic()
        while time.monotonic() < deadline - 5:
            await asyncio.sleep(every * rng.uniform(0.6, 1.4))
            if time.monotonic() >= deadline - 5:
                break
            if not pulled_through_restart and time.monotonic() - start > (deadline - start) / 3:
                pulled_through_restart = True
                events.append(await pull_through_registry_restart(client, registry, big_model))
                continue
            engines = [e for e in (await client.get("engines/ps")).json() if e.get("mode") != "standby"]
            if engines:
                victim = rng.choice(engines)
                try:
                    os.kill(victim["pid"], signal.SIGKILL)
                    events.append(f"SIGKILLed {victim['backend_name']} for {victim['model_name']}")
                except ProcessLookupError:
                    pass


async def pull_through_registry_restart(client: httpx.AsyncClient, registry: LocalRegistry, name: str) -> str:
    """Pull a large model, restart the registry once bytes flow; the pull must end clearly, and a second pull
    must complete it (resuming what was downloaded)."""
    outcome = "?"
    async with client.stream("POST", "models/create", json={"from": name}) as response:
        restarted = False
        async for line in response.aiter_lines():
            if not line.strip():
                continue
            event = json.loads(line)
            if not restarted and event.get("type") == "progress" and (event.get("layer") or {}).get("current"):
                restarted = True
                await asyncio.to_thread(registry.stop)
                await asyncio.to_thread(registry.start)
            if event.get("type") in ("success", "error"):
                outcome = event["type"] + (f" ({event['message'][:60]})" if event["type"] == "error" else "")
    again = await client.post("models/create", json={"from": name})
    last = json.loads(again.text.strip().splitlines()[-1])
    return f"pull through a registry restart: {outcome}; then again: {last['type']}"


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def cpu_times(pid: int) -> tuple[float, float]:
    """Seconds the process's main thread (the server's event loop) has run, and waited runnable for a CPU (Linux's
    /proc schedstat; zeros elsewhere): a stall the second explains is the machine's, not the loop's."""
    try:
        ran, waited = Path(f"/proc/{pid}/schedstat").read_text().split()[:2]
    except (OSError, ValueError):
        return 0.0, 0.0
    return int(ran) / 1e9, int(waited) / 1e9


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=300.0, help="seconds of load (default 300)")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--kill-every", type=float, default=20.0, help="seconds between engine kills (about)")
    parser.add_argument("--no-vllm", action="store_true", help="only the GGUF model")
    args = parser.parse_args()
    use_vllm = not args.no_vllm and default_vllm_python() is not None

    with tempfile.TemporaryDirectory(prefix="soak-") as tmp_name:
        tmp = Path(tmp_name)
        with LocalRegistry(tmp / "registry") as registry:
            publish_gguf(registry.host, GGUF_MODEL, make_tiny_gguf(tmp / "tiny.gguf", context_length=2048))
            if use_vllm:
                publish_safetensors(registry.host, ST_MODEL, make_tiny_safetensors(tmp / "tiny-st"))
            big = tmp / "big.bin"
            with big.open("wb") as out:  # a blob large enough for a pull to be under way when the registry stops
                for _ in range(64):
                    out.write(os.urandom(4 * 1024**2))
            publish_raw(registry.host, "ai/soak-big", "latest", gguf_config(), mt.MODEL_CONFIG_V01,
                        [(big, mt.GGUF, {})])
            engine_overrides = ("MODEL_RUNNER_LLAMA_SERVER", "MODEL_RUNNER_VLLM_PYTHON")
            env = {k: v for k, v in os.environ.items()
                   if k in engine_overrides or not k.startswith(("MODEL_RUNNER_", "JUPYTER_"))}
            for variable, engine in zip(engine_overrides, ("llama.cpp", "vllm"), strict=True):
                # The engines a developer pointed at, else those install-runner put in this user's data dir (which
                # the server's own JUPYTER_DATA_DIR below hides from it).
                record = None if env.get(variable) else installed(engine)
                if record is not None:
                    env[variable] = str(record.executable)
            env.update({"MODEL_RUNNER_API_KEY": SOAK_KEY,
                        "MODEL_RUNNER_STORE": str(tmp / "store"), "MODEL_RUNNER_DEFAULT_REGISTRY": registry.host,
                        "MODEL_RUNNER_VLLM_STANDBY": "1", "JUPYTER_RUNTIME_DIR": str(tmp / "runtime"),
                        "JUPYTER_CONFIG_DIR": str(tmp / "config"), "JUPYTER_DATA_DIR": str(tmp / "data")})
            (tmp / "serve").mkdir()
            with ServerProcess.standalone(tmp / "serve", env, f"--ModelRunner.max_body_bytes={SOAK_MAX_BODY}",
                                          "--ModelRunner.max_images_per_request=4") as server:
                return asyncio.run(soak(server, registry, args, use_vllm))


async def soak(server: ServerProcess, registry: LocalRegistry, args: argparse.Namespace, use_vllm: bool) -> int:
    models = [GGUF_MODEL, *([ST_MODEL] if use_vllm else [])]
    async with httpx.AsyncClient(base_url=server.url, headers=server.headers, trust_env=False,
                                 timeout=600) as client:
        for name in models:
            (await client.post("models/create", json={"from": name})).raise_for_status()
        for name in models:  # loaded before the clock starts: the soak measures holding up, not first loads
            loaded = await client.post("models/load", json={"model": name})
            if loaded.status_code != 200:
                raise RuntimeError(f"{name} did not load: {loaded.text}")
        (await client.post("models/load", json={"model": GGUF_MODEL, "mode": "embedding"})).raise_for_status()
    # The poller's process starts (and imports) before the clock does.
    poller = concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
    await asyncio.get_running_loop().run_in_executor(poller, int)
    at_rest: list[float] = []
    await status_poller(server, poller, time.monotonic() + 3, at_rest)
    rss_start = rss(server.process.pid)
    cpu_start = cpu_times(server.process.pid)
    if os.environ.get("SOAK_PROFILE"):  # py-spy on the server while the load runs (a developer's aid)
        import subprocess

        # --nonblocking: py-spy's default pauses the server for every sample, which shows up in /api/status.
        py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
        subprocess.Popen([py_spy, "record", "--nonblocking", "-d", "40", "-o", os.environ["SOAK_PROFILE"], "-f",
                          "speedscope", "-p", str(server.process.pid)], stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)

    tally, status_samples, chaos_events = Tally(), [], []
    attack_outcomes: collections.Counter[str] = collections.Counter()
    let_through: list[str] = []
    started = time.monotonic()
    deadline = started + args.duration
    # A private address with something listening: the metadata endpoint and the LAN stand-in (the registry itself).
    private_url = f"http://{registry.host}/v2/"
    await asyncio.gather(
        *(client_loop(server, models, tally, deadline, seed) for seed in range(args.clients)),
        status_poller(server, poller, deadline, status_samples),
        chaos(server, registry, deadline, args.kill_every, chaos_events, "ai/soak-big"),
        attacker(server, deadline, attack_outcomes, let_through, private_url),
    )
    elapsed = time.monotonic() - started
    poller.shutdown()
    rss_end = rss(server.process.pid)
    ran, waited = (end - start for start, end in zip(cpu_start, cpu_times(server.process.pid), strict=True))
    async with httpx.AsyncClient(base_url=server.url, headers=server.headers, trust_env=False,
                                 timeout=600) as client:
        report = (await client.post("models/fsck", json={})).json()

    total = sum(tally.counts.values())
    print(f"\nChaos soak: {args.clients} clients for {elapsed:.0f} s on {', '.join(models)}")
    for event in chaos_events:
        print(f"  chaos: {event}")
    print(f"\n{'requests':<36}{total:>10}")
    for key in ("completed", "failed with a clear error", "hung up by the client on purpose", "LOST"):
        print(f"{key:<36}{tally.counts[key]:>10}")
    print(f"{'attacks tried':<36}{attack_outcomes['tried']:>10}")
    print(f"{'attacks refused':<36}{attack_outcomes['refused']:>10}")
    print(f"{'completed latency p50 / p99 (s)':<36}{percentile(tally.latencies, 0.5):>10.2f}"
          f"{percentile(tally.latencies, 0.99):>10.2f}")
    at_rest_p99, loaded_p99 = percentile(at_rest, 0.99), percentile(status_samples, 0.99)
    print(f"{'/api/status p50 loaded (ms)':<36}{percentile(status_samples, 0.5) * 1000:>10.1f}")
    print(f"{'/api/status p99 at rest / loaded (ms)':<36}{at_rest_p99 * 1000:>10.1f}{loaded_p99 * 1000:>10.1f}"
          f"   ratio {loaded_p99 / at_rest_p99:.1f}")
    print(f"{'server loop ran / waited for CPU (s)':<36}{ran:>10.1f}{waited:>10.1f}   machine load "
          f"{os.getloadavg()[0]:.1f}")
    print(f"{'server RSS start / end (MiB)':<36}{rss_start / 2**20:>10.1f}{rss_end / 2**20:>10.1f}")
    clean = not report.get("problems")
    print(f"{'fsck at the end':<36}{'clean' if clean else 'PROBLEMS: ' + json.dumps(report['problems'])[:200]:>10}")
    if tally.errors:
        print("\nclear errors, by message:")
        for message, count in tally.errors.most_common(8):
            print(f"  {count:>5}  {message}")
    for why in tally.lost[:20]:
        print(f"  LOST: {why}")
    for what in collections.Counter(let_through).most_common(10):
        print(f"  NOT REFUSED: {what[0]} (x{what[1]})")
    return 1 if tally.counts["LOST"] or not clean or let_through else 0


if __name__ == "__main__":
    sys.exit(main())
