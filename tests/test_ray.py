"""Scaling out on a local Ray cluster (127.0.0.1, 2 CPUs, one cluster for the module): the label job on
Ray Data and the service on Ray Serve (2 replicas) give the same results as the one-machine paths; faults:
a replica killed under load, a SIGKILLed `--ray` label driver resumed; `--ray` as ray.init(), paths, prefixes."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import require
from image_fakes import bomb_png, png, truncated
from PIL import Image

ray = require("ray", "scaling out needs Ray (pip install 'fssam2[ray]')", "FSSAM2_REQUIRE_SERVING")
require("fastapi", "the service needs FastAPI (pip install 'fssam2[serve]')", "FSSAM2_REQUIRE_SERVING")
from ray import serve  # noqa: E402

from bench import load_test  # noqa: E402
from runtime import RuntimeOptions  # noqa: E402
from runtime.apps.label import Labeler, LabelJob, collect_inputs, run_local  # noqa: E402
from runtime.apps.label_ray import RayOptions, actor_resources, run_ray  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cluster():
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1")
    try:
        yield
    finally:
        serve.shutdown()
        ray.shutdown()


@pytest.fixture(scope="module")
def serve_port(cluster):
    """Serve's proxy on a free port for the module (a running Serve keeps its first options), as
    `serve_ray.start` starts it with the default limits."""
    from runtime.apps.admission import Limits

    port, limits = load_test.free_port(), Limits()
    timeout = limits.queue_timeout + limits.timeout
    serve.start(http_options={"host": "127.0.0.1", "port": port, "request_timeout_s": timeout})
    return port


@pytest.fixture(scope="module")
def sets(seg_128, episode):
    return {"cat": seg_128.encode_supports(episode.supports[:2]), "dog": seg_128.encode_supports(episode.supports[2:4])}


@pytest.fixture(scope="module")
def photos(episode, tmp_path_factory):
    root = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(1)
    for i, (p, _) in enumerate(episode.supports[:3]):
        shutil.copy(p, root / f"s{i}.png")
    shutil.copy(episode.query, root / "query.png")
    Image.fromarray(rng.integers(0, 256, (70, 110, 3), dtype=np.uint8)).save(root / "noise.jpg")
    (root / "broken.png").write_bytes(truncated(png(np.asarray(Image.open(episode.query)))))
    (root / "bomb.png").write_bytes(bomb_png(30000, 30000))
    return root


def _table(out: Path) -> dict[str, dict]:
    return {
        r["key"]: {k: v for k, v in r.items() if k != "ms"}
        for r in map(json.loads, (out / "results.jsonl").read_text().splitlines())
    }


def _masks(out: Path) -> dict[str, np.ndarray]:
    return {p.relative_to(out).as_posix(): np.asarray(Image.open(p)) for p in sorted(out.glob("masks/*.png"))}


def test_ray_data_label_job_equals_one_machine_and_resumes(cluster, seg_128, sets, photos, tmp_path):
    items = collect_inputs(str(photos))
    local_job, ray_job = LabelJob(tmp_path / "local", tuple(sets)), LabelJob(tmp_path / "ray", tuple(sets))
    local = run_local(Labeler(seg_128, sets, local_job), items, progress=False)
    options = RayOptions(workers=2, threads_per_worker=1)
    remote = run_ray(seg_128.artifacts_dir, sets, ray_job, items, options, progress=False)
    assert (local.done, local.failed, remote.done, remote.failed) == (5, 2, 5, 2)
    assert _table(local_job.out) == _table(ray_job.out)
    a, b = _masks(local_job.out), _masks(ray_job.out)
    assert sorted(a) == sorted(b) and len(a) == 5
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])
    assert {v for m in a.values() for v in np.unique(m).tolist()} == {0, 1, 2}  # not degenerate
    errors = {k: r["error"] for k, r in _table(ray_job.out).items() if r["status"] == "failed"}
    assert "cannot decode" in errors["broken.png"] and "pixels" in errors["bomb.png"]

    # a Ray job cut short: the last two records never journaled, one journaled mask lost
    journal = ray_job.out / "results.jsonl"
    lines = journal.read_text().splitlines()
    ok = [json.loads(line) for line in lines[:-2] if json.loads(line)["status"] == "ok"]
    journal.write_text("\n".join(lines[:-2]) + "\n")
    (ray_job.out / ok[0]["mask"]).unlink()
    kept = {r["key"]: (ray_job.out / r["mask"]).stat().st_mtime_ns for r in ok[1:]}
    again = run_ray(seg_128.artifacts_dir, sets, ray_job, items, options, progress=False)
    assert again.skipped == len(kept) and again.done + again.failed + again.skipped == len(items)
    assert all((ray_job.out / "masks" / Path(k).with_suffix(".png")).stat().st_mtime_ns == t for k, t in kept.items())
    assert _table(ray_job.out) == _table(local_job.out)
    for name, m in _masks(ray_job.out).items():
        np.testing.assert_array_equal(m, a[name])


def test_ray_label_joins_as_ray_init_does_and_resolves_paths(cluster, seg_128, sets, photos, tmp_path, monkeypatch):
    """`--ray` alone calls ray.init() with no address (join or start), quietly; relative --artifacts, --out and
    --cache-dir reach the actors resolved (they do not share the driver's working directory)."""
    calls = []
    monkeypatch.setattr(ray, "is_initialized", lambda: bool(calls))
    monkeypatch.setattr(ray, "init", lambda **kw: calls.append(kw))
    monkeypatch.setattr(ray, "shutdown", lambda: calls.append("shutdown"))
    monkeypatch.chdir(tmp_path)
    from runtime.cli import parser

    args = parser().parse_args(["label", "--artifacts", "a", "--class", "c=s", "--images", "i", "--out", "o", "--ray"])
    assert args.ray == "" and RayOptions().address is None
    items = collect_inputs(os.path.relpath(photos, tmp_path))
    artifacts = os.path.relpath(seg_128.artifacts_dir, tmp_path)
    options = RayOptions(workers=1, options=RuntimeOptions(threads=1, cache_dir="cache"))
    summary = run_ray(artifacts, sets, LabelJob(Path("out"), tuple(sets)), items, options, progress=False)
    assert (summary.done, summary.failed) == (5, 2)
    assert calls[0]["address"] is None and calls[0]["log_to_driver"] is False and calls[-1] == "shutdown"
    assert (tmp_path / "out" / "masks" / "query.png").exists() and any((tmp_path / "cache").iterdir())


def test_killed_ray_label_driver_resumes_to_the_same_masks(cluster, seg_128, sets, episode, tmp_path):
    """`fssam2 label --ray local` SIGKILLed mid-run (its process group: driver and the cluster it started), then
    the same job resumed on Ray: the masks and table equal an uninterrupted one-machine run; Ray's INFO lines
    stay out of the command's output."""
    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(3)
    for i in range(12):
        Image.fromarray(rng.integers(0, 256, (60 + 4 * i, 90, 3), dtype=np.uint8)).save(photos / f"n{i:02d}.png")
    for i, (p, _) in enumerate(episode.supports[:3]):
        shutil.copy(p, photos / f"s{i}.png")
    set_files = {n: s.save(tmp_path / f"{n}.fssam2") for n, s in sets.items()}
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "runtime.cli", "label", "--ray", "local", "--workers", "1", "--quiet"]
    cmd += ["--artifacts", str(seg_128.artifacts_dir), "--images", str(photos), "--out", str(out)]
    cmd += [a for n, f in set_files.items() for a in ("--class", f"{n}={f}")]
    log = tmp_path / "driver.log"
    with open(log, "wb") as sink:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=sink, stderr=sink, start_new_session=True)
    journal = out / "results.jsonl"
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None:
            if journal.exists() and journal.read_text().count("\n") >= 2:
                break
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -9, log.read_text()[-2000:]
    kept = len(journal.read_text().splitlines())
    assert 2 <= kept < 15, "the job was not killed mid-run"
    assert not re.search(r"\bINFO\b", log.read_text()), log.read_text()[-2000:]

    items = collect_inputs(str(photos))
    again = run_ray(seg_128.artifacts_dir, sets, LabelJob(out, tuple(sets)), items, RayOptions(), progress=False)
    assert again.skipped == kept and again.done + again.skipped == 15 and again.failed == 0
    reference = LabelJob(tmp_path / "reference", tuple(sets))
    run_local(Labeler(seg_128, sets, reference), items, progress=False)
    drop = ("ms", "fingerprint")
    assert {k: {f: v for f, v in r.items() if f not in drop} for k, r in _table(out).items()} == {
        k: {f: v for f, v in r.items() if f not in drop} for k, r in _table(reference.out).items()
    }
    a, b = _masks(out), _masks(reference.out)
    assert sorted(a) == sorted(b) and len(a) == 15
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def test_ray_serve_two_replicas_equal_one_process_and_survive_a_killed_replica(
    cluster, serve_port, artifacts_128, tmp_path, record_metric
):
    """Two replicas answer as the one-process service does; a replica killed during a bounded load costs no
    request that the client retries (Serve restarts it): the figures lost / failed / retried are recorded."""
    import httpx
    from fastapi.testclient import TestClient

    from runtime.apps.serve import ServeConfig, Service, create_app
    from runtime.apps.serve_ray import RayServeOptions, start

    config = ServeConfig(str(artifacts_128), str(tmp_path / "store"), RuntimeOptions(threads=1))
    start(config, RayServeOptions(port=serve_port, replicas=2))
    url = f"http://127.0.0.1:{serve_port}"
    load_test.wait_ready(url, 180)
    set_a, set_b, queries = load_test.synthetic_images()
    with httpx.Client(base_url=url, timeout=60) as c:
        ids = load_test.create_sets(c, [set_a, set_b])
        assert c.get(f"/v1/support-sets/{ids[0]}").json()["shots"] == 2
        fields = {"set": [f"a={ids[0]}", f"b={ids[1]}"], "format": "json"}
        remote = c.post("/v1/segment", files={"query": queries[0]}, data=fields)
        bad = c.post("/v1/segment", files={"query": b"nope"}, data={"set": [ids[0]]})
        assert c.get("/docs").status_code == 200
    local_service = Service(config)  # the one-process service over the same store
    local_service.load()
    with TestClient(create_app(local_service, load_on_startup=False)) as c:
        local = c.post("/v1/segment", files={"query": queries[0]}, data=fields)
    assert remote.status_code == local.status_code == 200 and remote.json() == local.json()
    assert bad.status_code == 422 and bad.json()["error"]["code"] == "invalid_input"
    cases = load_test.make_cases(str(artifacts_128), ids, [set_a, set_b], queries[:2])
    result = load_test.run_level(url, "ray", cases, 4, 12, 120)
    assert (result.sent, result.answered, result.lost, result.failed, result.wrong) == (12, 12, 0, 0, 0)

    # a replica killed (as a crash would) when the 6th of 24 requests ends, 4 in flight: each request ends
    # within the client's timeout with an answer; retried (at most 3 times) if it got a 5xx or none at all
    failures, killed = [], []

    def kill(n: int) -> None:
        if n == 6:
            killed.append(load_test.kill_replica("fssam2"))

    r = load_test.run_level(url, "ray", cases, 4, 24, 120, retries=3, failures=failures, on_answer=kill)
    for name in ("lost", "failed", "retried"):
        record_metric(f"ray serve replica killed: requests {name} of 24", getattr(r, name))
    record_metric("ray serve replica killed: attempts not answered 200", len(failures))
    assert len(killed) == 1
    assert (r.sent, r.lost, r.failed, r.wrong) == (24, 0, 0, 0), (r, failures)
    assert all(status is None or status >= 500 for status, _ in failures), failures  # a crash, not a refusal
    load_test.wait_replicas("fssam2", 180)  # Serve replaced it
    serve.delete("fssam2")


