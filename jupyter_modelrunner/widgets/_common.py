"""What every widget here shares: the theme-aware styles, how a failure is shown, and how a widget finds its runner.

Kept apart from the widgets themselves so each widget module is one widget, and none imports another's internals.
"""

from __future__ import annotations

import html
from collections.abc import Iterable
from typing import TYPE_CHECKING

from ..errors import ModelRunnerError

if TYPE_CHECKING:
    from ..client import RunnerClient

#: JupyterLab's theme colours (so dark themes work), with fallbacks for front ends without them.
ERROR_STYLE = "color: var(--jp-error-color1, #d32f2f); white-space: pre-wrap"
WARN_STYLE = ("color: var(--jp-warn-color0, #8a5a00); background: var(--jp-warn-color3, #fff3cd); "
               "padding: 2px 6px; border-radius: 3px; white-space: pre-wrap")
MUTED_STYLE = "color: var(--jp-ui-font-color2, #616161)"


def error_html(message: str) -> str:
    return f'<span style="{ERROR_STYLE}">✖ {html.escape(message)}</span>'


def describe_failure(exc: Exception) -> str:
    """The sentence to show for a failure: the runner's own message, or the exception's for a surprise."""
    if isinstance(exc, ModelRunnerError):
        return str(exc)
    return f"{exc.__class__.__name__}: {exc}"


class UsesRunner:
    """The `client` property of every widget here: the one given, else the process-wide runner, found on first use.

    Resolving at first use, not at import, keeps `import jupyter_modelrunner.widgets` free of network access
    (finding the runner may start an embedded one); once found, a widget keeps talking to that runner.
    """

    _client: RunnerClient | None = None

    @property
    def client(self) -> RunnerClient:
        if self._client is None:
            from ..client import runner

            self._client = runner()
        return self._client


def find_option(values: Iterable[str], reference: str) -> str | None:
    """The stored tag `reference` names: exact, or as a short form (`ai/tiny` for `host/ai/tiny:latest`)."""
    reference = reference.strip()
    if not reference:
        return None
    last = reference.rsplit("/", 1)[-1]
    wanted = [reference] if (":" in last or "@" in reference) else [reference, f"{reference}:latest"]
    values = list(values)
    for name in wanted:
        for value in values:
            if value == name or value.endswith("/" + name):
                return value
    return None
