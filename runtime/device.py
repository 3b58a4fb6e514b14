"""Keeping data on the accelerator between graphs, behind the segmenter's numpy-only loop.

GPU backends return a graph output that another loaded graph consumes as a `DeviceTensor`: it has
`shape`, `dtype` and `ndim` like an array (the segmenter checks feeds with them) and is copied to the
host only when used as one (`np.asarray`). Fed to a graph of the same backend, it is read in place.

Memory-bank inputs (those with the dynamic memory axis) are append-only between resets: a graph keeps
a device copy and `BankTracker` says which rows are new since its last call. The segmenter calls
`forget_memory()` on every graph that has it when it drops its supports.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np


class DeviceTensor:
    """A graph output left on the device. `handle` is the backend's reference (an OrtValue, a device
    pointer); it is None once the data lives only on the host (`spill`)."""

    def __init__(self, shape, dtype, owner: object, handle: Any, fetch: Callable[[], np.ndarray]):
        self.shape = tuple(int(d) for d in shape)
        self.dtype = np.dtype(dtype)
        self.owner = owner  # the backend whose graphs may read `handle` directly
        self.handle = handle
        self._fetch = fetch
        self._host: np.ndarray | None = None

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def numpy(self) -> np.ndarray:
        """The values on the host (copied from the device once, then cached)."""
        if self._host is None:
            self._host = np.asarray(self._fetch()).reshape(self.shape)
        return self._host

    def __array__(self, dtype=None, copy=None):
        a = self.numpy()
        return a.astype(dtype) if dtype is not None and np.dtype(dtype) != a.dtype else (a.copy() if copy else a)

    def spill(self) -> None:
        """Copy to the host and let go of the device data (its buffer is about to be overwritten)."""
        if self.handle is not None:
            self.numpy()
            self.handle = None

    def __repr__(self) -> str:
        where = "device" if self.handle is not None else "host"
        return f"DeviceTensor({self.dtype}{list(self.shape)} on {where})"


class BankTracker:
    """Rows of one append-only memory-bank input not yet on the device.

    `start(feed)` returns the first row (axis 1) to upload: the rows uploaded before when the feed
    is the same buffer grown by appends, else 0 (a new buffer, fewer rows, or after `forget`)."""

    def __init__(self) -> None:
        self._key: tuple | None = None
        self._rows = 0

    def forget(self) -> None:
        self._key, self._rows = None, 0

    def start(self, feed: np.ndarray) -> int:
        key = (feed.__array_interface__["data"][0], feed.strides, feed.shape[:1], feed.shape[2:], feed.dtype.str)
        rows = feed.shape[1]
        first = self._rows if key == self._key and rows >= self._rows else 0
        self._key, self._rows = key, rows
        return first
