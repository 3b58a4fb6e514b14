"""Keeping data on the accelerator between graphs, behind the segmenter's numpy-only loop.

GPU backends return a graph output that another loaded graph consumes as a `DeviceTensor`: it has
`shape`, `dtype` and `ndim` like an array (the segmenter checks feeds with them) and is copied to the
host only when used as one (`np.asarray`). Fed to a graph of the same backend, it is read in place.

Support-set inputs (those with the dynamic memory axis) are the read-only arrays a `SupportSet` owns:
`DeviceCopies` keeps one device copy per such array, keyed by its identity and dropped when the array
(the set) is garbage-collected; any other array fed there is uploaded for that call only.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from contextlib import nullcontext
from typing import Any

import numpy as np


class DeviceTensor:
    """A graph output left on the device. `handle` is the backend's reference (an OrtValue, a device
    pointer); it is None once the data lives only on the host (`spill`)."""

    def __init__(self, shape, dtype, owner: object, handle: Any, fetch: Callable[[], np.ndarray], lock=None):
        """`lock`: held while copying to the host, by `numpy` and `spill` (a backend whose buffers another
        thread may overwrite passes the lock it holds while running a graph)."""
        self.shape = tuple(int(d) for d in shape)
        self.dtype = np.dtype(dtype)
        self.owner = owner  # the backend whose graphs may read `handle` directly
        self.handle = handle
        self._fetch = fetch
        self._lock = lock if lock is not None else nullcontext()
        self._host: np.ndarray | None = None

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def numpy(self) -> np.ndarray:
        """The values on the host (copied from the device once, then cached)."""
        with self._lock:
            if self._host is None:
                self._host = np.asarray(self._fetch()).reshape(self.shape)
            return self._host

    def __array__(self, dtype=None, copy=None):
        a = self.numpy()
        return a.astype(dtype) if dtype is not None and np.dtype(dtype) != a.dtype else (a.copy() if copy else a)

    def spill(self) -> None:
        """Copy to the host and let go of the device data (its buffer is about to be overwritten)."""
        with self._lock:
            if self.handle is not None:
                self.numpy()
                self.handle = None

    def __repr__(self) -> str:
        where = "device" if self.handle is not None else "host"
        return f"DeviceTensor({self.dtype}{list(self.shape)} on {where})"


def is_support_array(a: object) -> bool:
    """True for the arrays a SupportSet owns: read-only numpy arrays that own their data (so nobody can
    change them in place through a view), the only ones a device copy may be kept of."""
    return isinstance(a, np.ndarray) and not a.flags.writeable and a.flags.owndata


class DeviceCopies:
    """Device copies of support-set arrays, keyed by the array's identity; a copy is dropped (`release`)
    when its array is garbage-collected or `clear` is called. Thread-safe (`lock`, reentrant)."""

    def __init__(
        self,
        upload: Callable[[np.ndarray], Any],
        release: Callable[[Any], None] = lambda handle: None,
        lock: threading.RLock | None = None,
    ):
        self._upload, self._release = upload, release
        self._lock = lock if lock is not None else threading.RLock()
        self._copies: dict[int, Any] = {}
        self.uploads = 0  # copies made so far

    def __len__(self) -> int:
        return len(self._copies)

    def get(self, a: np.ndarray) -> Any:
        """The device copy of support array `a`, uploaded on first use."""
        with self._lock:
            handle = self._copies.get(id(a))
            if handle is None:
                handle = self._copies[id(a)] = self._upload(a)
                self.uploads += 1
                weakref.finalize(a, _drop, weakref.ref(self), id(a)).atexit = False
            return handle

    def drop(self, key: int) -> None:
        with self._lock:
            handle = self._copies.pop(key, None)
            if handle is not None:
                self._release(handle)

    def clear(self) -> None:
        with self._lock:
            for key in list(self._copies):
                self.drop(key)


def _drop(copies: weakref.ref, key: int) -> None:
    if (c := copies()) is not None:
        c.drop(key)
