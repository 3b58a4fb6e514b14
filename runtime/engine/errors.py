"""The runtime's exceptions: every error it raises on purpose derives from `Error`.

Each also derives from the built-in exception its kind used to be (ValueError for bad input, RuntimeError
for a failing backend), so `except ValueError` in older callers keeps working.
"""

from __future__ import annotations


class Error(Exception):
    """Base of every fssam2 runtime error."""


class InputError(Error, ValueError):
    """An image, mask, argument or call handed to the runtime is unusable; the message names the problem."""


class ManifestError(Error, ValueError):
    """The artifacts directory does not hold a usable manifest or graph set."""


class SupportSetError(Error, ValueError):
    """A support set cannot be read, or was made by another model than the segmenter's (the message names every difference)."""


class ProviderUnavailableError(Error, RuntimeError):
    """The requested execution provider cannot be used; there is no silent CPU fallback."""


class BackendError(Error, RuntimeError):
    """An inference backend failed: a graph could not be loaded or run."""


class ShotLimitError(Error, RuntimeError):
    """More supports than the TensorRT profile (engine or EP) was built for."""


class EngineMismatchError(Error, RuntimeError):
    """An engine built for another TensorRT version or GPU architecture than this machine's."""


class CudaError(BackendError):
    """A CUDA runtime call failed."""


class FidelityError(Error, ValueError):
    """Two artifact sets cannot be compared (different model, image size or graph I/O)."""
