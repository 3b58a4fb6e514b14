"""`fssam2 serve`: the API's answers equal direct segmentation, sets persist by content hash, every user
mistake is a 4xx JSON error naming the problem, auth, metrics, and a real server on 127.0.0.1 under a
small bounded load (every answer checked)."""

import io
import json
import time

import numpy as np
import pytest
from conftest import require
from image_fakes import bomb_png, png, truncated
from PIL import Image

require("fastapi", "the service needs FastAPI (pip install 'fssam2[serve]')", "FSSAM2_REQUIRE_SERVING")
from fastapi.testclient import TestClient  # noqa: E402

from bench import load_test  # noqa: E402
from runtime import SupportSet  # noqa: E402
from runtime.apps.guard import ImageLimits  # noqa: E402
from runtime.apps.render import rle_decode  # noqa: E402
from runtime.apps.serve import ServeConfig, Service, create_app  # noqa: E402
from runtime.apps.store import set_digest  # noqa: E402

LIMITS = ImageLimits(max_bytes=400_000, max_pixels=200_000)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return tmp_path_factory.mktemp("store")


@pytest.fixture(scope="module")
def service(artifacts_128, store):
    s = Service(ServeConfig(str(artifacts_128), str(store), limits=LIMITS, max_classes=3))
    s.load()
    return s


@pytest.fixture(scope="module")
def client(service):
    with TestClient(create_app(service, load_on_startup=False)) as c:
        yield c


def _set_files(pairs):
    return [("images", (f"i{n}.png", open(i, "rb").read(), "image/png")) for n, (i, _) in enumerate(pairs)] + [
        ("masks", (f"m{n}.png", open(m, "rb").read(), "image/png")) for n, (_, m) in enumerate(pairs)
    ]


@pytest.fixture(scope="module")
def set_ids(client, episode):
    ids = {}
    for name, pairs in (("cat", episode.supports[:2]), ("dog", episode.supports[2:4])):
        r = client.post("/v1/support-sets", files=_set_files(pairs))
        assert r.status_code == 201, r.text
        ids[name] = r.json()["id"]
    return ids


def test_sets_are_content_addressed_and_persist(client, set_ids, seg_128, episode, artifacts_128, store):
    assert set_ids["cat"] == set_digest(seg_128.encode_supports(episode.supports[:2]))
    again = client.post("/v1/support-sets", files=_set_files(episode.supports[:2]))
    assert again.json()["id"] == set_ids["cat"]
    info = client.get(f"/v1/support-sets/{set_ids['dog']}").json()
    assert info["shots"] == 2 and info["weights"] == "random-init:seed=0" and info["image_size"] == 128
    assert sorted(client.get("/v1/support-sets").json()["ids"]) == sorted(set_ids.values())
    assert (store / f"{set_ids['cat']}.fssam2").stat().st_mode & 0o777 == 0o644  # readable by other processes
    restarted = Service(ServeConfig(str(artifacts_128), str(store)))  # a new process over the same store
    assert restarted.store.get(set_ids["cat"]).shots == 2
    extra = client.post("/v1/support-sets", files=_set_files(episode.supports[4:5])).json()["id"]
    assert client.get(f"/v1/support-sets/{extra}").status_code == 200  # now cached in this process
    (store / f"{extra}.fssam2").unlink()  # deleted by another process sharing the store
    assert client.get(f"/v1/support-sets/{extra}").status_code == 404
    assert client.post("/v1/support-sets", files=_set_files(episode.supports[4:5])).json()["id"] == extra
    assert client.delete(f"/v1/support-sets/{extra}").status_code == 204
    assert client.get(f"/v1/support-sets/{extra}").status_code == 404
    assert client.delete(f"/v1/support-sets/{extra}").status_code == 404


