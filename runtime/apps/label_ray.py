"""`fssam2 label --ray`: the label job as a Ray Data pipeline (needs `pip install 'fssam2[ray]'`).

An actor pool of segmenters (`map_batches` with a callable class): each actor loads the artifacts once and
takes the support sets from Ray's object store (encoded once, on the driver; actors never re-encode). Actors
write each image's outputs to `--out` (a path every worker can write: a shared filesystem) and return its
record; the driver journals the records as they arrive, so resuming works as on one machine.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace

import numpy as np

from ..engine.manifest import load_manifest
from ..engine.options import RuntimeOptions
from ..engine.support_set import SupportSet
from .label import Item, Labeler, LabelJob, Summary, model_identity, run_job
from .ray_connect import absolute, connect


@dataclass(frozen=True)
class RayOptions:
    address: str | None = None  # None: join or start (ray.init()); "auto": join; "local": start one; or host:port
    workers: int = 2  # actors in the pool
    gpus_per_worker: float = 0.0
    threads_per_worker: int = 1  # CPUs reserved per actor
    options: RuntimeOptions = field(default_factory=lambda: RuntimeOptions(threads=1))  # each actor's segmenter
    verbose: bool = False  # Ray's own INFO lines and progress bars


def actor_resources(options: RayOptions) -> dict:
    """Resources each actor reserves: `--threads-per-worker` CPUs, `--gpus-per-worker` GPUs (if any)."""
    return {
        "num_cpus": options.threads_per_worker,
        **({"num_gpus": options.gpus_per_worker} if options.gpus_per_worker else {}),
    }


class _Worker:
    """One actor: a segmenter over the artifacts and the sets fetched from the object store."""

    def __init__(self, artifacts: str, options: RuntimeOptions, sets_box: list, job: LabelJob):
        import ray

        from ..engine.segmenter import FewShotSegmenter

        sets: Mapping[str, SupportSet] = ray.get(sets_box[0])
        self.labeler = Labeler(FewShotSegmenter(artifacts, options), sets, job)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        records = [self.labeler(Item(str(p), str(k))) for p, k in zip(batch["path"], batch["key"])]
        return {"record": np.array([json.dumps(r) for r in records], dtype=object)}


def run_ray(
    artifacts: str, sets: Mapping[str, SupportSet], job: LabelJob, items: list[Item], options: RayOptions, **kwargs
) -> Summary:
    """Run the job on a Ray cluster; same outputs, journal and summary as `label.run_local`. Paths reach the
    actors absolute: they do not share the driver's working directory."""
    import ray

    artifacts, job = os.path.abspath(artifacts), replace(job, out=job.out.absolute())
    started = connect(options.address, options.verbose)
    try:
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = options.verbose  # ours counts images, not blocks
        context.print_on_execution_start = options.verbose
        sets_ref = ray.put(dict(sets))

        def process(todo: list[Item]) -> Iterator[dict]:
            if not todo:
                return
            ds = ray.data.from_items(
                [{"path": it.path, "key": it.key} for it in todo],
                override_num_blocks=min(len(todo), 4 * options.workers),
            )
            out = ds.map_batches(
                _Worker,
                batch_size=1,
                compute=ray.data.ActorPoolStrategy(size=options.workers),
                fn_constructor_kwargs={
                    "artifacts": str(artifacts),
                    "options": absolute(options.options),
                    "sets_box": [sets_ref],
                    "job": job,
                },
                **actor_resources(options),
            )
            for row in out.iter_rows():
                yield json.loads(row["record"])

        model = model_identity(load_manifest(artifacts, verify_files=False), options.options.provider)
        return run_job(items, job, sets, process, model, **kwargs)
    finally:
        if started:
            ray.shutdown()
