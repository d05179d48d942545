"""`ModelPicker`: choose a local model, pull one with live progress, load or unload its engine.

The slow parts (a pull, an engine start) run in background threads so the kernel stays free; ipykernel sends
the widget's updates from those threads.
"""

from __future__ import annotations

import html
import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import ipywidgets as w
import traitlets

from ..errors import ModelRunnerError
from ..presentation import format_bytes
from ._common import MUTED_STYLE, WARN_STYLE, UsesRunner, describe_failure, error_html, find_option
from .progress import PullProgress

if TYPE_CHECKING:
    from ..client import RunnerClient

_logger = logging.getLogger(__name__)

#: Runner states in which a model counts as loaded (the button offers Unload).
_ACTIVE_STATES = ("loading", "ready")


class ModelPicker(UsesRunner, w.VBox):
    """Choose a local model (`.value` is its reference, e.g. `ai/smollm2:latest`), pull one, load or unload it.

    The dropdown lists every tag in the runner's store with format and size; the badge under it says which
    engine would run the selection, on which device and why (or, styled as a warning, why none can); the
    button loads the model (a one-token chat, which makes the runner start it) or unloads it. Observe
    `value` to react to the choice. `wait()` blocks until the pull or load started from the widget ends.
    """

    value = traitlets.Unicode("", help="The chosen model's reference (a tag), or '' when there is none.").tag(
        sync=False)

    def __init__(self, client: RunnerClient | None = None, *, value: str = "", **kwargs: Any) -> None:
        self._client = client
        self._threads: list[threading.Thread] = []
        self._models: dict[str, dict[str, Any]] = {}  # tag → model document
        self._runners: list[dict[str, Any]] = []
        self._busy: dict[str, str] = {}  # tag → "Loading…" / "Unloading…" while that runs
        self._quiet = False
        self._pulling = False
        self._state_lock = threading.RLock()

        self.dropdown = w.Dropdown(options=[], description="Model", layout=w.Layout(width="auto", min_width="24em"))
        self.refresh_button = w.Button(description="Refresh", icon="refresh", tooltip="List the local models again",
                                       layout=w.Layout(width="auto"))
        self.badge = w.HTML()
        self.load_button = w.Button(description="Load", icon="play", disabled=True, layout=w.Layout(width="auto"),
                                    tooltip="Start an engine for this model now (or stop it)")
        self.load_status = w.HTML()
        self.pull_text = w.Text(placeholder="ai/smollm2", description="Pull", layout=w.Layout(width="24em"))
        self.pull_button = w.Button(description="Pull", icon="download", button_style="primary",
                                    layout=w.Layout(width="auto"))
        self.progress = PullProgress(layout=w.Layout(display="none"))
        self.error = w.HTML()
        super().__init__([
            w.HBox([self.dropdown, self.refresh_button]),
            self.badge,
            w.HBox([self.load_button, self.load_status]),
            w.HBox([self.pull_text, self.pull_button]),
            self.progress,
            self.error,
        ], **kwargs)

        self.dropdown.observe(self._on_dropdown, "value")
        self.refresh_button.on_click(lambda _button: self.refresh())
        self.load_button.on_click(lambda _button: self._on_load_button())
        self.pull_button.on_click(lambda _button: self.pull())
        self.refresh(select=value or None)

    # -- public -------------------------------------------------------------------------------------------

    @property
    def model(self) -> dict[str, Any] | None:
        """The selected model's document from `client.models()` (format, size, engine, …), if any."""
        return self._models.get(self.value)

    @property
    def loaded(self) -> bool:
        """Whether the runner has an engine (loading or ready) for the selected model, as of the last refresh."""
        return self._runner_of(self.value) is not None

    def refresh(self, select: str | None = None) -> None:
        """Read the models and the running engines again; keep the selection, or choose `select` when given."""
        try:
            models = self.client.models()
            runners = self.client.ps()
        except Exception as exc:
            self._show_error(exc)
            return
        options: list[tuple[str, str]] = []
        documents: dict[str, dict[str, Any]] = {}
        for model in sorted(models, key=lambda m: (m.get("tags") or [m.get("id", "")])[0]):
            for name in model.get("tags") or [str(model.get("id", ""))]:
                documents[name] = model
                options.append((self._label(name, model), name))
        wanted = find_option(documents, select) if select else None
        with self._state_lock:
            self._runners, self._models = runners, documents
            if wanted is None:
                wanted = self.value if self.value in documents else (options[0][1] if options else "")
            self._quiet = True
            try:  # replacing the options selects the first one for a moment: observers must not see that
                self.dropdown.options = options
                self.dropdown.value = wanted or None
            finally:
                self._quiet = False
        # Outside the lock: observers of `value` are the user's code.
        if wanted != self.value:
            self.value = wanted
        else:
            self._show_selection()
        self._clear_error()

    def pull(self, reference: str | None = None) -> threading.Thread | None:
        """Pull `reference` (default: the text box) in the background; at success it is listed and selected.

        Returns the thread doing it (or None when there was nothing to pull); `wait()` joins it.
        """
        reference = (reference if reference is not None else self.pull_text.value).strip()
        if not reference:
            self._show_error(ModelRunnerError("Type a model reference to pull, e.g. ai/smollm2."))
            return None
        with self._state_lock:
            if self._pulling:
                return None  # one pull at a time; the button is disabled meanwhile
            self._pulling = True
        self._clear_error()
        self.pull_button.disabled = self.pull_text.disabled = True
        self.progress.layout.display = None
        self.progress.start(reference)
        return self._background(f"modelrunner-pull {reference}", self._pull, reference)

    def load(self) -> threading.Thread | None:
        """Start the selected model's engine in the background (`models/load`, the runner's preload)."""
        return self._start_engine_action(self.value, "Loading…", self._load)

    def unload(self) -> threading.Thread | None:
        """Stop the selected model's engine in the background."""
        return self._start_engine_action(self.value, "Unloading…", self._unload)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the background work started from this widget has ended; False if `timeout` ran out first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._state_lock:
            threads = list(self._threads)
        for thread in threads:
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        with self._state_lock:
            self._threads = [t for t in self._threads if t.is_alive()]
            return not self._threads

    # -- background work ----------------------------------------------------------------------------------

    def _background(self, name: str, work: Callable[..., None], *args: Any) -> threading.Thread:
        def run() -> None:
            try:
                work(*args)
            except Exception as exc:  # shown in the widget: a thread's traceback would land in a random cell
                _logger.debug("%s failed", name, exc_info=True)
                self._show_error(exc)

        thread = threading.Thread(target=run, name=name, daemon=True)
        with self._state_lock:
            self._threads = [t for t in self._threads if t.is_alive()]
            self._threads.append(thread)
        thread.start()
        return thread

    def _pull(self, reference: str) -> None:
        try:
            final = self.progress.track(self.client.pull(reference))
        except Exception as exc:
            if self.progress.phase != "failed":
                self.progress.fail(describe_failure(exc))
            raise
        finally:
            with self._state_lock:
                self._pulling = False
            self.pull_button.disabled = self.pull_text.disabled = False
        model = (final or {}).get("model") or {}
        tags = [str(t) for t in model.get("tags") or []]
        self.refresh(select=find_option(tags, reference) or (tags[0] if tags else reference))
        self.pull_text.value = ""

    def _start_engine_action(self, name: str, busy: str, work: Callable[[str], None]) -> threading.Thread | None:
        if not name:
            self._show_error(ModelRunnerError("Choose a model first (or pull one)."))
            return None
        with self._state_lock:
            if name in self._busy:
                return None
            self._busy[name] = busy
        self._clear_error()
        self._show_engine_state()

        def run() -> None:
            try:
                work(name)
            finally:
                with self._state_lock:
                    self._busy.pop(name, None)
                self._refresh_runners()

        return self._background(f"modelrunner-{busy.rstrip('…').lower()} {name}", run)

    def _load(self, name: str) -> None:
        self.client.load(name)

    def _unload(self, name: str) -> None:
        self.client.unload([name])

    def _refresh_runners(self) -> None:
        try:
            runners = self.client.ps()
        except Exception as exc:
            self._show_error(exc)
            return
        with self._state_lock:
            self._runners = runners
        self._show_engine_state()

    # -- display ------------------------------------------------------------------------------------------

    @staticmethod
    def _label(name: str, model: dict[str, Any]) -> str:
        fmt = (model.get("config") or {}).get("format") or "?"
        size = model.get("size")
        return f"{name} — {fmt}, {format_bytes(size)}" if isinstance(size, int | float) else f"{name} — {fmt}"

    @traitlets.validate("value")
    def _validate_value(self, proposal: dict[str, Any]) -> str:
        # `picker.value = "ai/tiny"` selects `ai/tiny:latest` (or `host/ai/tiny:latest`) when it is listed.
        value = str(proposal["value"] or "")
        return find_option(self._models, value) or value

    @traitlets.observe("value")
    def _on_value(self, change: dict[str, Any]) -> None:
        with self._state_lock:
            self._quiet = True
            try:
                self.dropdown.value = change["new"] if change["new"] in self._models else None
            finally:
                self._quiet = False
        self._show_selection()

    def _on_dropdown(self, change: dict[str, Any]) -> None:
        if not self._quiet:
            self.value = change["new"] or ""

    def _on_load_button(self) -> None:
        if self.loaded:
            self.unload()
        else:
            self.load()

    def _show_selection(self) -> None:
        self._show_badge()
        self._show_engine_state()

    def _show_badge(self) -> None:
        model = self.model
        if model is None:
            if self.value:
                text = f"{html.escape(self.value)} is not in the local store: pull it below."
            elif not self._models:
                text = "No local models yet: pull one below (e.g. <code>ai/smollm2</code>)."
            else:
                text = "No model selected."
            self.badge.value = f'<span style="{MUTED_STYLE}">{text}</span>'
            return
        engine = model.get("engine")
        if engine:
            self.badge.value = (f"<b>{html.escape(str(engine.get('engine', '')))}</b> · "
                                f"{html.escape(str(engine.get('device', '')))} — "
                                f'<span style="{MUTED_STYLE}">{html.escape(str(engine.get("reason", "")))}</span>')
        else:
            message = str(model.get("engine_error") or "No engine here can run this model.")
            self.badge.value = f'<span style="{WARN_STYLE}">⚠ {html.escape(message)}</span>'

    def _runner_of(self, name: str) -> dict[str, Any] | None:
        model = self._models.get(name)
        if model is None:
            return None
        for entry in self._runners:
            if entry.get("model_id") == model.get("id") and entry.get("state") in _ACTIVE_STATES:
                return entry
        return None

    def _show_engine_state(self) -> None:
        with self._state_lock:
            name = self.value
            busy = self._busy.get(name)
            entry = self._runner_of(name)
            runnable = bool(self.model and self.model.get("engine"))
        button = self.load_button
        if busy:
            button.description, button.icon, button.disabled = busy, "spinner", True
        elif entry is not None:
            button.description, button.icon, button.disabled = "Unload", "eject", False
        else:
            button.description, button.icon, button.disabled = "Load", "play", not runnable
        if entry is None:
            self.load_status.value = "" if busy or not name else f'<span style="{MUTED_STYLE}">not loaded</span>'
        else:
            memory = entry.get("memory")
            parts = [str(entry.get("backend_name", "")), str(entry.get("state", "")),
                     format_bytes(memory) if isinstance(memory, int) and memory else "",
                     "in use" if entry.get("in_use") else "idle"]
            text = " · ".join(html.escape(p) for p in parts if p)
            self.load_status.value = f'<span style="{MUTED_STYLE}">{text}</span>'

    def _show_error(self, exc: Exception) -> None:
        self.error.value = error_html(describe_failure(exc))

    def _clear_error(self) -> None:
        self.error.value = ""


def picker(client: RunnerClient | None = None, *, value: str = "") -> ModelPicker:
    """A `ModelPicker` on `client` (default: the runner this kernel uses), showing `value` if it is listed.

    Display it, then read (or observe) `.value` in later cells.
    """
    return ModelPicker(client, value=value)
