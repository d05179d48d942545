"""Interactive requests first: work on data (`map`, a batch) takes only the slots a chat leaves free.

An engine works on `capacity` requests at once (llama-server's slots) and queues the rest inside itself, first come
first served, where nothing can overtake. A `map` over a column or a batch of 1,000 lines would fill every slot and
the engine's queue, and a chat typed meanwhile would wait for all of it. So background requests wait here instead,
before they reach the engine: they may hold at most `capacity - 1` slots (one stays free for a chat), and none is let
in while interactive requests hold the rest. Interactive requests never wait here; they go straight to the engine,
which has a free slot for them.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator


class SlotShare:
    """Who holds one runner's slots: interactive requests (never held back) and background ones (admitted in
    arrival order while the share allows)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = max(1, capacity)
        self.interactive = 0
        self.background = 0
        #: Background requests admitted since the runner started, and those that had to wait for a slot.
        self.background_admitted = 0
        self.background_waited = 0
        self._waiting: deque[asyncio.Future[None]] = deque()

    @property
    def background_limit(self) -> int:
        """Slots background requests may hold at once: all but one (a one-slot engine lends its only slot)."""
        return self.capacity - 1 if self.capacity > 1 else 1

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def _has_room(self) -> bool:
        return self.background < self.background_limit and self.interactive + self.background < self.capacity

    @contextlib.asynccontextmanager
    async def hold(self, *, background: bool) -> AsyncIterator[None]:
        """Hold a slot for one request's length; a background request first waits for one it may take."""
        if not background:
            self.interactive += 1
            try:
                yield
            finally:
                self.interactive -= 1
                self._admit_waiting()
            return
        await self._enter_background()
        try:
            yield
        finally:
            self.background -= 1
            self._admit_waiting()

    async def _enter_background(self) -> None:
        if not self._waiting and self._has_room():
            self.background += 1
            self.background_admitted += 1
            return
        self.background_waited += 1
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append(turn)
        try:
            await turn  # `_admit_waiting` counts us in before it wakes us
        except asyncio.CancelledError:
            if turn.done() and not turn.cancelled():  # admitted in the same turn as cancelled: give it back
                self.background -= 1
                self._admit_waiting()
            else:
                with contextlib.suppress(ValueError):
                    self._waiting.remove(turn)
            raise

    def _admit_waiting(self) -> None:
        while self._waiting and self._has_room():
            turn = self._waiting.popleft()
            if turn.done():
                continue
            self.background += 1
            self.background_admitted += 1
            turn.set_result(None)

    def status(self) -> dict[str, int]:
        """What `ps` shows of the share."""
        return {"background_slots": self.background_limit, "background_requests": self.background,
                "background_waiting": self.waiting}
