"""`bench`: how fast models answer at 1, 2, 4, 8… requests at once (Docker Model Runner's `docker model bench`), as a
client measures it over HTTP: time to the first token, the speed one request streams at, and the tokens/s of all
requests together.

For each model: load it (so the engine's start is not measured), send one warm-up request (not counted), then for
each concurrency level keep that many streamed chat requests in flight (a closed loop: each request starts when the
previous one of its worker ends) for `duration` seconds; requests still running then finish and count. Token counts
are the engine's (`stream_options.include_usage`), not guesses.

The requests run on an event loop of their own in a worker thread: a kernel's loop is already running, and the main
thread stays free to draw progress and to take Ctrl-C / a kernel interrupt, which stops the run at once and keeps
what was measured. Only the standard library is imported at the top: `--help` stays cheap.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .errors import ModelRunnerError

#: Docker Model Runner's default prompt, so numbers compare with `docker model bench`.
DEFAULT_PROMPT = "Write a comprehensive 100 word summary on whales and their impact on society."
DEFAULT_CONCURRENCY = (1, 2, 4, 8)
#: Seconds per concurrency level (DMR's is 30 s; 10 s keeps a notebook cell short and is stable on a local engine).
DEFAULT_DURATION = 10.0
DEFAULT_MAX_TOKENS = 128
#: Longest one request may take before it counts as an error (DMR's default: 5 minutes).
DEFAULT_TIMEOUT = 300.0
#: The warm-up request (prompt processed once, the engine's first-request costs paid) need not be a long one.
WARM_UP_TOKENS = 16
#: How long a worker waits after a failed request before the next, so a broken engine is not hammered.
ERROR_PAUSE_SECONDS = 0.5
#: How often the main thread redraws the progress line while it waits.
STATUS_INTERVAL = 0.25

#: `status(text, transient=…)`: where progress goes; transient lines may be dropped where they cannot be rewritten.
StatusCallback = Callable[..., None]


@dataclass
class Sample:
    """One request: seconds to its first token (None if none came), in all, the tokens it generated, or its error."""

    ttft: float | None
    seconds: float
    tokens: int
    error: str | None = None

    @property
    def request_tokens_per_second(self) -> float | None:
        """The speed its answer streamed at after the first token (what one reader sees), when there is one."""
        if self.error or self.ttft is None or self.tokens < 2 or self.seconds <= self.ttft:
            return None
        return (self.tokens - 1) / (self.seconds - self.ttft)


@dataclass
class BenchPoint:
    """The measurements of one model at one concurrency level."""

    model: str
    concurrency: int
    engine: str = ""
    device: str = ""
    slots: int | None = None
    seconds: float = 0.0
    samples: list[Sample] = field(default_factory=list)
    complete: bool = False

    def to_json(self) -> dict[str, Any]:
        """One object with stable keys (`--json` prints a list of them; the table and the chart read them)."""
        done = [s for s in self.samples if s.error is None]
        failed = [s for s in self.samples if s.error is not None]
        ttfts = [s.ttft * 1000 for s in done if s.ttft is not None]
        tokens = sum(s.tokens for s in done)
        speeds = [v for s in done if (v := s.request_tokens_per_second) is not None]
        wall = self.seconds or math.nan
        return {
            "model": self.model, "engine": self.engine, "device": self.device, "slots": self.slots,
            "concurrency": self.concurrency, "seconds": round(self.seconds, 3), "requests": len(done),
            "errors": len(failed), "completion_tokens": tokens,
            "ttft_p50_ms": _rounded(percentile(ttfts, 0.50), 1), "ttft_p95_ms": _rounded(percentile(ttfts, 0.95), 1),
            "request_tokens_per_second": _rounded(percentile(speeds, 0.50), 2),
            "tokens_per_second": _rounded(tokens / wall if self.seconds else None, 2),
            "requests_per_second": _rounded(len(done) / wall if self.seconds else None, 3),
            "complete": self.complete, "error": failed[0].error if failed else None,
        }


@dataclass
class BenchReport:
    """A whole run: what was asked, every point measured (in order), and whether an interrupt cut it short."""

    prompt: str
    duration: float
    max_tokens: int
    points: list[BenchPoint] = field(default_factory=list)
    interrupted: bool = False

    def to_json(self) -> list[dict[str, Any]]:
        return [point.to_json() for point in self.points]


def percentile(values: Sequence[float], q: float) -> float | None:
    """The `q` quantile (0..1) with linear interpolation between ranks (NumPy's default); None without values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def _rounded(value: float | None, digits: int) -> float | None:
    return None if value is None or math.isnan(value) else round(value, digits)


def run_bench(client: Any, models: Sequence[str], *, concurrency: Sequence[int] = DEFAULT_CONCURRENCY,
              duration: float = DEFAULT_DURATION, prompt: str = DEFAULT_PROMPT, max_tokens: int = DEFAULT_MAX_TOKENS,
              timeout: float = DEFAULT_TIMEOUT, status: StatusCallback | None = None) -> BenchReport:
    """Measure each of `models` at each level of `concurrency` through `client` (a `RunnerClient`).

    Every model is looked up before anything runs (a typo in the last one fails at once). A failed request counts as
    an error of its point, not of the run; a model that cannot answer its warm-up request fails the run. A
    KeyboardInterrupt (Ctrl-C, a kernel interrupt) stops the requests in flight and returns what was measured, with
    `interrupted` set.
    """
    levels = sorted(set(concurrency))
    if not models:
        raise ModelRunnerError("Name at least one model to benchmark.")
    if not levels or levels[0] < 1:
        raise ModelRunnerError("Concurrency levels must be whole numbers of 1 or more, e.g. 1,2,4,8.")
    if duration <= 0 or timeout <= 0 or max_tokens < 1:
        raise ModelRunnerError("The duration, the timeout and the token limit must be more than 0.")

    def say(text: str, transient: bool = False) -> None:
        if status is not None:
            status(text, transient=transient)

    for model in models:
        client.inspect(model)
    report = BenchReport(prompt=prompt, duration=duration, max_tokens=max_tokens)
    try:
        for model in models:
            say(f"Loading {model}…")
            run = _ModelRun(client, model, client.load(model), levels, duration=duration, prompt=prompt,
                            max_tokens=max_tokens, timeout=timeout)
            report.interrupted = _follow(run, say)
            report.points += run.points  # a level cut short shows too (incomplete), if only to say where it stopped
            if report.interrupted:
                break
            if run.error is not None:
                raise run.error
    finally:
        say("", transient=True)  # the progress line ends, whatever ended the run
    return report


def _follow(run: _ModelRun, say: Callable[..., None]) -> bool:
    """Start `run` in its worker thread and draw its progress from this one until it ends; whether Ctrl-C stopped it.
    Not `Thread.join`: on Python 3.11 a join that Ctrl-C interrupts marks the thread finished while it still runs."""
    threading.Thread(target=run.main, name=f"bench {run.model}", daemon=True).start()
    try:
        shown: object = _UNSET
        while not run.finished.wait(STATUS_INTERVAL):
            if run.current is not shown:  # a new phase (warm-up, the next level) is worth a line even in a log
                shown = run.current
                say(run.status_text())
            else:
                say(run.status_text(), transient=True)
    except KeyboardInterrupt:
        run.cancel()
        _wait(run.finished)
        return True
    return False


_UNSET = object()


def _wait(finished: threading.Event, limit: float = 10.0) -> None:
    """Wait for a cancelled run to end (closing its streams takes a moment); another Ctrl-C does not cut it short."""
    deadline = time.monotonic() + limit
    while not finished.is_set() and time.monotonic() < deadline:
        with contextlib.suppress(KeyboardInterrupt):
            finished.wait(0.1)


class _ModelRun:
    """One model's warm-up and levels, on an event loop of its own in a worker thread (`main`)."""

    def __init__(self, client: Any, model: str, runner: dict[str, Any], levels: Sequence[int], *, duration: float,
                 prompt: str, max_tokens: int, timeout: float) -> None:
        self.client, self.model, self.levels = client, model, levels
        self.duration, self.max_tokens, self.timeout = duration, max_tokens, timeout
        self.messages = [{"role": "user", "content": prompt}]
        self.engine, self.device = str(runner.get("backend_name") or ""), str(runner.get("device") or "")
        self.slots = runner.get("slots")
        self.points: list[BenchPoint] = []
        self.current: BenchPoint | None = None
        self.started = time.monotonic()
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self.finished = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None

    def main(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            self._task = loop.create_task(self._measure())
            if self._stop.is_set():  # cancelled before the task existed
                self._task.cancel()
            loop.run_until_complete(self._task)
        except asyncio.CancelledError:
            pass
        except BaseException as exc:  # handed to the main thread, which raises it there
            self.error = exc
        finally:
            with contextlib.suppress(Exception):
                loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()
            self.finished.set()

    def cancel(self) -> None:
        """From the main thread: stop now; the requests in flight are closed (which stops their generation)."""
        self._stop.set()
        loop, task = self._loop, self._task
        if loop is not None and task is not None:
            with contextlib.suppress(RuntimeError):  # the loop already closed: nothing left to stop
                loop.call_soon_threadsafe(task.cancel)

    def status_text(self) -> str:
        point = self.current
        if point is None:
            return f"{self.model}: warm-up request"
        elapsed = min(time.monotonic() - self.started, self.duration)
        done = sum(1 for s in point.samples if s.error is None)
        return (f"{self.model}: {point.concurrency} at once, {elapsed:.0f}/{self.duration:g} s, "
                f"{done} answer{'s' if done != 1 else ''}")

    async def _measure(self) -> None:
        api = self.client.async_openai()
        try:
            warm = await self._request(api, max_tokens=min(self.max_tokens, WARM_UP_TOKENS))
            if warm.error is not None:
                raise ModelRunnerError(f"{self.model} did not answer the warm-up request: {warm.error}")
            for level in self.levels:
                if self._stop.is_set():
                    return
                point = BenchPoint(self.model, level, self.engine, self.device, self.slots)
                self.points.append(point)
                self.current, self.started = point, time.monotonic()
                await self._level(api, point)
        finally:
            with contextlib.suppress(Exception):
                await api.close()

    async def _level(self, api: Any, point: BenchPoint) -> None:
        started = time.perf_counter()
        deadline = started + self.duration

        async def worker() -> None:
            while time.perf_counter() < deadline and not self._stop.is_set():
                sample = await self._request(api)
                point.samples.append(sample)
                if sample.error is not None:
                    await asyncio.sleep(ERROR_PAUSE_SECONDS)

        try:
            await asyncio.gather(*(worker() for _ in range(point.concurrency)))
            point.complete = not self._stop.is_set()
        finally:
            point.seconds = time.perf_counter() - started

    async def _request(self, api: Any, max_tokens: int | None = None) -> Sample:
        """One streamed chat request, timed; a failure is a sample with its error (the runner's own message)."""
        from .client import _openai_error

        started = time.perf_counter()
        first: float | None = None
        tokens = pieces = 0
        try:
            async with asyncio.timeout(self.timeout):
                stream = await api.chat.completions.create(
                    model=self.model, messages=self.messages, max_tokens=max_tokens or self.max_tokens, stream=True,
                    stream_options={"include_usage": True})
                async with stream:
                    async for chunk in stream:
                        if chunk.usage is not None:
                            tokens = int(chunk.usage.completion_tokens or 0)
                        for choice in chunk.choices:
                            delta = choice.delta
                            # A reasoning model's thinking is generated tokens too (llama-server's extension field).
                            if delta is not None and (delta.content or getattr(delta, "reasoning_content", None)):
                                pieces += 1
                                if first is None:
                                    first = time.perf_counter() - started
        except TimeoutError:
            return Sample(first, time.perf_counter() - started, 0, f"no complete answer within {self.timeout:g} s")
        except Exception as exc:
            return Sample(first, time.perf_counter() - started, 0, str(_openai_error(exc)) or type(exc).__name__)
        # Without the engine's usage (an engine that ignores include_usage), each streamed piece is about a token.
        return Sample(first, time.perf_counter() - started, tokens or pieces)


def chart_png(points: Sequence[dict[str, Any]], *, dpi: int = 100) -> bytes:
    """The notebook's chart as PNG bytes: aggregate tokens/s against concurrency, a line per model, and time to
    first token (p50, and p95 dashed) beside it. Drawn with matplotlib's Agg canvas on a `Figure` of its own, never
    through pyplot: no backend is chosen for the kernel and no figure is left open."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.ticker import FixedLocator, NullLocator
    except ImportError as exc:
        raise ModelRunnerError("The chart needs matplotlib: pip install 'jupyter-modelrunner[notebook]'.") from exc
    import io

    figure = Figure(figsize=(10, 3.8), dpi=dpi, layout="constrained")
    FigureCanvasAgg(figure)
    speed, latency = figure.subplots(1, 2)
    levels = sorted({p["concurrency"] for p in points})
    for index, model in enumerate(dict.fromkeys(p["model"] for p in points)):
        color = f"C{index % 10}"
        rows = sorted((p for p in points if p["model"] == model), key=lambda p: p["concurrency"])
        x = [p["concurrency"] for p in rows]

        def series(key: str, rows: list[dict[str, Any]] = rows) -> list[float]:
            return [math.nan if p.get(key) is None else p[key] for p in rows]

        speed.plot(x, series("tokens_per_second"), marker="o", color=color, label=model)
        latency.plot(x, series("ttft_p50_ms"), marker="o", color=color, label=f"{model} p50")
        latency.plot(x, series("ttft_p95_ms"), marker=".", color=color, linestyle="--", alpha=0.6,
                     label=f"{model} p95")
    for axes, title, unit in ((speed, "Throughput (all requests)", "tokens/s"),
                              (latency, "Time to first token", "ms")):
        if len(levels) > 1:
            axes.set_xscale("log", base=2)
        axes.xaxis.set_major_locator(FixedLocator(levels))
        axes.xaxis.set_minor_locator(NullLocator())
        axes.set_xticklabels([str(level) for level in levels])
        axes.set_xlabel("requests at once")
        axes.set_ylabel(unit)
        axes.set_title(title)
        axes.set_ylim(bottom=0)
        axes.grid(True, alpha=0.3)
        axes.legend(fontsize="small")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()
