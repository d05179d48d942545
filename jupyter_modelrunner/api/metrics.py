"""`GET metrics`: Prometheus text with our counters and every running engine's own metrics.

Engines that expose `/metrics` (llama-server and vLLM do; llama-cpp-python's server does not) are scraped on
each request, concurrently and with a short timeout so one stuck engine cannot stall the page, and their
samples get `engine` and `model` labels so several models' series stay apart (api/prometheus.py). Our own
families also appear on Jupyter's `/metrics` (prometheus_client's default registry) while the extension runs.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Iterable, Iterator

from jupyter_server.auth.decorator import authorized
from prometheus_client import REGISTRY
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from tornado import web

from ..scheduling import Runner, RunnerState
from ..service import ModelRunnerService
from .base import ModelRunnerHandler
from .prometheus import EngineMetrics, render

PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"
SCRAPE_TIMEOUT = 2.0


def runner_families(service: ModelRunnerService) -> list[Metric]:
    """The runner gauges, read from the runner now: an unloaded model leaves no stale series behind."""
    runners = GaugeMetricFamily("modelrunner_runners", "Engine processes by engine, model and state.",
                                labels=["engine", "model", "state"])
    memory = GaugeMetricFamily("modelrunner_runner_memory_bytes", "Estimated memory of each running engine.",
                               labels=["engine", "model"])
    counts: collections.Counter[tuple[str, str, str]] = collections.Counter()
    sizes: collections.Counter[tuple[str, str]] = collections.Counter()
    for runner in service.runners():  # one model may run in two modes: one series, summed
        counts[(runner.key.engine, runner.name, runner.state.value)] += 1
        sizes[(runner.key.engine, runner.name)] += runner.memory
    for labels, count in sorted(counts.items()):
        runners.add_metric(labels, count)
    for labels, size in sorted(sizes.items()):
        memory.add_metric(labels, size)
    budget = GaugeMetricFamily("modelrunner_memory_budget_bytes", "Memory the engines may use together.",
                               value=service.memory_budget)
    return [runners, memory, budget]


def own_families(service: ModelRunnerService) -> Iterator[Metric]:
    """The service's counters and gauges, then the runner gauges."""
    for family in service.metrics.registry.collect():
        # modelrunner_start_time_seconds says when counting began: a `_created` series per counter series is noise.
        family.samples = [s for s in family.samples if not s.name.endswith("_created")]
        yield family
    yield from runner_families(service)


async def scrape(runner: Runner) -> tuple[dict[str, str], str] | None:
    """One engine's metrics text with its labels, or None when it has none or does not answer in time."""
    try:
        response = await asyncio.wait_for(runner.request("GET", "/metrics"), SCRAPE_TIMEOUT)
    except Exception:  # a scrape never fails the whole page (timeout, engine gone, bad answer)
        return None
    if response.status_code != 200:
        return None
    return {"engine": runner.key.engine, "model": runner.name}, response.text


def engine_families(scraped: Iterable[tuple[dict[str, str], str]]) -> list[Metric]:
    """The engines' texts merged into families (a text the parser rejects is left out)."""
    engines = EngineMetrics()
    for labels, text in scraped:
        engines.add(labels, text)
    return list(engines.collect())


class _OnJupyter:
    """The collector on Jupyter's registry: the attached service's families (not the engines': those cost a
    scrape of every engine, which `GET metrics` does). With several services attached, the last one's: two
    would repeat every family."""

    def __init__(self) -> None:
        self.services: list[ModelRunnerService] = []

    def collect(self) -> Iterable[Metric]:
        return own_families(self.services[-1]) if self.services else ()

    def describe(self) -> Iterable[Metric]:
        return ()  # claim no names: a clash with another collector must not stop the server from starting


_ON_JUPYTER = _OnJupyter()


def attach(service: ModelRunnerService) -> None:
    """Show the service's own metrics on Jupyter's `/metrics` (prometheus_client's default registry) until `detach`."""
    if not _ON_JUPYTER.services:
        REGISTRY.register(_ON_JUPYTER)
    _ON_JUPYTER.services.append(service)


def detach(service: ModelRunnerService) -> None:
    """Take the service's metrics off Jupyter's `/metrics` (the extension stops); a no-op if they are not there."""
    if service in _ON_JUPYTER.services:
        _ON_JUPYTER.services.remove(service)
        if not _ON_JUPYTER.services:
            REGISTRY.unregister(_ON_JUPYTER)


class MetricsHandler(ModelRunnerHandler):
    """`GET metrics`."""

    _track_activity = False  # a Prometheus scrape every 15 s must not keep an idle server alive

    @web.authenticated
    @authorized
    async def get(self) -> None:
        runners = [r for r in self.service.runners() if r.state == RunnerState.READY]
        started = time.perf_counter()
        scraped = [s for s in await asyncio.gather(*(scrape(r) for r in runners)) if s is not None]
        # Parsing and rendering are pure Python, ~10 ms for a vLLM's 40 KB: off the notebook server's event loop.
        engines = await asyncio.to_thread(engine_families, scraped)
        self.service.metrics.scrape_duration.set(time.perf_counter() - started)
        # Our families first: an engine family that takes one of their names is left out (prometheus.distinct).
        families = [*own_families(self.service), *engines]
        self.finish(await asyncio.to_thread(render, families), set_content_type=PROMETHEUS_TEXT)


default_handlers = [(r"metrics", MetricsHandler)]
