"""`fssam2 serve`: few-shot segmentation over HTTP (FastAPI; `pip install 'fssam2[serve]'`).

API (OpenAPI docs at /docs):
  POST   /v1/support-sets        multipart `images` + `masks` (same count, in order) -> {"id": content hash, ...}
  GET    /v1/support-sets/{id}   what the set holds;  DELETE /v1/support-sets/{id}
  POST   /v1/segment             multipart `query` + one or more `set` fields (`ID` or `NAME=ID`); `format=png`
                                 (default: a 0/255 mask PNG for one set, a palette label PNG for N, scores in the
                                 X-Fssam2-Classes header) or `format=json` (scores and one RLE mask per class)
  GET    /healthz  /readyz  /metrics (Prometheus text)
Sets live in the `--store` directory as `<id>.fssam2` files, so every process or replica serves every set and a
restart loses nothing. User mistakes get a 4xx JSON body {"error": {"code", "message"}}; 500 is for bugs.

One process holds one segmenter. Admission control (`admission.py`): at most `concurrency` requests decode,
segment and encode at once, on the service's own threads; at most `max_queue` wait (503 + Retry-After beyond, or
after `queue_timeout`), and a call past `timeout` is answered 504. The front door (`front.py`) checks the token and
the body size before the body is read, gives every answer an X-Request-ID, counts it and logs it. The segmenter is
called from several threads under the runtime's threading contract (runtime/engine/segmenter.py module docstring).
"""

import json
import threading
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Annotated, Literal

import numpy as np

from ..engine.errors import Error, InputError, SupportSetError
from ..engine.options import RuntimeOptions
from .admission import Admission, Limits, Refused
from .guard import ImageLimitError, ImageLimits, decode_image, decode_mask
from .render import png_bytes, rle_encode
from .store import SetStore, StoreFullError, UnknownSetError

TOKEN_ENV = "FSSAM2_TOKEN"


@dataclass(frozen=True)
class ServeConfig:
    artifacts: str
    store: str
    options: RuntimeOptions = field(default_factory=RuntimeOptions)  # how the segmenter runs its graphs
    token: str | None = None  # bearer token required on /v1/* and /metrics; None: no auth
    limits: ImageLimits = field(default_factory=ImageLimits)
    max_classes: int = 16  # sets per /v1/segment request
    max_shots: int = 16  # supports per created set
    admission: Limits = field(default_factory=Limits)  # concurrency, queue, timeouts (admission.py)
    max_body: int = 128 * 2**20  # bytes per request body (all files and fields)
    max_name: int = 64  # characters per class name
    store_max_sets: int | None = None  # sets in the store; a new one beyond is refused (507)
    store_ttl: float | None = None  # seconds a set lives after it was last created


class ApiError(Refused):
    """An HTTP error answer: status, a machine-readable code, the message (and a Retry-After, for 503)."""


def _api_error(e: Exception) -> ApiError:
    """The HTTP answer to a runtime error caused by the request."""
    if isinstance(e, ImageLimitError):
        return ApiError(413, "too_large", str(e))
    if isinstance(e, StoreFullError):
        return ApiError(507, "store_full", str(e))
    if isinstance(e, UnknownSetError):
        return ApiError(404, "unknown_set", str(e))
    if isinstance(e, SupportSetError):
        return ApiError(409, "set_mismatch", str(e))
    if isinstance(e, InputError):
        return ApiError(422, "invalid_input", str(e))
    return ApiError(500, "runtime_error", f"{type(e).__name__}: {e}")  # a backend failure, not the request


class Metrics:
    """Prometheus metrics of one process (own registry: several services may live in one process)."""

    def __init__(self):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        buckets = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
        self.module = Histogram(
            "fssam2_module_seconds",
            "Latency per runtime module (graphs, pre/postprocess, phases)",
            ["module"],
            registry=self.registry,
            buckets=buckets,
        )
        self.request = Histogram(
            "fssam2_request_seconds", "Request latency", ["route"], registry=self.registry, buckets=buckets
        )
        self.requests = Counter("fssam2_requests", "Requests answered", ["route", "status"], registry=self.registry)
        self.errors = Counter(
            "fssam2_errors", "Requests answered with an error", ["route", "code"], registry=self.registry
        )
        self.queue = Gauge("fssam2_queue", "Requests waiting for the segmenter", registry=self.registry)
        self.in_flight = Gauge("fssam2_in_flight", "Segmenter calls running", registry=self.registry)

    def on_timing(self, name: str, ms: float) -> None:
        self.module.labels(name).observe(ms / 1e3)

    def text(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)


