"""`RunnerStatus`: what the runner has loaded (model, engine, device, state, memory, keep-alive), as a table."""

from __future__ import annotations

import html
from typing import TYPE_CHECKING, Any

import ipywidgets as w
import traitlets

from ..presentation import context_cell, expires_text, format_bytes
from ._common import MUTED_STYLE, UsesRunner, describe_failure, error_html

if TYPE_CHECKING:
    from ..client import RunnerClient

class RunnerStatus(UsesRunner, w.VBox):
    """What the runner has loaded (model, engine, device, state, memory, in use, keep-alive), from `client.ps()`.

    Compact enough to sit above a chat; `refresh()` (or its button) reads the state again. `runners` holds
    the last answer, for code that wants the numbers rather than the table.
    """

    runners = traitlets.List(help="The last `client.ps()` answer.").tag(sync=False)

    def __init__(self, client: RunnerClient | None = None, **kwargs: Any) -> None:
        self._client = client
        self.table = w.HTML()
        self.refresh_button = w.Button(description="Refresh", icon="refresh", layout=w.Layout(width="auto"))
        self.error = w.HTML()
        super().__init__([w.HBox([w.HTML("<b>Model runner</b>"), self.refresh_button]), self.table, self.error],
                         **kwargs)
        self.refresh_button.on_click(lambda _button: self.refresh())
        self.refresh()

    def refresh(self) -> list[dict[str, Any]]:
        """Ask the runner what is loaded and show it; returns the entries (empty when the runner did not answer)."""
        try:
            runners = self.client.ps()
        except Exception as exc:
            self.error.value = error_html(describe_failure(exc))
            return []
        self.error.value = ""
        self.runners = runners
        self.table.value = self._table(runners)
        return runners

    @staticmethod
    def _table(runners: list[dict[str, Any]]) -> str:
        if not runners:
            return f'<span style="{MUTED_STYLE}">No model is loaded.</span>'
        head = ("Model", "Engine", "Device", "State", "Context", "Memory", "In use", "Unloads")
        rows = []
        for entry in runners:
            memory = entry.get("memory")
            requests = int(entry.get("requests") or 0)
            cells = (
                entry.get("model_name", ""),
                entry.get("backend_name", ""),
                entry.get("device", ""),
                entry.get("state", ""),
                context_cell(entry),
                format_bytes(memory) if isinstance(memory, int) and memory else "",
                f"yes ({requests})" if entry.get("in_use") else "no",
                expires_text(entry),
            )
            rows.append("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells) + "</tr>")
        header = "<tr>" + "".join(f"<th style='text-align:left'>{h}</th>" for h in head) + "</tr>"
        return f"<table style='border-collapse: collapse'>{header}{''.join(rows)}</table>"
