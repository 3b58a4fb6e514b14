"""Pre-optimised ORT models: keyed by source sha256, ORT version, provider and CPU; rebuilt, never stale."""

import json
import shutil

import numpy as np
import pytest

from runtime import load_manifest
from runtime.backends import OrtBackend
from runtime.backends.cache import CACHE_DIRNAME

GRAPH = "memory_encoder"  # small and quick to optimise


@pytest.fixture
def art(artifacts, tmp_path):
    """A private copy of the artifacts (the cache lives inside the directory)."""
    out = tmp_path / "art"
    out.mkdir()
    for f in ("manifest.json", f"{GRAPH}.onnx"):
        shutil.copy(artifacts / f, out / f)
    return out


def _feeds(spec):
    rng = np.random.default_rng(0)
    return {t.name: rng.standard_normal(t.shape).astype(t.dtype) for t in spec.inputs}


def _load(art, **kw):
    spec = load_manifest(art, verify_files=False).graphs[GRAPH]
    return OrtBackend("cpu", **kw).load(art / spec.file, spec, GRAPH), spec


def test_first_load_builds_then_hits_with_identical_outputs(art):
    built, spec = _load(art)
    hit, _ = _load(art)
    plain, _ = _load(art, cache=False)
    assert (built.cache, hit.cache, plain.cache) == ("built", "hit", "off")
    entries = sorted(p.name for p in (art / CACHE_DIRNAME).iterdir())
    assert (
        len(entries) == 2
        and entries[0].startswith(f"{GRAPH}.cpu.")
        and {p.rsplit(".", 1)[1] for p in entries} == {"json", "onnx"}
    )
    feeds = _feeds(spec)
    ref = plain.run(feeds)
    for graph in (built, hit):
        for name, value in graph.run(feeds).items():
            np.testing.assert_array_equal(value, ref[name])


def test_other_ort_version_or_truncated_entry_is_rebuilt(art):
    _load(art)
    sidecar = next((art / CACHE_DIRNAME).glob("*.json"))
    meta = json.loads(sidecar.read_text())
    meta["key"]["onnxruntime"] = "0.0.1"  # as if written by another ORT under the same name
    sidecar.write_text(json.dumps(meta))
    assert _load(art)[0].cache == "built"
    model = sidecar.with_suffix(".onnx")
    model.write_bytes(model.read_bytes()[:1000])  # torn write
    assert _load(art)[0].cache == "built"
    size = model.stat().st_size
    model.write_bytes(b"\0" * size)  # same size, unreadable contents
    with pytest.warns(UserWarning, match="rebuilding"):
        assert _load(art)[0].cache == "built"
    assert _load(art)[0].cache == "hit"


def test_changed_source_graph_gets_its_own_entry(art):
    _load(art)
    spec = load_manifest(art, verify_files=False).graphs[GRAPH]
    changed = type(spec)(**{**spec.__dict__, "sha256": "0" * 64})  # same file name, other contents
    graph = OrtBackend("cpu").load(art / spec.file, changed, GRAPH)
    assert graph.cache == "built"
    assert len(list((art / CACHE_DIRNAME).glob("*.onnx"))) == 2


def test_unwritable_artifacts_dir_falls_back_to_user_cache_then_memory(art, tmp_path, monkeypatch):
    (art / CACHE_DIRNAME).write_text("not a directory")  # cannot be created, even by root
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert _load(art)[0].cache == "built"
    assert len(list((tmp_path / "xdg" / "fssam2" / "ort").glob(f"{GRAPH}.cpu.*.onnx"))) == 1
    assert _load(art)[0].cache == "hit"
    (tmp_path / "blocked").write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "blocked"))
    with pytest.warns(UserWarning, match="in memory"):
        graph, _ = _load(art)
    assert graph.cache == "off"


def _uses_env_allocators(graph) -> bool:
    try:
        return graph._session.get_session_options().get_session_config_entry("session.use_env_allocators") == "1"
    except RuntimeError:  # ORT raises for an entry that was never set
        return False


def test_sessions_draw_from_one_shared_cpu_arena_unless_asked_not_to(art):
    shared, spec = _load(art)
    private, _ = _load(art, shared_arena=False)
    assert _uses_env_allocators(shared) and not _uses_env_allocators(private)
    feeds = _feeds(spec)
    for name, value in shared.run(feeds).items():
        np.testing.assert_array_equal(value, private.run(feeds)[name])
