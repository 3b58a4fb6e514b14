"""Admission control for `fssam2 serve`: a bounded queue in front of the segmenter.

At most `concurrency` calls run at once, on the service's own threads (never Starlette's pool, so health probes
and cheap routes are not stuck behind segmentations); at most `max_queue` requests wait for one, each at most
`queue_timeout` seconds; a full queue or a wait that runs out is a 503 with `Retry-After`. A call that runs past
`timeout` seconds is answered 504; it cannot be interrupted, so it keeps its slot until it ends. Everything
here runs on the event loop except the calls themselves.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

from ..engine.errors import Error

T = TypeVar("T")


class Refused(Error):
    """A request the service will not take now: an HTTP status, a code, the message and when to retry (seconds)."""

    def __init__(self, status: int, code: str, message: str, retry_after: int | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.retry_after = status, code, message, retry_after


@dataclass(frozen=True)
class Limits:
    concurrency: int = 2  # calls running at once
    max_queue: int = 16  # requests waiting for a slot; one more is refused at once
    queue_timeout: float = 30.0  # seconds a request may wait for a slot
    timeout: float = 120.0  # seconds a call may run before its request is answered 504


class Admission:
    """The slots and the queue of one process (one event loop)."""

    def __init__(self, limits: Limits, on_change: Callable[[int, int], None] = lambda running, waiting: None):
        self.limits = limits
        self._pool = ThreadPoolExecutor(limits.concurrency, thread_name_prefix="fssam2-segment")
        self._running = 0
        self._waiters: deque[asyncio.Future] = deque()
        self._on_change = on_change

    async def run(self, fn: Callable[..., T], *args) -> T:
        """`fn(*args)` on a segmenter thread once a slot is free; `Refused` (503 / 504) as the limits say."""
        await self._acquire()
        job = asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)
        job.add_done_callback(lambda _: self._release())
        try:
            return await asyncio.wait_for(asyncio.shield(job), self.limits.timeout)
        except asyncio.TimeoutError:  # not the builtin before Python 3.11
            raise Refused(504, "timeout", f"the segmentation did not finish within {self.limits.timeout:g} s") from None

    async def _acquire(self) -> None:
        if self._running < self.limits.concurrency and not self._waiters:
            self._running += 1
            self._changed()
            return
        if len(self._waiters) >= self.limits.max_queue:
            raise Refused(
                503,
                "overloaded",
                f"{self._running} segmentations running and {len(self._waiters)} waiting, the limit; retry later",
                retry_after=1,
            )
        slot = asyncio.get_running_loop().create_future()
        self._waiters.append(slot)
        self._changed()
        try:
            await asyncio.wait_for(slot, self.limits.queue_timeout)
        except asyncio.TimeoutError:  # not the builtin before Python 3.11
            if slot.done() and not slot.cancelled():  # handed over just as the wait ran out: give it back
                self._release()
            raise Refused(
                503, "overloaded", f"no segmenter free within {self.limits.queue_timeout:g} s; retry later", 1
            ) from None
        finally:
            if slot in self._waiters:
                self._waiters.remove(slot)
            self._changed()

    def _release(self) -> None:
        while self._waiters:
            slot = self._waiters.popleft()
            if not slot.done():
                slot.set_result(None)  # the slot passes to the next waiter: `_running` unchanged
                self._changed()
                return
        self._running -= 1
        self._changed()

    def _changed(self) -> None:
        self._on_change(self._running, len(self._waiters))

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