def test_ray_serve_under_a_prefix_deletes_only_its_app(cluster, serve_port, artifacts_128, tmp_path, monkeypatch):
    """`--route-prefix` puts the API (token checked there too) under a prefix beside another Serve app; on exit
    the command deletes its own application only, never the other (no serve.shutdown())."""
    import httpx

    from runtime.apps import serve_ray
    from runtime.apps.serve import ServeConfig

    @serve.deployment(ray_actor_options={"num_cpus": 0})
    class Other:
        def __call__(self, request) -> str:
            return "other"

    serve.run(Other.bind(), name="other", route_prefix="/other")
    url, seen = f"http://127.0.0.1:{serve_port}", {}

    def wait():
        for what, path, headers in (
            ("ready", "/seg/readyz", {}),
            ("no token", "/seg/v1/support-sets", {}),
            ("token", "/seg/v1/support-sets", {"Authorization": "Bearer tok"}),
        ):
            seen[what] = httpx.get(url + path, headers=headers, timeout=30).status_code

    monkeypatch.setattr(serve_ray, "_wait", wait)
    config = ServeConfig(str(artifacts_128), str(tmp_path / "store"), RuntimeOptions(threads=1), token="tok")
    options = serve_ray.RayServeOptions(port=serve_port, name="seg", route_prefix="/seg")
    assert serve_ray.run_ray_serve(config, options) == 0
    assert seen == {"ready": 200, "no token": 401, "token": 200}
    assert "seg" not in serve.status().applications and httpx.get(f"{url}/other", timeout=30).text == "other"
    serve.delete("other")