class Service:
    """The segmenter, the set store and the metrics of one process; the HTTP layer is `create_app`."""

    def __init__(self, config: ServeConfig):
        self.config = config
        self.store = SetStore(config.store, max_sets=config.store_max_sets, ttl=config.store_ttl)
        self.metrics = Metrics()
        self.admission = Admission(config.admission, self._count)
        self.seg = None
        self.load_error: str | None = None

    def _count(self, running: int, waiting: int) -> None:
        self.metrics.in_flight.set(running)
        self.metrics.queue.set(waiting)

    def load(self) -> None:
        """Load the artifacts (verifying their hashes); /readyz answers 200 afterwards."""
        from ..engine.segmenter import FewShotSegmenter

        try:
            self.seg = FewShotSegmenter(self.config.artifacts, self.config.options, on_timing=self.metrics.on_timing)
        except Exception as e:
            self.load_error = f"{type(e).__name__}: {e}"
            raise

    def ready(self):
        """The segmenter, or a 503 while it loads (or failed to load)."""
        if self.seg is None:
            raise ApiError(503, "not_ready", self.load_error or "the model is still loading", retry_after=5)
        return self.seg

    def create_set(self, images: list[tuple[str, bytes]], masks: list[tuple[str, bytes]]) -> tuple[str, object]:
        """Decode, check and encode the supports, store the set (in a segmenter slot: `Admission.run`)."""
        if not images or len(images) != len(masks):
            raise ApiError(
                422,
                "invalid_input",
                f"send as many `masks` as `images` (at least one), got {len(images)} images and {len(masks)} masks",
            )
        if len(images) > self.config.max_shots:
            raise ApiError(
                422, "too_many_shots", f"{len(images)} supports, more than the limit of {self.config.max_shots}"
            )
        lim = self.config.limits
        pairs = [
            (decode_image(i, f"image {n} ({iname})", lim), decode_mask(m, f"mask {n} ({mname})", lim))
            for n, ((iname, i), (mname, m)) in enumerate(zip(images, masks))
        ]
        for n, (rgb, m) in enumerate(pairs):
            if m.shape != rgb.shape[:2]:
                raise ApiError(
                    422,
                    "mask_size_mismatch",
                    f"mask {n} is {m.shape[1]}x{m.shape[0]} (WxH) but image {n} is {rgb.shape[1]}x{rgb.shape[0]}",
                )
        s = self.ready().encode_supports(pairs)
        return self.store.put(s), s

    def parse_sets(self, fields: list[str]) -> dict[str, str]:
        """`set` form fields (`ID` or `NAME=ID`) -> {class name: set id}, in order."""
        if not fields:
            raise ApiError(422, "invalid_input", "name at least one support set: a `set` field with its id")
        if len(fields) > self.config.max_classes:
            raise ApiError(
                422, "too_many_classes", f"{len(fields)} sets, more than the limit of {self.config.max_classes}"
            )
        named: dict[str, str] = {}
        for f in fields:
            name, sep, set_id = f.partition("=")
            name, set_id = (name, set_id) if sep else (f, f)
            if sep and not (0 < len(name) <= self.config.max_name and name.isprintable()):
                raise ApiError(
                    422,
                    "invalid_input",
                    f"class names are 1 to {self.config.max_name} printable characters, got {name[:80]!r}",
                )
            if name in named:
                raise ApiError(422, "invalid_input", f"class {name!r} given twice")
            named[name] = set_id
        return named

    def segment(self, query: bytes, named: dict[str, str], format: str = "png") -> tuple[bytes, str, dict]:
        """Decode, segment and encode the answer (body, media type, headers), in a segmenter slot."""
        seg = self.ready()
        sets = {name: self.store.get(set_id) for name, set_id in named.items()}  # the segmenter checks their model
        result = seg.segment(decode_image(query, "query", self.config.limits), sets)
        labels = result.label_map
        areas = np.bincount(labels.ravel(), minlength=len(named) + 1)
        classes = [
            {
                "name": name,
                "set": named[name],
                "label": i,
                "score": r.score,
                "object_score": r.object_score,
                "area": int(areas[i]),
            }
            for i, (name, r) in enumerate(result.items(), 1)
        ]
        del result  # the per-class logits: only the label map is needed from here
        if format == "json":
            for c in classes:
                c["mask"] = rle_encode(labels == c["label"])
            body = {"width": labels.shape[1], "height": labels.shape[0], "classes": classes}
            return json.dumps(body).encode(), "application/json", {}
        one = len(named) == 1
        png = png_bytes(labels * np.uint8(255) if one else labels, palette=not one)
        return png, "image/png", {"X-Fssam2-Classes": json.dumps(classes)}