def test_segment_answers_equal_direct_segmentation(client, set_ids, seg_128, episode, store):
    cats, dogs = (SupportSet.load(store / f"{set_ids[n]}.fssam2") for n in ("cat", "dog"))
    query = open(episode.query, "rb").read()
    expected = seg_128.segment(episode.query, cats)
    r = client.post("/v1/segment", files={"query": query}, data={"set": [set_ids["cat"]]})
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    mask = np.asarray(Image.open(io.BytesIO(r.content)))
    np.testing.assert_array_equal(mask, expected.mask.astype(np.uint8) * 255)
    assert 0 < expected.mask.mean() < 1
    [c] = json.loads(r.headers["x-fssam2-classes"])
    assert c["score"] == pytest.approx(expected.score) and c["area"] == int(expected.mask.sum())

    both = seg_128.segment(episode.query, {"cat": cats, "dog": dogs})
    fields = [f"cat={set_ids['cat']}", f"dog={set_ids['dog']}"]
    r = client.post("/v1/segment", files={"query": query}, data={"set": fields})
    labels = np.asarray(Image.open(io.BytesIO(r.content)))
    np.testing.assert_array_equal(labels, both.label_map)
    assert set(np.unique(labels)) == {0, 1, 2}
    r = client.post("/v1/segment", files={"query": query}, data={"set": fields, "format": "json"})
    body = r.json()
    assert (body["height"], body["width"]) == both.label_map.shape
    for c in body["classes"]:
        np.testing.assert_array_equal(rle_decode(c["mask"]), both.label_map == c["label"])
        assert c["object_score"] == pytest.approx(both[c["name"]].object_score)
    assert [c["name"] for c in body["classes"]] == ["cat", "dog"]


def test_user_mistakes_get_4xx_json_errors(client, set_ids, episode, store, seg_128):
    query = open(episode.query, "rb").read()
    image, mask = (open(p, "rb").read() for p in episode.supports[0])
    other = seg_128.encode_supports(episode.supports[:1])
    from dataclasses import replace

    foreign = replace(other, fingerprint=replace(other.fingerprint, weights="sha256:ab12"))
    foreign_id = set_digest(foreign)
    foreign.save(store / f"{foreign_id}.fssam2")  # a set made by other weights, in the shared store
    noise = png(np.random.default_rng(0).integers(0, 256, (500, 500, 3), dtype=np.uint8))
    cat = set_ids["cat"]
    seg_cases = [
        (dict(files={"query": b"not an image"}, data={"set": [cat]}), 422, "invalid_input", "query: not an image"),
        (dict(files={"query": truncated(query)}, data={"set": [cat]}), 422, "invalid_input", "cannot decode"),
        (dict(files={"query": bomb_png(40000, 40000)}, data={"set": [cat]}), 413, "too_large", "pixels"),
        (
            dict(files={"query": png(np.zeros((480, 480, 3), np.uint8))}, data={"set": [cat]}),
            413,
            "too_large",
            "230400 pixels, more than the limit of 200000",
        ),
        (dict(files={"query": noise}, data={"set": [cat]}), 413, "too_large", "more than the limit of 400000 bytes"),
        (dict(files={"query": query}, data={"set": ["0" * 64]}), 404, "unknown_set", "unknown support set"),
        (dict(files={"query": query}, data={"set": ["../../etc/passwd"]}), 404, "unknown_set", "64 lowercase hex"),
        (dict(files={"query": query}, data={"set": [foreign_id]}), 409, "set_mismatch", "weights: set sha256:ab12"),
        (
            dict(files={"query": query}, data={"set": [f"c{i}={cat}" for i in range(4)]}),
            422,
            "too_many_classes",
            "4 sets, more than the limit of 3",
        ),
        (dict(files={"query": query}, data={"set": [f"a={cat}", f"a={cat}"]}), 422, "invalid_input", "given twice"),
        (dict(files={"query": query}, data={"set": [cat], "format": "xml"}), 422, "invalid_request", "format"),
        (dict(data={"set": [cat]}), 422, "invalid_request", "query"),
    ]
    for kwargs, status, code, fragment in seg_cases:
        r = client.post("/v1/segment", **kwargs)
        assert (r.status_code, r.json()["error"]["code"]) == (status, code), (fragment, r.text)
        assert fragment in r.json()["error"]["message"], r.text
    small_mask = png(np.full((10, 10), 255, np.uint8))
    empty_mask = png(np.zeros(np.asarray(Image.open(episode.supports[0][1])).shape, np.uint8))
    set_cases = [
        ([("images", image), ("masks", small_mask)], 422, "mask_size_mismatch", "mask 0 is 10x10 (WxH) but image 0 is"),
        ([("images", image), ("images", image), ("masks", mask)], 422, "invalid_input", "2 images and 1 masks"),
        ([("images", image), ("masks", empty_mask)], 422, "invalid_input", "support mask is empty"),
        ([("images", b"GIF89a..."), ("masks", mask)], 422, "invalid_input", "image 0 (upload): not an image"),
        ([("images", image)], 422, "invalid_request", "masks"),
    ]
    for files, status, code, fragment in set_cases:
        r = client.post("/v1/support-sets", files=[(k, ("upload", v)) for k, v in files])
        assert (r.status_code, r.json()["error"]["code"]) == (status, code), (fragment, r.text)
        assert fragment in r.json()["error"]["message"], r.text
    assert client.get("/v1/support-sets/" + "f" * 64).status_code == 404
    metrics = client.get("/metrics").text
    assert 'fssam2_errors_total{code="too_large",route="/v1/segment"} 3.0' in metrics
    assert 'fssam2_requests_total{route="/v1/segment",status="409"} 1.0' in metrics
    assert 'fssam2_module_seconds_count{module="image_encoder"}' in metrics and "fssam2_queue 0.0" in metrics
    assert 'status="500"' not in metrics


