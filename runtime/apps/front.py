"""The service's front door: an ASGI middleware around the whole FastAPI app (`fssam2 serve`).

Per HTTP request, before anything reads the body: a request id (the client's `X-Request-ID` if it is a plain
token of up to 64 characters, else a new one; sent back on every answer); the bearer token on protected paths
(401 without reading the body: FastAPI resolves dependencies only after parsing it); the whole body against
`max_body` bytes (413 on a larger `Content-Length` at once, or as soon as a chunked body passes it). Afterwards:
an exception nothing handled becomes a 500 JSON answer, and every answer is counted in the metrics and written
as one JSON access-log line (logger `fssam2.access`).
"""

from __future__ import annotations

import hmac
import json
import logging
import re
import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from starlette.exceptions import HTTPException
from starlette.routing import get_route_path

ACCESS_LOG = logging.getLogger("fssam2.access")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


class BodyTooLarge(HTTPException):
    """The body passed `max_body` while being received (an HTTPException: FastAPI passes those on unchanged)."""

    def __init__(self, limit: int):
        super().__init__(413, f"request body more than the limit of {limit} bytes")


@dataclass(frozen=True)
class Door:
    token: str | None  # bearer token for `protected` paths; None: open
    max_body: int  # bytes per request body
    protected: Callable[[str], bool]  # path -> needs the token
    route: Callable[[dict], str]  # scope -> the route's template (a metrics label), "unmatched" if none
    record: Callable[[str, int, float, str | None], None]  # route, status, seconds, error code if this door answered


class FrontDoor:
    """ASGI middleware: `FrontDoor(app, door)`."""

    def __init__(self, app, door: Door):
        self.app, self.door = app, door

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0 = time.perf_counter()
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        given = headers.get("x-request-id", "")
        request_id = given if _REQUEST_ID.match(given) else uuid.uuid4().hex
        status, code, started = 500, None, False

        async def send_with_id(message):
            nonlocal status, started
            if message["type"] == "http.response.start":
                status, started = message["status"], True
                message = {**message, "headers": [*message.get("headers", []), (b"x-request-id", request_id.encode())]}
            await send(message)

        async def answer(status_: int, code_: str, message: str, extra: dict | None = None):
            nonlocal code
            code = code_
            body = json.dumps({"error": {"code": code_, "message": message}}).encode()
            await send_with_id(
                {
                    "type": "http.response.start",
                    "status": status_,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"content-length", str(len(body)).encode()),
                        (b"connection", b"close"),  # the unread body is not waited for
                        *((k.encode(), v.encode()) for k, v in (extra or {}).items()),
                    ],
                }
            )
            await send_with_id({"type": "http.response.body", "body": body})

        door, path = self.door, get_route_path(scope)  # without a mount's or Ray Serve's route prefix
        try:
            length = headers.get("content-length", "")
            if door.token is not None and door.protected(path) and not _authorized(door.token, headers):
                await answer(
                    401,
                    "unauthorized",
                    "missing or wrong bearer token (Authorization: Bearer <token>)",
                    {"www-authenticate": "Bearer"},
                )
            elif length.isdigit() and int(length) > door.max_body:
                await answer(
                    413, "too_large", f"request body of {length} bytes, more than the limit of {door.max_body}"
                )
            else:
                await self.app(scope, _counting(receive, door.max_body), send_with_id)
        except BodyTooLarge as e:
            if not started:
                await answer(413, "too_large", e.detail)
        except Exception as e:
            trace = traceback.format_exc()
            ACCESS_LOG.error(
                json.dumps({"request_id": request_id, "error": f"{type(e).__name__}: {e}", "traceback": trace})
            )
            if not started:
                await answer(500, "internal", f"{type(e).__name__}: {e}")
        finally:
            seconds = time.perf_counter() - t0
            route = door.route(scope)
            door.record(route, status, seconds, code)
            ACCESS_LOG.info(
                json.dumps(
                    {
                        "request_id": request_id,
                        "method": scope["method"],
                        "path": path,
                        "route": route,
                        "status": status,
                        "ms": round(seconds * 1e3, 1),
                        "client": (scope.get("client") or ("", 0))[0],
                    }
                )
            )


def _authorized(token: str, headers: dict[str, str]) -> bool:
    scheme, _, given = headers.get("authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.encode(), token.encode())


def _counting(receive, limit: int):
    """`receive`, raising `BodyTooLarge` once the body's bytes pass `limit` (a chunked body has no length)."""
    seen = 0

    async def wrapped():
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise BodyTooLarge(limit)
        return message

    return wrapped
