"""`MapProgress`: `map`'s and `embed`'s live progress in a notebook, one bar and a line of counts, updated in place.

Driven from the thread that called `map` (ipykernel sends widget updates from there while the cell runs); the words
are presentation.py's, the same a terminal shows.
"""

from __future__ import annotations

import html
from typing import Any

import ipywidgets as w
import traitlets

from ..presentation import map_progress_text
from ._common import MUTED_STYLE, error_html


class MapProgress(w.VBox):
    """A bar of rows answered (done and failed) out of the total, with `12/32 done · 1 failed · 45.2 tokens/s · ETA
    0:12` beside it, then `done(message)` (green) or `fail(message)` (red, the bar where it stopped).

    `phase` is `running`, `done` or `failed`; `counts` the last `(done, failed, total)` shown.
    """

    phase = traitlets.Unicode("running").tag(sync=False)

    def __init__(self, title: str, total: int, **kwargs: Any) -> None:
        self.heading = w.HTML(html.escape(title))
        self.bar = w.IntProgress(value=0, min=0, max=max(total, 1), bar_style="info",
                                 layout=w.Layout(width="50%", min_width="12em"))
        self.label = w.Label()
        self.message = w.HTML()
        self.counts = (0, 0, total)
        super().__init__([self.heading, w.HBox([self.bar, self.label]), self.message], **kwargs)

    def update(self, done: int, failed: int, total: int, **rates: Any) -> None:
        """Show the counts now (`rates`: `cached`, `tokens`, `seconds`, `unit`, as `map_progress_text` takes them)."""
        self.counts = (done, failed, total)
        self.bar.value = done + failed
        if failed and self.bar.bar_style == "info":
            self.bar.bar_style = "warning"
        self.label.value = map_progress_text(done, failed, total, **rates)

    def done(self, message: str = "") -> None:
        self.bar.value = self.bar.max
        self.bar.bar_style = "success" if not self.counts[1] else "warning"
        self.message.value = f'<span style="{MUTED_STYLE}">{html.escape(message)}</span>' if message else ""
        self.phase = "done"

    def fail(self, message: str) -> None:
        self.bar.bar_style = "danger"
        self.message.value = error_html(message)
        self.phase = "failed"
