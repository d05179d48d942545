"""`GET metrics`: Prometheus text with our counters and every running engine's own metrics.

Engines that expose `/metrics` (vLLM does; llama-cpp-python's server does not) are scraped on each
request, with a short timeout so one stuck engine cannot stall the scrape, and their samples get
`engine` and `model` labels so several models' series stay apart.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from jupyter_server.auth.decorator import authorized
from tornado import web

from ..scheduler import Runner
from ..service import ModelRunnerService
from .base import ModelRunnerHandler
from .prometheus import counter_text, gauge_text, merge_metrics

PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"
SCRAPE_TIMEOUT = 2.0


def own_metrics(service: ModelRunnerService) -> str:
    """The runner's counters and gauges in the exposition format."""
    m = service.metrics
    runners = list(service.scheduler.runners.values())
    parts = [
        counter_text("modelrunner_pulls_total", "Model pulls by outcome.",
                     [({"outcome": k}, v) for k, v in sorted(m.pulls.items())]),
        counter_text("modelrunner_pushes_total", "Model pushes by outcome.",
                     [({"outcome": k}, v) for k, v in sorted(m.pushes.items())]),
        counter_text("modelrunner_requests_total", "Inference requests by endpoint and model.",
                     [({"endpoint": e, "model": name}, v) for (e, name), v in sorted(m.requests.items())]),
        counter_text("modelrunner_request_errors_total", "Inference requests that failed, by endpoint.",
                     [({"endpoint": e}, v) for e, v in sorted(m.errors.items())]),
        counter_text("modelrunner_engine_events_total", "Engine lifecycle events (loading, ready, unloaded, crashed).",
                     [({"event": ev, "engine": en}, v) for (ev, en), v in sorted(m.engine_events.items())]),
        gauge_text("modelrunner_runners", "Engine processes by engine and state.",
                   [({"engine": r.key.engine, "model": r.name, "state": r.state.value}, 1) for r in runners]),
        gauge_text("modelrunner_runner_memory_bytes", "Estimated memory of each running engine.",
                   [({"engine": r.key.engine, "model": r.name}, r.memory) for r in runners]),
        gauge_text("modelrunner_memory_budget_bytes", "Memory the engines may use together.",
                   [({}, service.scheduler.memory_budget)]),
        gauge_text("modelrunner_start_time_seconds", "When the runner started (Unix time).", [({}, m.started)]),
    ]
    return "".join(parts)


async def scrape(runner: Runner) -> tuple[dict[str, str], str] | None:
    """One engine's metrics text with its labels, or None when it has none or does not answer in time."""
    try:
        response = await asyncio.wait_for(runner.request("GET", "/metrics"), SCRAPE_TIMEOUT)
    except Exception:  # a scrape never fails the whole page (timeout, engine gone, bad answer)
        return None
    if response.status_code != 200:
        return None
    return {"engine": runner.key.engine, "model": runner.name}, response.text


class MetricsHandler(ModelRunnerHandler):
    """`GET metrics`."""

    _track_activity = False  # a Prometheus scrape every 15 s must not keep an idle server alive

    @web.authenticated
    @authorized
    async def get(self) -> None:
        runners = [r for r in self.service.scheduler.runners.values() if r.state.value == "ready"]
        started = time.perf_counter()
        scraped: list[Any] = await asyncio.gather(*(scrape(r) for r in runners))
        own = own_metrics(self.service) + gauge_text(
            "modelrunner_scrape_duration_seconds", "Time spent collecting the engines' metrics.",
            [({}, round(time.perf_counter() - started, 6))])
        self.finish(merge_metrics([s for s in scraped if s is not None], own=own), set_content_type=PROMETHEUS_TEXT)


default_handlers = [(r"metrics", MetricsHandler)]