def test_token_and_readiness(artifacts_128, store, monkeypatch):
    from runtime.cli import parser
    from runtime.cli.serve import config_from_args

    monkeypatch.setenv("FSSAM2_TOKEN", "s3cret")
    args = parser().parse_args(["serve", "--artifacts", str(artifacts_128), "--store", str(store)])
    assert args.host == "127.0.0.1"
    service = Service(config_from_args(args))  # not loaded: /readyz says so, requests get 503
    with TestClient(create_app(service, load_on_startup=False)) as c:
        assert c.get("/healthz").status_code == 200 and c.get("/readyz").status_code == 503
        assert c.get("/v1/support-sets").status_code == 401
        assert c.get("/metrics").status_code == 401
        assert c.get("/v1/support-sets", headers={"Authorization": "Bearer s3cre"}).status_code == 401
        assert c.get("/v1/support-sets", headers={"Authorization": "Basic s3cret"}).status_code == 401
        ok = {"Authorization": "Bearer s3cret"}
        assert c.get("/v1/support-sets", headers=ok).status_code == 200
        r = c.post("/v1/segment", headers=ok, files={"query": b"x"}, data={"set": ["0" * 64]})
        assert (r.status_code, r.json()["error"]["code"]) == (503, "not_ready")
        assert c.get("/docs").status_code == 200 and "/v1/segment" in c.get("/openapi.json").json()["paths"]
    with TestClient(create_app(service)) as c:  # loads in the background after startup
        deadline = time.monotonic() + 120
        while c.get("/readyz").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert c.get("/readyz").json()["status"] == "ready"


def test_server_process_under_bounded_load(artifacts_128, tmp_path, monkeypatch):
    """`fssam2 serve` as a process on 127.0.0.1 (token from the environment): concurrent requests (more than
    the server's segmenter slots) are all answered, each with its own query's mask; a wrong answer is seen."""
    monkeypatch.setenv("FSSAM2_TOKEN", "tok")
    port = load_test.free_port()
    proc = load_test.start_process(str(artifacts_128), str(tmp_path / "store"), port, ["--threads", "1"])
    try:
        url = f"http://127.0.0.1:{port}"
        load_test.wait_ready(url, 180, proc)
        import httpx

        set_a, set_b, queries = load_test.synthetic_images()
        with httpx.Client(base_url=url, timeout=60, headers={"Authorization": "Bearer tok"}) as c:
            ids = load_test.create_sets(c, [set_a, set_b])
            assert httpx.get(f"{url}/v1/support-sets", timeout=10).status_code == 401
        cases = load_test.make_cases(str(artifacts_128), ids, [set_a, set_b], queries[:2])
        result = load_test.run_level(url, "process", cases, 4, 12, 120, token="tok")
        assert (result.sent, result.answered, result.lost, result.wrong) == (12, 12, 0, 0)
        swapped = [load_test.Case(c.query, c.sets, cases[(i + 1) % len(cases)].expected) for i, c in enumerate(cases)]
        result = load_test.run_level(url, "process", swapped, 2, len(swapped), 120, token="tok")
        assert result.wrong == len(swapped)
    finally:
        proc.kill()
        proc.wait()


