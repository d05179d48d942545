"""`PullProgress`: a pull's (or push's) live progress, one overall bar and a row per layer.

Driven by the NDJSON events of `RunnerClient.pull()` / `push()`; `%model pull` and `ModelPicker` both use it.
"""

from __future__ import annotations

import html
import threading
from collections.abc import Iterable
from typing import Any

import ipywidgets as w
import traitlets

from ..errors import ModelRunnerError
from ..presentation import format_bytes
from ._common import MUTED_STYLE, WARN_STYLE, error_html


class PullProgress(w.VBox):
    """A pull's (or push's) progress: one overall bar with `pulled / total (percent)`, and a row per layer.

    Feed it the events of `RunnerClient.pull()` (or `push()`) with `update(event)`, or let `track(events)` do
    it, then `done(message)` or `fail(message)`; `%model pull` and `ModelPicker` both drive it that way.
    `phase` is `idle`, `running`, `done` or `failed`, and the bar is full exactly when the transfer succeeded.
    """

    phase = traitlets.Unicode("idle").tag(sync=False)

    def __init__(self, reference: str = "", *, title: str | None = None, **kwargs: Any) -> None:
        self.heading = w.HTML()
        self.bar = w.FloatProgress(value=0.0, min=0.0, max=1.0, bar_style="info",
                                   layout=w.Layout(width="50%", min_width="12em"))
        self.label = w.Label()
        self.message = w.HTML()
        self.layers = w.VBox()
        self._layers: dict[str, tuple[w.FloatProgress, w.Label]] = {}
        self._total = 0
        self._pulled = 0
        self._lock = threading.Lock()
        super().__init__([self.heading, w.HBox([self.bar, self.label]), self.layers, self.message], **kwargs)
        if reference or title:
            self.start(reference, title=title)

    def start(self, reference: str = "", *, title: str | None = None, mode: str = "pull") -> None:
        """Clear the bars for a new transfer; the heading is `title`, else "Pulling `reference`"."""
        with self._lock:
            self._layers.clear()
            self._total = self._pulled = 0
            self.layers.children = ()
            self.bar.value, self.bar.bar_style = 0.0, "info"
            self.label.value = ""
            self.message.value = ""
            if title is not None:
                self.heading.value = html.escape(title)
            elif reference:
                verb = "Pushing" if mode == "push" else "Pulling"
                self.heading.value = f"{verb} <code>{html.escape(reference)}</code>"
            else:
                self.heading.value = ""
            self.phase = "running"

    def update(self, event: dict[str, Any]) -> None:
        """Show one event of the NDJSON stream (`progress`, `warning`, `success` or `error`)."""
        kind = event.get("type")
        if kind == "success":
            self.done(str(event.get("message") or ""))
        elif kind == "error":
            self.fail(str(event.get("message") or "The transfer failed."))
        elif kind == "warning":
            self.message.value = f'<span style="{WARN_STYLE}">⚠ {html.escape(str(event.get("message", "")))}</span>'
        elif kind == "progress":
            with self._lock:
                if self.phase != "running":
                    self.phase = "running"
                if event.get("total"):
                    self._total = int(event["total"])
                    self._pulled = min(int(event.get("pulled") or 0), self._total)
                    self.bar.value = self._pulled / self._total
                    self.label.value = self._amount(self._pulled, self._total)
                layer = event.get("layer")
                if isinstance(layer, dict) and layer.get("id"):
                    self._update_layer(str(layer["id"]), int(layer.get("size") or 0), int(layer.get("current") or 0))
                if event.get("message"):
                    self.message.value = f'<span style="{MUTED_STYLE}">{html.escape(str(event["message"]))}</span>'

    def done(self, message: str = "") -> None:
        """The transfer succeeded: every bar full and green, and the runner's closing message."""
        with self._lock:
            self.bar.value = self.bar.max
            self.bar.bar_style = "success"
            if self._total:
                self.label.value = self._amount(self._total, self._total)
            for bar, _size in self._layers.values():
                bar.value, bar.bar_style = bar.max, "success"
            self.message.value = f"✔ {html.escape(message)}" if message else ""
            self.phase = "done"

    def fail(self, message: str) -> None:
        """The transfer failed: the bar stops where it was, red, with the runner's message under it."""
        with self._lock:
            self.bar.bar_style = "danger"
            self.message.value = error_html(message)
            self.phase = "failed"

    def track(self, events: Iterable[dict[str, Any]]) -> dict[str, Any] | None:
        """Show every event of `events` (e.g. `client.pull(ref)`); returns the `success` event.

        A `ModelRunnerError` raised by the stream is shown with `fail` and raised again for the caller.
        """
        final: dict[str, Any] | None = None
        try:
            for event in events:
                self.update(event)
                if event.get("type") == "success":
                    final = event
        except ModelRunnerError as exc:
            self.fail(str(exc))
            raise
        if final is None and self.phase == "running":
            self.done()
        return final

    @staticmethod
    def _amount(done: int, total: int) -> str:
        return f"{format_bytes(done)} / {format_bytes(total)} ({int(done * 100 / total)} %)"

    def _update_layer(self, digest: str, size: int, current: int) -> None:
        row = self._layers.get(digest)
        if row is None:
            bar = w.FloatProgress(value=0.0, min=0.0, max=1.0, layout=w.Layout(width="30%", min_width="8em"))
            size_label = w.Label(format_bytes(size))
            short = digest.removeprefix("sha256:")[:12]
            self._layers[digest] = row = (bar, size_label)
            self.layers.children = (*self.layers.children,
                                    w.HBox([w.HTML(f"<code>{html.escape(short)}</code>"), bar, size_label]))
        bar, _ = row
        bar.value = min(current / size, 1.0) if size else 1.0
        if size and current >= size:
            bar.bar_style = "success"
