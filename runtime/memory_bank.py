"""The support memory bank: every support's memory tokens in one contiguous, preallocated array.

`append` copies one support's tokens into the next free rows (capacity doubles when full, so growth is
amortised and a query never concatenates); `memory` / `memory_pos` are views of the filled rows,
shape (1, tokens, channels), C-contiguous, fed to the memory attention as they are.

Rows are only ever appended, never changed, until `reset`: a device-side mirror
(`runtime.device.BankTracker`) uploads only the rows appended since its last upload.
"""

from __future__ import annotations

import numpy as np


class MemoryBank:
    def __init__(self, initial_tokens: int = 0):
        self._initial = initial_tokens
        self._memory: np.ndarray | None = None
        self._pos: np.ndarray | None = None
        self.tokens = 0  # filled rows
        self.supports = 0

    @property
    def capacity(self) -> int:
        return 0 if self._memory is None else self._memory.shape[1]

    @property
    def memory(self) -> np.ndarray:
        """(1, tokens, C) view of the filled rows."""
        if self._memory is None:
            raise RuntimeError("the memory bank is empty")
        return self._memory[:, : self.tokens]

    @property
    def memory_pos(self) -> np.ndarray:
        """(1, tokens, C) view of the filled rows' position encodings."""
        if self._pos is None:
            raise RuntimeError("the memory bank is empty")
        return self._pos[:, : self.tokens]

    def append(self, memory: np.ndarray, memory_pos: np.ndarray) -> None:
        """Add one support's tokens, both (1, T, C) with the bank's dtype and C."""
        if memory.shape != memory_pos.shape or memory.ndim != 3 or memory.shape[0] != 1:
            raise ValueError(f"memory {memory.shape} and memory_pos {memory_pos.shape} must both be (1, T, C)")
        t, c = memory.shape[1:]
        if self._memory is not None and (c, memory.dtype) != (self._memory.shape[2], self._memory.dtype):
            raise ValueError(f"memory is {memory.dtype}(.., {c}); the bank holds {self._memory.dtype}(.., {self._memory.shape[2]})")
        needed = self.tokens + t
        if needed > self.capacity:
            self._grow(max(needed, 2 * self.capacity, self._initial), c, memory.dtype)
        self._memory[:, self.tokens : needed] = memory
        self._pos[:, self.tokens : needed] = memory_pos
        self.tokens = needed
        self.supports += 1

    def reset(self) -> None:
        """Forget all rows (the allocation is kept for the next supports)."""
        self.tokens = self.supports = 0

    def _grow(self, capacity: int, channels: int, dtype: np.dtype) -> None:
        memory, pos = (np.empty((1, capacity, channels), dtype) for _ in range(2))
        if self._memory is not None:
            memory[:, : self.tokens] = self.memory
            pos[:, : self.tokens] = self.memory_pos
        self._memory, self._pos = memory, pos