def create_app(service: Service, load_on_startup: bool = True):
    """The FastAPI app over `service`, behind the front door (`front.FrontDoor`); with `load_on_startup` the model
    loads in a thread after startup (/healthz answers at once, /readyz once loaded)."""
    from fastapi import FastAPI, File, Form, Request, UploadFile
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, Response
    from starlette.exceptions import HTTPException
    from starlette.routing import Match

    from .front import Door, FrontDoor

    @asynccontextmanager
    async def lifespan(app):
        if load_on_startup and service.seg is None:
            threading.Thread(target=_load_quietly, args=(service,), daemon=True, name="fssam2-load").start()
        yield

    app = FastAPI(
        title="fssam2",
        version="1",
        lifespan=lifespan,
        description="Few-shot segmentation (FS-SAM2): create support sets, segment queries with them.",
    )
    config, lim = service.config, service.config.limits

    def error_response(request: Request, e: Refused):
        service.metrics.errors.labels(_route(request.scope), e.code).inc()
        headers = {"Retry-After": str(e.retry_after)} if e.retry_after is not None else None
        return JSONResponse({"error": {"code": e.code, "message": e.message}}, status_code=e.status, headers=headers)

    @app.exception_handler(Refused)
    async def _refused(request: Request, e: Refused):
        return error_response(request, e)

    @app.exception_handler(Error)
    async def _runtime(request: Request, e: Error):
        return error_response(request, _api_error(e))

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, e: RequestValidationError):
        problems = "; ".join(f"{'.'.join(str(x) for x in err['loc'])}: {err['msg']}" for err in e.errors())
        return error_response(request, ApiError(422, "invalid_request", problems))

    @app.exception_handler(HTTPException)
    async def _http(request: Request, e: HTTPException):
        code = {413: "too_large", 404: "not_found", 405: "method_not_allowed"}.get(e.status_code, "invalid_request")
        return error_response(request, ApiError(e.status_code, code, str(e.detail)))

    async def read(upload: UploadFile, what: str) -> tuple[str, bytes]:
        data = await upload.read(lim.max_bytes + 1)
        if len(data) > lim.max_bytes:
            raise ApiError(413, "too_large", f"{what}: more than the limit of {lim.max_bytes} bytes")
        return upload.filename or what, data

    @app.get("/healthz", tags=["health"])
    async def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"])
    async def readyz():
        if service.seg is None:
            return JSONResponse(
                {"status": "failed" if service.load_error else "loading", "error": service.load_error},
                status_code=503,
                headers={"Retry-After": "5"},
            )
        return {"status": "ready", "model": service.seg.fingerprint.model, "weights": service.seg.fingerprint.weights}

    @app.get("/metrics", tags=["health"])
    async def metrics() -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST

        return Response(service.metrics.text(), media_type=CONTENT_TYPE_LATEST)

    @app.post("/v1/support-sets", tags=["support sets"], status_code=201)
    async def create_support_set(
        images: Annotated[list[UploadFile], File(description="support images")],
        masks: Annotated[list[UploadFile], File(description="their masks, same order; nonzero = object")],
    ) -> dict:
        if len(images) > config.max_shots:
            raise ApiError(422, "too_many_shots", f"{len(images)} supports, more than the limit of {config.max_shots}")
        files = [await read(f, f"image {i}") for i, f in enumerate(images)]
        mask_files = [await read(f, f"mask {i}") for i, f in enumerate(masks)]
        service.ready()
        set_id, s = await service.admission.run(service.create_set, files, mask_files)
        return _describe(set_id, s)

    @app.get("/v1/support-sets", tags=["support sets"])
    def list_support_sets() -> dict:
        return {"ids": service.store.ids()}

    @app.get("/v1/support-sets/{set_id}", tags=["support sets"])
    def get_support_set(set_id: str) -> dict:
        return _describe(set_id, service.store.get(set_id))

    @app.delete("/v1/support-sets/{set_id}", tags=["support sets"], status_code=204, response_class=Response)
    def delete_support_set(set_id: str) -> None:
        service.store.delete(set_id)

    @app.post("/v1/segment", tags=["segment"], responses={200: {"content": {"image/png": {}, "application/json": {}}}})
    async def segment(
        query: Annotated[UploadFile, File(description="image to segment")],
        set: Annotated[list[str], Form(description="support set: `ID` or `NAME=ID`; repeat for N classes")],
        format: Annotated[Literal["png", "json"], Form()] = "png",
    ) -> Response:
        named = service.parse_sets(set)
        data = (await read(query, "query"))[1]
        service.ready()
        body, media_type, headers = await service.admission.run(service.segment, data, named, format)
        return Response(body, media_type=media_type, headers=headers)

    def route(scope: dict) -> str:
        """The matched route's template (a bounded metrics label), also for requests the front door answered."""
        found = scope.get("route") or next((r for r in app.router.routes if r.matches(scope)[0] == Match.FULL), None)
        return getattr(found, "path", "unmatched")

    def record(route_: str, status: int, seconds: float, code: str | None) -> None:
        service.metrics.requests.labels(route_, str(status)).inc()
        service.metrics.request.labels(route_).observe(seconds)
        if code is not None:
            service.metrics.errors.labels(route_, code).inc()

    def protected(path: str) -> bool:
        return path.startswith("/v1/") or path == "/metrics"

    app.add_middleware(FrontDoor, door=Door(config.token, config.max_body, protected, route, record))
    return app


def _route(scope: dict) -> str:
    return getattr(scope.get("route"), "path", "unmatched")


def _load_quietly(service: Service) -> None:
    try:
        service.load()
    except Exception:  # recorded in service.load_error, reported by /readyz
        pass


def _describe(set_id: str, s) -> dict:
    f = s.fingerprint
    return {
        "id": set_id,
        "shots": s.shots,
        "image_sizes": s.image_sizes.tolist(),
        "mask_areas": s.mask_areas.tolist(),
        "model": f.model,
        "weights": f.weights,
        "image_size": f.image_size,
        "memory_dtype": f.memory_dtype,
    }
