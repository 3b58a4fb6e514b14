"""`fssam2 serve`: its arguments and the command (the service itself is `runtime.apps.serve`, on Ray `serve_ray`)."""

from __future__ import annotations

import argparse
import os

from ..apps.admission import Limits
from ..apps.guard import ImageLimits
from ..apps.serve import TOKEN_ENV, ServeConfig, Service, create_app
from ..engine.errors import InputError
from .common import add_runtime_options, options_from_args, require


def add_parser(sub) -> None:
    p = sub.add_parser("serve", help="serve segmentation over HTTP (FastAPI; --ray: Ray Serve)")
    p.add_argument("--artifacts", required=True, help="directory written by fssam2-export")
    p.add_argument("--store", default="fssam2-sets", help="directory of the support sets (shared by all replicas)")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default loopback only)")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--token", help=f"require 'Authorization: Bearer TOKEN' (default: ${TOKEN_ENV} if set)")
    p.add_argument("--max-bytes", type=int, default=ImageLimits.max_bytes, help="per uploaded file")
    p.add_argument("--max-pixels", type=int, default=ImageLimits.max_pixels, help="per image, checked before decoding")
    p.add_argument("--max-classes", type=int, default=ServeConfig.max_classes, help="sets per segment request")
    p.add_argument("--max-shots", type=int, default=ServeConfig.max_shots, help="supports per created set")
    p.add_argument(
        "--concurrency", type=int, default=Limits.concurrency, help="segmenter calls at once per process (replica)"
    )
    p.add_argument(
        "--max-queue",
        type=int,
        default=Limits.max_queue,
        help="requests waiting for a segmenter per process; more are answered 503 at once",
    )
    p.add_argument(
        "--queue-timeout",
        type=float,
        default=Limits.queue_timeout,
        help="seconds a request may wait for a segmenter (then 503)",
    )
    p.add_argument(
        "--timeout", type=float, default=Limits.timeout, help="seconds a segmentation may run before a 504 answer"
    )
    p.add_argument(
        "--max-body", type=int, default=ServeConfig.max_body, help="bytes per request body, checked before reading it"
    )
    p.add_argument("--store-max-sets", type=int, help="sets the store may hold (a new one beyond: 507)")
    p.add_argument("--store-ttl", type=float, help="seconds a set lives after it was last created (default: forever)")
    p.add_argument(
        "--ray",
        nargs="?",
        const="",
        metavar="ADDRESS",
        help="serve with Ray Serve: alone, join the cluster $RAY_ADDRESS or `ray start` names, else start one (as "
        "ray.init() does); 'auto' joins or fails, 'local' starts one, or HOST:PORT",
    )
    p.add_argument("--app-name", default="fssam2", help="--ray: the Serve application, the only one deleted on exit")
    p.add_argument("--route-prefix", default="/", help="--ray: the application's route prefix on Serve's proxy")
    p.add_argument("--verbose", action="store_true", help="--ray: show Ray's and Serve's own log lines")
    p.add_argument("--replicas", type=int, default=1, help="--ray: replicas (ignored with --max-replicas)")
    p.add_argument("--max-replicas", type=int, help="--ray: autoscale between --min-replicas and this")
    p.add_argument("--min-replicas", type=int, default=1)
    p.add_argument("--gpus-per-replica", type=float, default=0.0)
    p.add_argument("--cpus-per-replica", type=float, default=1.0)
    add_runtime_options(p)  # per process (replica); --threads: its inference threads


def config_from_args(args: argparse.Namespace) -> ServeConfig:
    counts = (args.concurrency, args.max_classes, args.max_shots, args.max_bytes, args.max_pixels, args.max_body)
    if min(counts) < 1 or args.max_queue < 0 or min(args.queue_timeout, args.timeout) <= 0:
        raise InputError(
            "--concurrency, --max-classes, --max-shots, --max-bytes, --max-pixels and --max-body must be >= 1, "
            "--max-queue >= 0, --queue-timeout and --timeout > 0"
        )
    if (args.store_max_sets is not None and args.store_max_sets < 1) or (
        args.store_ttl is not None and args.store_ttl <= 0
    ):
        raise InputError("--store-max-sets must be >= 1 and --store-ttl > 0")
    return ServeConfig(
        os.path.abspath(args.artifacts),
        os.path.abspath(args.store),
        options_from_args(args),
        args.token or os.environ.get(TOKEN_ENV) or None,
        ImageLimits(args.max_bytes, args.max_pixels),
        args.max_classes,
        args.max_shots,
        Limits(args.concurrency, args.max_queue, args.queue_timeout, args.timeout),
        args.max_body,
        store_max_sets=args.store_max_sets,
        store_ttl=args.store_ttl,
    )


def command(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    for module in ("fastapi", "uvicorn", "multipart", "prometheus_client"):
        require(module, "serve")
    if args.ray is not None:
        require("ray.serve", "ray")
        from ..apps.serve_ray import RayServeOptions, run_ray_serve

        return run_ray_serve(
            config,
            RayServeOptions(
                args.ray or None,
                args.host,
                args.port,
                args.replicas,
                args.min_replicas,
                args.max_replicas,
                args.gpus_per_replica,
                args.cpus_per_replica,
                args.app_name,
                args.route_prefix,
                args.verbose,
            ),
        )
    import uvicorn

    access_log()
    uvicorn.run(create_app(Service(config)), host=args.host, port=args.port, log_level="warning")
    return 0


def access_log() -> None:
    """The service's access log (one JSON line per request, logger `fssam2.access`) on stderr."""
    import logging
    import sys

    from ..apps.front import ACCESS_LOG

    if not ACCESS_LOG.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        ACCESS_LOG.addHandler(handler)
        ACCESS_LOG.setLevel(logging.INFO)
        ACCESS_LOG.propagate = False
