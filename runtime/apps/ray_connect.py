"""Shared by `fssam2 label --ray` and `fssam2 serve --ray`: joining or starting a Ray cluster, quietly by default,
and paths made absolute before they reach actors (which do not share the driver's working directory)."""

from __future__ import annotations

import os
from dataclasses import replace

from ..engine.options import RuntimeOptions


def connect(address: str | None, verbose: bool = False) -> bool:
    """`ray.init(address)` unless Ray is initialised (None: join the cluster RAY_ADDRESS or `ray start` names, else
    start one, as `ray.init()` does; "auto": join or fail; "local": start one; or host:port). Ray's INFO lines
    and the workers' output stay off unless `verbose`. True if this call initialised Ray."""
    import logging

    import ray

    if not verbose:
        for name in ("ray", "ray.data", "ray.serve"):
            logging.getLogger(name).setLevel(logging.WARNING)
    if ray.is_initialized():
        return False
    ray.init(
        address=address,
        include_dashboard=False,
        log_to_driver=verbose,
        logging_level=logging.INFO if verbose else logging.WARNING,
    )
    return True


def absolute(options: RuntimeOptions) -> RuntimeOptions:
    """`options` with its cache directory (if given) absolute."""
    return options if options.cache_dir is None else replace(options, cache_dir=os.path.abspath(options.cache_dir))
