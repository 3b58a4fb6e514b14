"""`fssam2 serve --ray`: the same API as `fssam2 serve` as a Ray Serve deployment (`pip install 'fssam2[ray]'`).

Each replica is one `Service` (one segmenter, loaded in the replica's constructor) behind the same FastAPI app;
all replicas share the `--store` directory, so any replica serves any set. Replicas: a fixed count or
autoscaling between a minimum and a maximum; GPUs and CPUs per replica as Ray resources.

No `@serve.batch`: the exported graphs take one image (batch dimension 1), so a batch of queries would run
one after another inside the replica anyway; requests already overlap in a replica up to `--concurrency`
(see docs/scaling-out.md).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, replace

from ray import serve

from .ray_connect import absolute, connect
from .serve import ServeConfig, Service, create_app


@dataclass(frozen=True)
class RayServeOptions:
    address: str | None = None  # None: join or start (ray.init()); "auto": join; "local": start one; or host:port
    host: str = "127.0.0.1"
    port: int = 8080
    replicas: int = 1
    min_replicas: int = 1
    max_replicas: int | None = None  # set: autoscale between min_replicas and max_replicas
    gpus_per_replica: float = 0.0
    cpus_per_replica: float = 1.0
    name: str = "fssam2"  # the Serve application (and deployment): the only one deleted on exit
    route_prefix: str = "/"  # where Serve's proxy routes to it: /v1/segment is then <prefix>/v1/segment
    verbose: bool = False  # Ray's and Serve's INFO lines


@serve.ingress()
class Replica:
    """One replica: loads the model before it takes requests (Serve waits for the constructor)."""

    def __init__(self, config: ServeConfig):
        self.service = Service(config)
        self.service.load()

    def __serve_build_asgi_app__(self):
        return create_app(self.service, load_on_startup=False)

    def check_health(self) -> None:
        self.service.ready()


def deployment_options(config: ServeConfig, options: RayServeOptions) -> dict:
    """`serve.deployment` keywords: replicas or autoscaling, CPUs and GPUs per replica, requests per replica."""
    scaling = (
        {
            "autoscaling_config": {
                "min_replicas": options.min_replicas,
                "max_replicas": options.max_replicas,
                "target_ongoing_requests": config.admission.concurrency,
            }
        }
        if options.max_replicas
        else {"num_replicas": options.replicas}
    )
    actor = {
        "num_cpus": options.cpus_per_replica,
        **({"num_gpus": options.gpus_per_replica} if options.gpus_per_replica else {}),
    }
    limits = config.admission
    return {
        "name": options.name,
        "ray_actor_options": actor,
        "max_ongoing_requests": limits.concurrency + limits.max_queue,  # the replica's own admission queue decides
        "max_queued_requests": limits.max_queue,  # per proxy / handle, waiting for a replica; beyond: Serve's 503
        "backpressure_config": {"retry_after_s": 1},  # that 503's Retry-After, as the replicas' own (admission.py)
        **scaling,
    }


def application(config: ServeConfig, options: RayServeOptions):
    """The Serve application (bound, ready for `serve.run`)."""
    return serve.deployment(Replica, **deployment_options(config, options)).bind(config)


def start(config: ServeConfig, options: RayServeOptions) -> None:
    """Join or start Ray, start (or reuse) Serve's proxy on host:port and deploy the application at its prefix.
    Paths reach the replicas absolute."""
    config = replace(
        config,
        artifacts=os.path.abspath(config.artifacts),
        store=os.path.abspath(config.store),
        options=absolute(config.options),
    )
    connect(options.address, options.verbose)
    timeout = config.admission.queue_timeout + config.admission.timeout
    logs = {"log_level": "INFO" if options.verbose else "WARNING"}
    serve.start(
        http_options={"host": options.host, "port": options.port, "request_timeout_s": timeout}, logging_config=logs
    )
    serve.run(application(config, options), name=options.name, route_prefix=options.route_prefix, logging_config=logs)


def run_ray_serve(config: ServeConfig, options: RayServeOptions) -> int:
    """Serve until interrupted, then delete this application only: other Serve apps on the cluster keep running."""
    import ray

    try:
        start(config, options)
        _wait()
    except KeyboardInterrupt:
        pass
    finally:
        # not connected (a failed join): nothing to delete, and serve.status() would start a cluster to say so
        if ray.is_initialized() and options.name in serve.status().applications:
            serve.delete(options.name)
    return 0


def _wait() -> None:
    while True:
        time.sleep(3600)
