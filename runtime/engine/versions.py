"""Installed distributions' versions (importlib.metadata)."""

from __future__ import annotations

from importlib import metadata


def dist_version(dist: str) -> str | None:
    """The installed version of distribution `dist`, None when it is not installed."""
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None
