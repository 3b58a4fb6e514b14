"""Progress bars: tqdm when asked for and installed (it is optional for the runtime), else a silent stand-in."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from typing import Any


class _Silent:
    """What the callers use of a tqdm bar, doing nothing."""

    def __init__(self, iterable: Iterable | None = None):
        self._iterable = iterable

    def __iter__(self) -> Iterator:
        return iter(self._iterable if self._iterable is not None else ())

    def update(self, n: int = 1) -> None: ...

    def set_postfix(self, *args: Any, **kwargs: Any) -> None: ...

    def set_description(self, text: str) -> None: ...

    def close(self) -> None: ...

    def __enter__(self) -> _Silent:
        return self

    def __exit__(self, *exc: object) -> None: ...


def progress(iterable: Iterable | None = None, *, enabled: bool = True, **tqdm_kwargs: Any):
    """A tqdm bar over `iterable` (or one updated by hand: total=...) on stderr when `enabled` and tqdm is
    installed; otherwise a silent object with the same methods (iterating it yields `iterable`)."""
    if enabled:
        try:
            from tqdm import tqdm
        except ImportError:
            pass
        else:
            return tqdm(iterable, file=sys.stderr, **tqdm_kwargs)
    return _Silent(iterable)
