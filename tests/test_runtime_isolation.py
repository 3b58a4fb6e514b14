"""The runtime runs without torch and imports nothing from the other fssam2 packages."""

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

RUNTIME = Path(__file__).resolve().parents[1] / "runtime"
FORBIDDEN = {"torch", "torchvision", "sam2", "fssam2_export", "training", "calibration", "onnx"}


def test_runtime_sources_import_only_allowed_modules():
    for path in RUNTIME.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                roots = [a.name.split(".")[0] for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                roots = [node.module.split(".")[0]]
            else:
                continue
            assert not FORBIDDEN & set(roots), f"{path.name} imports {roots}"


def test_segment_in_fresh_interpreter_without_torch(artifacts, episode):
    code = textwrap.dedent(f"""
        import sys
        sys.modules["torch"] = None  # any 'import torch' now raises ImportError
        from runtime import FewShotSegmenter
        seg = FewShotSegmenter({str(artifacts)!r})
        cats = seg.encode_supports([({str(episode.supports[0][0])!r}, {str(episode.supports[0][1])!r})])
        r = seg.segment({str(episode.query)!r}, cats)
        loaded = [m for m in sys.modules if m.split(".")[0] in {sorted(FORBIDDEN)!r} and sys.modules[m] is not None]
        assert not loaded, loaded
        print("ok", r.mask.shape)
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("ok")