def test_errors_reach_metrics_with_request_ids_and_access_logs(artifacts_128, seg_128, set_ids, store, caplog):
    """A failure nothing handles is a 500 JSON answer that the metrics count; every answer carries an X-Request-ID
    (the client's if it sent a plain one) and one JSON access-log line."""
    service = Service(ServeConfig(str(artifacts_128), str(store)))

    class Broken:
        fingerprint = seg_128.fingerprint

        def segment(self, *args):
            raise RuntimeError("the GPU fell off the bus")

    service.seg = Broken()
    query = png(np.zeros((40, 60, 3), np.uint8))
    with TestClient(create_app(service, load_on_startup=False), raise_server_exceptions=False) as c:
        with caplog.at_level("INFO", logger="fssam2.access"):
            r = c.post(
                "/v1/segment", files={"query": query}, data={"set": [set_ids["cat"]]}, headers={"X-Request-ID": "abc-1"}
            )
        assert (r.status_code, r.json()["error"]["code"]) == (500, "internal") and "fell off" in r.text
        assert r.headers["x-request-id"] == "abc-1"
        assert len(c.get("/healthz", headers={"X-Request-ID": "bad id\n"}).headers["x-request-id"]) == 32  # new one
        metrics = c.get("/metrics").text
    assert 'fssam2_requests_total{route="/v1/segment",status="500"} 1.0' in metrics
    assert 'fssam2_errors_total{code="internal",route="/v1/segment"} 1.0' in metrics
    failure, line = (json.loads(r.message) for r in caplog.records if r.name == "fssam2.access")
    assert failure["request_id"] == "abc-1" and "fell off the bus" in failure["traceback"]
    assert (line["request_id"], line["route"], line["status"], line["method"]) == ("abc-1", "/v1/segment", 500, "POST")


def test_body_limit_names_and_store_quota(artifacts_128, seg_128, episode, tmp_path):
    """A body over --max-body is refused (413) as it arrives, with or without Content-Length; class names are
    bounded before they are echoed in a header; the store's quota (507) and expiry (404) apply."""
    import os

    store = tmp_path / "store"
    config = ServeConfig(
        str(artifacts_128), str(store), limits=LIMITS, max_body=300_000, store_max_sets=1, store_ttl=60
    )
    service = Service(config)
    service.seg = seg_128
    with TestClient(create_app(service, load_on_startup=False)) as c:
        r = c.post("/v1/segment", content=b"x" * 300_001, headers={"content-type": "multipart/form-data; boundary=b"})
        assert (r.status_code, r.json()["error"]["code"]) == (413, "too_large") and "300001 bytes" in r.text
        chunks = (b"x" * 100_000 for _ in range(5))  # no Content-Length: chunked
        r = c.post("/v1/segment", content=chunks, headers={"content-type": "multipart/form-data; boundary=b"})
        assert (r.status_code, r.json()["error"]["code"]) == (413, "too_large"), r.text
        first = c.post("/v1/support-sets", files=_set_files(episode.supports[:1]))
        assert first.status_code == 201, first.text
        second = c.post("/v1/support-sets", files=_set_files(episode.supports[1:2]))
        assert (second.status_code, second.json()["error"]["code"]) == (507, "store_full")
        query = open(episode.query, "rb").read()
        r = c.post("/v1/segment", files={"query": query}, data={"set": [f"{'n' * 65}={first.json()['id']}"]})
        assert (r.status_code, r.json()["error"]["code"]) == (422, "invalid_input") and "1 to 64" in r.text
        path = store / f"{first.json()['id']}.fssam2"
        os.utime(path, (path.stat().st_atime - 61, path.stat().st_mtime - 61))  # a set last created 61 s ago
        assert c.get(f"/v1/support-sets/{first.json()['id']}").status_code == 404 and not path.exists()
        assert c.post("/v1/support-sets", files=_set_files(episode.supports[1:2])).status_code == 201


def test_label_map_memory_is_one_map_not_a_stack():
    """N-way results: the label map costs one float32 and one uint8 map of the image, whatever N (it stacked N)."""
    import tracemalloc

    from runtime.engine.results import label_map

    logits = [np.random.default_rng(i).normal(size=(500, 500)).astype(np.float32) for i in range(8)]
    tracemalloc.start()
    try:
        label_map(logits)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 * 500 * 500 * 3, peak  # the stack alone was 8 maps of 1 MB


