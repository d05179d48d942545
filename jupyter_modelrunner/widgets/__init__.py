"""Notebook widgets for the model runner: pick a local model, pull one with live progress, see what runs.

Stock ipywidgets 8 only (no custom JavaScript), so they work wherever widgets render: JupyterLab, Notebook 7,
VS Code. Like every front end they talk to the runner through `client.py` only, so what they show is what the
CLI, the magics and the JupyterLab sidebar see. Anything slow (a pull, loading an engine) runs in a background
thread: the kernel stays free for other cells, and ipykernel sends the widgets' updates from that thread.
Failures are shown inside the widget as the runner's one-line message, never as a traceback.

One module per widget: `progress` (`PullProgress`), `model_picker` (`ModelPicker`, `picker()`), `status`
(`RunnerStatus`), `map_progress` (`MapProgress`, `map`'s and `embed`'s); `_common` holds what they share. The
public names stay importable from here.
"""

from __future__ import annotations

from .map_progress import MapProgress
from .model_picker import ModelPicker, picker
from .progress import PullProgress
from .status import RunnerStatus

__all__ = ["MapProgress", "ModelPicker", "PullProgress", "RunnerStatus", "picker"]