def test_resource_options_reach_ray():
    """GPUs per worker / replica and autoscaling as Ray is given them (GPU runs: written, not run on a GPU)."""
    from runtime.apps.admission import Limits
    from runtime.apps.serve import ServeConfig
    from runtime.apps.serve_ray import RayServeOptions, Replica, deployment_options

    assert actor_resources(RayOptions(threads_per_worker=4, gpus_per_worker=1)) == {"num_cpus": 4, "num_gpus": 1}
    assert actor_resources(RayOptions()) == {"num_cpus": 1}
    config = ServeConfig("art", "store", admission=Limits(concurrency=3, max_queue=5))
    fixed = deployment_options(config, RayServeOptions(replicas=4, gpus_per_replica=0.5))
    assert fixed["num_replicas"] == 4 and fixed["ray_actor_options"] == {"num_cpus": 1.0, "num_gpus": 0.5}
    assert (fixed["max_ongoing_requests"], fixed["max_queued_requests"]) == (8, 5)  # Serve's 503 past the queue
    assert fixed["backpressure_config"] == {"retry_after_s": 1}  # that 503 with Retry-After: 1
    auto = deployment_options(config, RayServeOptions(min_replicas=2, max_replicas=8))
    assert "num_replicas" not in auto and auto["autoscaling_config"] == {
        "min_replicas": 2,
        "max_replicas": 8,
        "target_ongoing_requests": 3,
    }
    serve.deployment(Replica, **auto)  # Serve accepts them
