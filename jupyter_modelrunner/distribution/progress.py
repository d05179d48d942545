"""Progress events in DMR's NDJSON shape, and a throttle so a fast pull does not flood its listeners."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from ..sizes import format_bytes

EventType = Literal["progress", "success", "warning", "error"]
ProgressCallback = Callable[["ProgressEvent"], None]

MIN_INTERVAL_SECONDS = 0.1


@dataclass(frozen=True, slots=True)
class LayerProgress:
    id: str
    size: int
    current: int


@dataclass(frozen=True, slots=True)
class ProgressEvent:
    """One line of `POST /models/create`'s stream: `{"type", "message", "total", "layer", "mode"}`.

    `total` is the bytes of the whole operation and `pulled` how many of them are done, so a listener
    can draw an overall bar without tracking layers itself.
    """

    type: EventType
    message: str
    mode: str = "pull"
    total: int = 0
    pulled: int = 0
    layer: LayerProgress | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.type, "message": self.message, "mode": self.mode}
        if self.total:
            out["total"] = self.total
            out["pulled"] = self.pulled
        if self.layer is not None:
            out["layer"] = {"id": self.layer.id, "size": self.layer.size, "current": self.layer.current}
        return out


class ProgressTracker:
    """Counts bytes per layer from many threads and emits at most one progress event per interval.

    Completion of a layer is always reported, so listeners never miss a layer reaching 100 %.
    """

    def __init__(self, callback: ProgressCallback | None, total: int, mode: str = "pull") -> None:
        self._callback = callback
        self._lock = threading.Lock()
        self._done: dict[str, int] = {}
        self._sizes: dict[str, int] = {}
        self._last_emit = 0.0
        self.total = total
        self.mode = mode

    @property
    def transferred(self) -> int:
        with self._lock:
            return sum(self._done.values())

    def start_layer(self, digest: str, size: int, already: int = 0) -> None:
        with self._lock:
            self._sizes[digest] = size
            self._done[digest] = already

    def advance(self, digest: str, nbytes: int) -> None:
        with self._lock:
            self._done[digest] = self._done.get(digest, 0) + nbytes
            now = time.monotonic()
            finished = self._done[digest] >= self._sizes.get(digest, 0)
            if not finished and now - self._last_emit < MIN_INTERVAL_SECONDS:
                return
            self._last_emit = now
            event = self._event(digest)
        self._send(event)

    def set_layer(self, digest: str, current: int) -> None:
        """Jump a layer to `current` bytes (a resumed download, or a blob found already present)."""
        with self._lock:
            self._done[digest] = current
            event = self._event(digest)
        self._send(event)

    def _event(self, digest: str) -> ProgressEvent:
        pulled = sum(self._done.values())
        size = self._sizes.get(digest, 0)
        verb = {"pull": "Downloaded", "push": "Uploaded", "fsck": "Verified"}.get(self.mode, "Done")
        return ProgressEvent(
            type="progress",
            message=f"{verb}: {format_bytes(pulled)} of {format_bytes(self.total)}",
            mode=self.mode,
            total=self.total,
            pulled=pulled,
            layer=LayerProgress(digest, size, self._done[digest]),
        )

    def emit(self, event: ProgressEvent) -> None:
        self._send(event)

    def _send(self, event: ProgressEvent) -> None:
        if self._callback is not None:
            self._callback(event)
