"""Bounded load test of `fssam2 serve`: the one-process service and Ray Serve, loopback only.

    python -m bench.load_test --artifacts ART [--requests 48] [--concurrency 1 4 16] [--time-limit 300]
                              [--targets process ray] [--replicas 2] [--retries N] [--kill-replica-after N]
                              [--out load.json]

Each target is started here on 127.0.0.1 (the one-process service as a `fssam2 serve` subprocess, killed by
PID at the end; Ray Serve on a local Ray cluster, shut down at the end), gets two support sets through
POST /v1/support-sets, then, per concurrency level, `--requests` segment requests (one set, the other, both
as N-way) from that many client threads. Every answer is checked against the same query segmented in this
process with the same sets: a request is `lost` (no answer at all), `failed` (answered, but not 200: an error
the client can read) or `wrong` (a mask that differs). With `--retries N` a request that got no answer or a
5xx is sent again (after `Retry-After`, at most 2 s) up to N times; `retried` counts those answered 200 in the
end. `--kill-replica-after N` (Ray Serve) kills one replica as each level's N-th request ends, as a crash would.
Requests not started before `--time-limit` (per level) are counted as `unsent`. Prints throughput and
p50 / p99 latency per target and level; no timing asserts.
"""

from __future__ import annotations

import argparse
import io
import itertools
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image


@dataclass(frozen=True)
class Case:
    query: bytes  # PNG
    sets: tuple[str, ...]  # set fields of the request
    expected: np.ndarray  # what the PNG answer must decode to: 0/255 mask (one set) or label map


