"""SlotShare: work on data takes only the slots interactive requests leave free (no engine: the share alone)."""

from __future__ import annotations

import asyncio

import pytest

from jupyter_modelrunner.scheduling.priority import SlotShare


async def _until(predicate, what: str) -> None:
    """Let the loop run until `predicate()` holds (a state, not a duration)."""
    for _ in range(1000):
        if predicate():
            return
        await asyncio.sleep(0)
    raise AssertionError(f"never reached: {what}")


class _Holder:
    """A request holding a slot until released, for the test to drive."""

    def __init__(self, share: SlotShare, *, background: bool) -> None:
        self.entered = asyncio.Event()
        self.release = asyncio.Event()
        self.task = asyncio.get_running_loop().create_task(self._run(share, background))

    async def _run(self, share: SlotShare, background: bool) -> None:
        async with share.hold(background=background):
            self.entered.set()
            await self.release.wait()


def test_background_work_leaves_one_slot_free():
    asyncio.run(_test_background_work_leaves_one_slot_free())


async def _test_background_work_leaves_one_slot_free():
    share = SlotShare(4)
    batch = [_Holder(share, background=True) for _ in range(6)]
    await _until(lambda: sum(h.entered.is_set() for h in batch) == 3, "three background requests in")
    assert share.background == 3 and share.waiting == 3
    chat = _Holder(share, background=False)  # an interactive request never waits here
    await asyncio.wait_for(chat.entered.wait(), 1)
    for holder in [*batch, chat]:
        holder.release.set()
    await asyncio.gather(*(h.task for h in [*batch, chat]))
    assert (share.background, share.interactive, share.waiting) == (0, 0, 0)
    assert share.background_admitted == 6 and share.background_waited == 3


def test_no_background_request_enters_while_interactive_ones_fill_the_rest():
    asyncio.run(_test_no_background_request_enters_while_interactive_ones_fill_the_rest())


async def _test_no_background_request_enters_while_interactive_ones_fill_the_rest():
    share = SlotShare(4)
    chats = [_Holder(share, background=False) for _ in range(3)]
    await _until(lambda: all(c.entered.is_set() for c in chats), "three chats in")
    first = _Holder(share, background=True)
    await _until(first.entered.is_set, "one background request in the last slot")
    second = _Holder(share, background=True)
    await _until(lambda: share.waiting == 1, "the second background request waiting")
    assert not second.entered.is_set()
    chats[0].release.set()  # a chat ends: its slot goes to the waiting background request
    await _until(second.entered.is_set, "the waiting background request admitted")
    for holder in [*chats, first, second]:
        holder.release.set()
    await asyncio.gather(*(h.task for h in [*chats, first, second]))


def test_waiting_background_requests_are_admitted_in_arrival_order():
    asyncio.run(_test_waiting_background_requests_are_admitted_in_arrival_order())


async def _test_waiting_background_requests_are_admitted_in_arrival_order():
    share = SlotShare(2)  # one background slot
    order: list[int] = []
    gate = asyncio.Event()

    async def request(number: int) -> None:
        async with share.hold(background=True):
            order.append(number)
            await gate.wait()
            gate.clear()

    tasks = [asyncio.get_running_loop().create_task(request(n)) for n in range(4)]
    for expected in range(1, 5):
        await _until(lambda n=expected: len(order) == n, f"{expected} admitted")
        gate.set()
    await asyncio.gather(*tasks)
    assert order == [0, 1, 2, 3]


def test_a_one_slot_engine_lends_its_slot_to_background_work():
    asyncio.run(_test_a_one_slot_engine_lends_its_slot_to_background_work())


async def _test_a_one_slot_engine_lends_its_slot_to_background_work():
    share = SlotShare(1)
    holder = _Holder(share, background=True)
    await asyncio.wait_for(holder.entered.wait(), 1)
    holder.release.set()
    await holder.task


def test_a_cancelled_waiter_gives_its_turn_to_the_next():
    asyncio.run(_test_a_cancelled_waiter_gives_its_turn_to_the_next())


async def _test_a_cancelled_waiter_gives_its_turn_to_the_next():
    """A client that goes away while its request waits (an interrupted `map`) must not keep a slot."""
    share = SlotShare(2)
    holding = _Holder(share, background=True)
    await _until(holding.entered.is_set, "the first in")
    gone = _Holder(share, background=True)
    nxt = _Holder(share, background=True)
    await _until(lambda: share.waiting == 2, "two waiting")
    gone.task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await gone.task
    holding.release.set()
    await _until(nxt.entered.is_set, "the next waiter admitted")
    assert share.background == 1
    nxt.release.set()
    await asyncio.gather(holding.task, nxt.task)
    assert share.background == 0 and share.waiting == 0


def test_a_waiter_cancelled_as_it_is_admitted_frees_the_slot():
    asyncio.run(_test_a_waiter_cancelled_as_it_is_admitted_frees_the_slot())


async def _test_a_waiter_cancelled_as_it_is_admitted_frees_the_slot():
    share = SlotShare(2)
    holding = _Holder(share, background=True)
    await _until(holding.entered.is_set, "the first in")
    late = _Holder(share, background=True)
    await _until(lambda: share.waiting == 1, "one waiting")
    holding.release.set()
    await _until(holding.task.done, "the slot handed over")
    assert share.background == 1 and share.waiting == 0
    late.task.cancel()  # admitted but perhaps not yet resumed, or already inside: either way its slot is freed
    with pytest.raises(asyncio.CancelledError):
        await late.task
    assert share.background == 0