@pytest.fixture(scope="module")
def limited_server(artifacts_128, tmp_path_factory):
    """`fssam2 serve` as a process on 127.0.0.1 with one segmenter slot, two queue places and a token."""
    port = load_test.free_port()
    extra = ["--threads", "1", "--concurrency", "1", "--max-queue", "2", "--token", "tok"]
    proc = load_test.start_process(str(artifacts_128), str(tmp_path_factory.mktemp("store")), port, extra)
    try:
        url = f"http://127.0.0.1:{port}"
        load_test.wait_ready(url, 180, proc)
        yield url
    finally:
        proc.kill()
        proc.wait()


def test_overload_gets_fast_503s_and_probes_answer(limited_server, artifacts_128, record_metric):
    """60 concurrent requests against --concurrency 1 --max-queue 2: those beyond the queue get a fast 503 with
    Retry-After, the others their correct masks, and /healthz answers within a second all along."""
    import threading

    import httpx

    url, auth = limited_server, {"Authorization": "Bearer tok"}
    set_a, set_b, queries = load_test.synthetic_images()
    with httpx.Client(base_url=url, timeout=60, headers=auth) as c:
        ids = load_test.create_sets(c, [set_a, set_b])
    case = load_test.make_cases(str(artifacts_128), ids, [set_a, set_b], queries[:1])[0]  # one set
    probes, done = [], threading.Event()

    def probe():
        with httpx.Client(base_url=url, timeout=10) as c:
            while not done.is_set() and len(probes) < 200:
                t0 = time.perf_counter()
                assert c.get("/healthz").status_code == 200
                probes.append(time.perf_counter() - t0)
                time.sleep(0.05)

    def one(_):
        with httpx.Client(base_url=url, timeout=60, headers=auth) as c:
            t0 = time.perf_counter()
            r = c.post(
                "/v1/segment", files={"query": ("q.png", case.query, "image/png")}, data={"set": list(case.sets)}
            )
            return r, time.perf_counter() - t0

    prober = threading.Thread(target=probe)
    prober.start()
    try:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(60) as pool:
            answers = list(pool.map(one, range(60)))
    finally:
        done.set()
        prober.join(30)
    refused = [(r, s) for r, s in answers if r.status_code == 503]
    ok = [r for r, _ in answers if r.status_code == 200]
    assert len(refused) + len(ok) == 60 and len(refused) >= 40, [r.status_code for r, _ in answers]
    assert all(r.json()["error"]["code"] == "overloaded" and r.headers["retry-after"] == "1" for r, _ in refused)
    assert all(np.array_equal(load_test.decode_answer(r.content), case.expected) for r in ok)
    slowest_503, slowest_probe = max(s for _, s in refused), max(probes)
    record_metric("serve overload: 503 answers of 60", len(refused))
    record_metric("serve overload: slowest 503 (s)", slowest_503)
    record_metric("serve overload: slowest /healthz (s)", slowest_probe)
    assert slowest_503 < 2 and slowest_probe < 1 and len(probes) >= 3, (slowest_503, slowest_probe, len(probes))


def test_big_unauthenticated_post_is_refused_unread(limited_server):
    """A 200 MB POST without the token is answered 401 after its headers, the body never read; with the token, a
    body over --max-body is answered 413 the same way."""
    import socket
    from urllib.parse import urlparse

    where = urlparse(limited_server)
    for auth, status in (("", b"401"), ("Authorization: Bearer tok\r\n", b"413")):
        with socket.create_connection((where.hostname, where.port), timeout=10) as s:
            head = (
                "POST /v1/segment HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                f"{auth}Content-Length: {200 * 2**20}\r\n\r\n"
            )
            t0 = time.perf_counter()
            part = b'--b\r\nContent-Disposition: form-data; name="query"; filename="q.png"\r\n\r\n'
            s.sendall(head.encode() + part + b"x" * 65536)  # 64 KiB of the 200 MB: the rest is never sent
            answer = s.recv(4096)
            assert answer.split(b" ")[1] == status, answer
            assert time.perf_counter() - t0 < 5