@dataclass
class LevelResult:
    target: str
    concurrency: int
    sent: int
    answered: int  # with a 200
    lost: int  # no answer
    failed: int  # an answer other than 200 (after any retries)
    retried: int  # answered 200 after at least one retry
    wrong: int
    unsent: int
    seconds: float
    throughput: float  # answered requests per second
    p50_ms: float
    p99_ms: float


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def synthetic_images(seed: int = 0) -> tuple[list[tuple[bytes, bytes]], list[tuple[bytes, bytes]], list[bytes]]:
    """Two support pairs per set (an ellipse of one colour on noise) and four queries of different sizes."""
    rng = np.random.default_rng(seed)

    def scene(h: int, w: int, colour, box) -> tuple[np.ndarray, np.ndarray]:
        img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        yy, xx = np.mgrid[:h, :w]
        y0, x0, ry, rx = box
        mask = ((yy - y0) / ry) ** 2 + ((xx - x0) / rx) ** 2 <= 1
        img[mask] = colour
        return img, mask.astype(np.uint8) * 255

    red, blue = (220, 40, 40), (40, 60, 220)
    set_a = [tuple(map(_png, scene(96, 128, red, (40 + 8 * i, 60, 25, 35)))) for i in range(2)]
    set_b = [tuple(map(_png, scene(112, 96, blue, (60, 40 + 6 * i, 30, 20)))) for i in range(2)]
    queries = []
    for h, w in [(120, 160), (100, 100), (90, 140), (128, 112)]:
        img, _ = scene(h, w, red, (h // 2, w // 3, h // 4, w // 5))
        img[h // 4 : h // 2, w // 2 : w - 5] = blue
        queries.append(_png(img))
    return set_a, set_b, queries


def decode_answer(body: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(body)) as im:
        return np.asarray(im)


def make_cases(artifacts: str, set_ids: list[str], sets_images, queries: list[bytes]) -> list[Case]:
    """Expected answers computed here, with sets encoded here (whose digests must equal the server's ids)."""
    from runtime import FewShotSegmenter
    from runtime.apps.store import set_digest

    seg = FewShotSegmenter(artifacts)
    local = []
    for pairs, set_id in zip(sets_images, set_ids):
        s = seg.encode_supports([(Image.open(io.BytesIO(i)), Image.open(io.BytesIO(m))) for i, m in pairs])
        if set_digest(s) != set_id:
            raise AssertionError(f"the server's set id {set_id} is not the digest of the same set encoded here")
        local.append(s)
    cases = []
    for q in queries:
        rgb = np.asarray(Image.open(io.BytesIO(q)).convert("RGB"))
        for names in ((0,), (1,), (0, 1)):
            result = seg.segment(rgb, {f"c{n}": local[n] for n in names})
            labels = result.label_map
            expected = labels * np.uint8(255) if len(names) == 1 else labels
            cases.append(Case(q, tuple(f"c{n}={set_ids[n]}" for n in names), expected))
    distinct = {c.expected.tobytes() + bytes(str(c.expected.shape), "ascii") for c in cases}
    if len(distinct) < len(cases) // 2 or not all(0 < (c.expected > 0).mean() < 1 for c in cases):
        raise AssertionError("degenerate expected masks: a wrong answer could pass unnoticed")
    return cases


def create_sets(client, sets_images) -> list[str]:
    ids = []
    for pairs in sets_images:
        files = [("images", (f"s{i}.png", img, "image/png")) for i, (img, _) in enumerate(pairs)]
        files += [("masks", (f"m{i}.png", m, "image/png")) for i, (_, m) in enumerate(pairs)]
        r = client.post("/v1/support-sets", files=files)
        r.raise_for_status()
        ids.append(r.json()["id"])
    return ids


def run_level(
    url: str,
    target: str,
    cases: list[Case],
    concurrency: int,
    count: int,
    time_limit: float,
    token: str | None = None,
    retries: int = 0,
    failures: list | None = None,
    on_answer: Callable[[int], None] | None = None,
) -> LevelResult:
    """`count` requests from `concurrency` threads, cycling through `cases`; each answer checked. `failures`
    collects (status, body) of every attempt not answered 200 (status None: no answer, body the error), retried or
    not; `on_answer(n)` is called as the n-th request ends."""
    import httpx

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    local = threading.local()
    clients: list = []
    deadline = time.perf_counter() + time_limit
    ended = itertools.count(1)

    def one(i: int):
        outcome = send(i)
        if on_answer is not None and outcome[0] != "unsent":
            on_answer(next(ended))
        return outcome

    def send(i: int):
        if time.perf_counter() > deadline:
            return "unsent", 0.0
        if not hasattr(local, "client"):
            local.client = httpx.Client(base_url=url, timeout=max(time_limit, 30), headers=headers)
            clients.append(local.client)
        case = cases[i % len(cases)]
        t0 = time.perf_counter()
        for attempt in range(retries + 1):
            try:
                r = local.client.post(
                    "/v1/segment", files={"query": ("q.png", case.query, "image/png")}, data={"set": list(case.sets)}
                )
            except httpx.HTTPError as e:
                r = None
                if failures is not None:
                    failures.append((None, f"{type(e).__name__}: {e}"[:300]))
            if r is not None and r.status_code != 200 and failures is not None:
                failures.append((r.status_code, r.text[:300]))
            if attempt == retries or (r is not None and r.status_code < 500):
                break
            wait = r.headers.get("retry-after", "") if r is not None else ""
            time.sleep(min(float(wait) if wait.isdigit() else 0.5, 2.0))
        ms = (time.perf_counter() - t0) * 1e3
        if r is None:
            return "lost", ms
        if r.status_code != 200:
            return "failed", ms
        got = decode_answer(r.content)
        ok = got.shape == case.expected.shape and np.array_equal(got, case.expected)
        return ("ok" if ok else "wrong") + ("+retried" if attempt else ""), ms

    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        outcomes = list(pool.map(one, range(count)))
    seconds = time.perf_counter() - t0
    for c in clients:
        c.close()
    retried = sum(k.endswith("+retried") for k, _ in outcomes)
    kinds = [k.removesuffix("+retried") for k, _ in outcomes]
    ms = [m for (_, m), k in zip(outcomes, kinds) if k in ("ok", "wrong")]
    p50, p99 = np.percentile(ms, [50, 99]) if ms else (float("nan"), float("nan"))
    answered = kinds.count("ok") + kinds.count("wrong")
    return LevelResult(
        target,
        concurrency,
        count - kinds.count("unsent"),
        answered,
        kinds.count("lost"),
        kinds.count("failed"),
        retried,
        kinds.count("wrong"),
        kinds.count("unsent"),
        round(seconds, 3),
        round(answered / seconds, 3),
        round(float(p50), 1),
        round(float(p99), 1),
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, timeout: float, proc: subprocess.Popen | None = None) -> None:
    import httpx

    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode}")
        try:
            if httpx.get(f"{url}/readyz", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    raise TimeoutError(f"{url} not ready after {timeout:.0f} s")


def start_process(artifacts: str, store: str, port: int, extra: list[str]) -> subprocess.Popen:
    """`fssam2 serve` in a subprocess on 127.0.0.1:port (stop it with `proc.kill()`)."""
    cmd = [
        sys.executable,
        "-m",
        "runtime.cli",
        "serve",
        "--artifacts",
        artifacts,
        "--store",
        store,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        *extra,
    ]
    return subprocess.Popen(cmd, cwd=Path(__file__).resolve().parents[1], stdout=subprocess.DEVNULL)


def kill_replica(app: str) -> str:
    """Kill one replica (actor) of the Ray Serve application `app` as a crash would; Serve starts another.
    Returns the actor's name."""
    import ray

    replicas = [
        a for a in ray.util.list_named_actors(all_namespaces=True) if a["name"].startswith(f"SERVE_REPLICA::{app}#")
    ]
    if not replicas:
        raise RuntimeError(f"no replica of the Serve application {app!r} to kill")
    victim = replicas[0]
    ray.kill(ray.get_actor(victim["name"], namespace=victim["namespace"]))
    return victim["name"]


def wait_replicas(app: str, timeout: float) -> None:
    """Until every replica of the Ray Serve application `app` (deployment of the same name) is running."""
    from ray import serve

    end = time.monotonic() + timeout
    while time.monotonic() < end:
        states = serve.status().applications[app].deployments[app].replica_states
        if set(states) == {"RUNNING"}:
            return
        time.sleep(0.25)
    raise TimeoutError(f"replicas of {app!r} not all running after {timeout} s: {states}")


def run_target(
    target: str,
    url: str,
    artifacts: str,
    levels: list[int],
    count: int,
    time_limit: float,
    retries: int = 0,
    kill_after: int | None = None,
) -> list[LevelResult]:
    """Sets created, expected answers computed, a warm-up, then one `run_level` per level; with `kill_after`, a
    Ray Serve replica of the application `fssam2` is killed as the level's `kill_after`-th request ends."""
    import httpx

    set_a, set_b, queries = synthetic_images()
    with httpx.Client(base_url=url, timeout=120) as client:
        ids = create_sets(client, [set_a, set_b])
    cases = make_cases(artifacts, ids, [set_a, set_b], queries)
    run_level(url, target, cases, 1, 2, time_limit)  # warm-up
    results = []
    for i, c in enumerate(levels):
        if kill_after is not None and i:
            wait_replicas("fssam2", 300)  # the replica killed at the level before is back

        def kill(n: int) -> None:
            if n == kill_after:
                print(f"killed {kill_replica('fssam2')} as request {n} of {count} ended", file=sys.stderr)

        failures: list = []
        results.append(
            run_level(url, target, cases, c, count, time_limit, retries=retries, failures=failures, on_answer=kill)
        )
        for status, body in {status: body for status, body in failures}.items():
            n = sum(s == status for s, _ in failures)
            print(f"{target} at {c}: {n} attempt(s) answered {status or 'nothing'}, e.g. {body!r}", file=sys.stderr)
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--artifacts", required=True)
    p.add_argument("--requests", type=int, default=48, help="requests per concurrency level")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    p.add_argument("--time-limit", type=float, default=300, help="seconds per level; later requests are not sent")
    p.add_argument("--targets", nargs="+", choices=("process", "ray"), default=["process", "ray"])
    p.add_argument("--replicas", type=int, default=2, help="Ray Serve replicas")
    p.add_argument("--threads", type=int, default=1, help="ONNX Runtime threads per process / replica")
    p.add_argument("--server-concurrency", type=int, default=2, help="segmenter calls at once per process / replica")
    p.add_argument("--retries", type=int, default=0, help="resend a request that got no answer or a 5xx")
    p.add_argument(
        "--kill-replica-after", type=int, metavar="N", help="ray: kill a replica as each level's N-th request ends"
    )
    p.add_argument("--store", help="support-set store (default: a temporary directory)")
    p.add_argument("--out", help="write the results as JSON")
    args = p.parse_args(argv)
    import tempfile

    artifacts = os.path.abspath(args.artifacts)
    results: list[LevelResult] = []
    with tempfile.TemporaryDirectory(prefix="fssam2-load-") as tmp:
        store = args.store or tmp
        if "process" in args.targets:
            port = free_port()
            proc = start_process(
                artifacts, store, port, ["--threads", str(args.threads), "--concurrency", str(args.server_concurrency)]
            )
            try:
                url = f"http://127.0.0.1:{port}"
                wait_ready(url, 300, proc)
                results += run_target(
                    "process", url, artifacts, args.concurrency, args.requests, args.time_limit, args.retries
                )
            finally:
                proc.kill()
                proc.wait()
        if "ray" in args.targets:
            import ray
            from ray import serve

            from runtime import RuntimeOptions
            from runtime.apps.admission import Limits
            from runtime.apps.serve import ServeConfig
            from runtime.apps.serve_ray import RayServeOptions, start

            ray.init(
                address="local",
                num_cpus=max(2, args.replicas),
                include_dashboard=False,
                log_to_driver=False,
                _node_ip_address="127.0.0.1",
            )
            try:
                port = free_port()
                config = ServeConfig(
                    artifacts,
                    os.path.abspath(store),
                    RuntimeOptions(threads=args.threads),
                    admission=Limits(concurrency=args.server_concurrency),
                )
                start(config, RayServeOptions(port=port, replicas=args.replicas))
                url = f"http://127.0.0.1:{port}"
                wait_ready(url, 300)
                results += run_target(
                    f"ray-serve x{args.replicas}",
                    url,
                    artifacts,
                    args.concurrency,
                    args.requests,
                    args.time_limit,
                    args.retries,
                    args.kill_replica_after,
                )
            finally:
                serve.shutdown()  # the cluster this command started, and nothing else
                ray.shutdown()
    print(format_table(results))
    if args.out:
        Path(args.out).write_text(json.dumps([asdict(r) for r in results], indent=2) + "\n")
    return 1 if any(r.lost or r.failed or r.wrong for r in results) else 0


def format_table(results: list[LevelResult]) -> str:
    head = f"{'target':<14} {'conc':>4} {'sent':>5} {'ok':>5} {'lost':>4} {'failed':>6} {'retried':>7} {'wrong':>5} {'unsent':>6} {'req/s':>7} {'p50 ms':>8} {'p99 ms':>8}"
    rows = [
        f"{r.target:<14} {r.concurrency:>4} {r.sent:>5} {r.answered - r.wrong:>5} {r.lost:>4} {r.failed:>6} {r.retried:>7} {r.wrong:>5} "
        f"{r.unsent:>6} {r.throughput:>7.2f} {r.p50_ms:>8.0f} {r.p99_ms:>8.0f}"
        for r in results
    ]
    return "\n".join([head, *rows])


if __name__ == "__main__":
    sys.exit(main())
