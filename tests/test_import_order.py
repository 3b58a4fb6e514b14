"""The stage packages import one way: runtime <- fssam2_export <- training <- calibration; inside the runtime, its
rooms too: engine <- backends <- tools <- apps <- cli (docs/architecture.md).

A package may import itself and the stages to its left, never one to its right: the runtime imports none of the
others, the exporter only the runtime, training the runtime and the exporter, calibration any of them. Every import
statement counts, also those inside functions (lazy imports make cycles too). Inside runtime/ the same holds for the
rooms, relative imports included; the package face, runtime/__init__.py, may import any room and no room imports it
(it sits above them all: importing it imports every room).
"""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("runtime", "fssam2_export", "training", "calibration")
ROOMS = ("engine", "backends", "tools", "apps", "cli")  # runtime/<room>/, in import order
FACE = "runtime"  # runtime/__init__.py: ranks above every room


def imported(path: Path, root: Path) -> list[tuple[int, str, str]]:
    """(line, absolute name, the statement's module) of every import in `path` (a file under `root`), relative ones
    resolved; `from package import a, b` gives `package.a` and `package.b` (each may be a module)."""
    package = list(path.relative_to(root).with_suffix("").parts[:-1])
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join(base + (node.module.split(".") if node.module else []))
            found += [(node.lineno, f"{module}.{a.name}", module) for a in node.names]
        elif (
            isinstance(node, ast.Call)
            and getattr(node.func, "attr", getattr(node.func, "id", None)) == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            found.append((node.lineno, node.args[0].value, node.args[0].value))
    return found


def violations(root: Path) -> list[str]:
    """'file:line: stage imports later-stage' for every import of a later stage under root/<stage>/."""
    found = []
    for rank, stage in enumerate(STAGES):
        for path in sorted((root / stage).rglob("*.py")):
            for line, module in dict.fromkeys((line, module) for line, _, module in imported(path, root)):
                top = module.split(".")[0]
                if top in STAGES and STAGES.index(top) > rank:
                    found.append(f"{path.relative_to(root)}:{line}: {stage} imports {module}")
    return found


def room_of(name: str) -> str | None:
    """The runtime room a module name lies in (FACE for `runtime` itself or a name it exports), None outside runtime."""
    parts = name.split(".")
    if parts[0] != "runtime":
        return None
    return parts[1] if len(parts) > 1 and parts[1] in ROOMS else FACE


def room_violations(root: Path) -> list[str]:
    """'file:line: room imports later-room' for every import of a later room (or of the face) under
    root/runtime/<room>/, and 'file: outside the rooms' for a module of runtime/ that is neither in a room nor the
    face."""
    found, rank = [], {room: i for i, room in enumerate((*ROOMS, FACE))}
    for path in sorted((root / "runtime").rglob("*.py")):
        parts = path.relative_to(root / "runtime").parts
        if parts == ("__init__.py",):
            continue  # the face imports every room
        if len(parts) < 2 or parts[0] not in ROOMS:
            found.append(f"{path.relative_to(root)}: outside the rooms {ROOMS}")
            continue
        for line, name, _ in imported(path, root):
            room = room_of(name)
            if room is not None and rank[room] > rank[parts[0]]:
                what = "the package face" if room == FACE else room
                found.append(f"{path.relative_to(root)}:{line}: {parts[0]} imports {name} ({what})")
    return found


def test_stage_packages_import_one_way():
    assert violations(ROOT) == []


def test_runtime_rooms_import_one_way():
    assert room_violations(ROOT) == []


def test_a_lazy_import_of_a_later_stage_is_caught(tmp_path):
    """The scan itself: made-up packages, each with one import of a later stage, in the ways code hides them."""
    for stage in STAGES:
        (tmp_path / stage).mkdir()
        (tmp_path / stage / "__init__.py").write_text("from . import x\nimport numpy\n")
    (tmp_path / "runtime" / "ok.py").write_text("from runtime.engine.manifest import Manifest\n")
    (tmp_path / "fssam2_export" / "lazy.py").write_text("def f():\n    from calibration.pipeline import converter\n")
    (tmp_path / "training" / "plain.py").write_text("import os\nimport calibration.int8 as q\n")
    (tmp_path / "runtime" / "dyn.py").write_text("import importlib\nimportlib.import_module('training.fit')\n")
    (tmp_path / "calibration" / "top.py").write_text("import runtime, training, fssam2_export\n")
    assert sorted(violations(tmp_path)) == [
        "fssam2_export/lazy.py:2: fssam2_export imports calibration.pipeline",
        "runtime/dyn.py:2: runtime imports training.fit",
        "training/plain.py:2: training imports calibration.int8",
    ]


def test_an_import_up_the_runtime_rooms_is_caught(tmp_path):
    """The room scan itself: a made-up runtime/ whose rooms import up in the ways code hides it (lazy, relative,
    through the face, by name), and a module outside the rooms."""
    files = {
        "__init__.py": "from .cli import main\nfrom .engine.segmenter import FewShotSegmenter\n",  # the face: exempt
        "stray.py": "import numpy\n",
        "engine/__init__.py": "from . import segmenter\n",
        "engine/segmenter.py": "from .backend import create_backend\nfrom runtime.engine import errors\n",
        "engine/lazy.py": "def f():\n    from ..backends.ort import OrtBackend\n",
        "engine/dyn.py": "import importlib\nimportlib.import_module('runtime.cli')\n",
        "backends/ort.py": "from ..engine.backend import register_backend\nfrom runtime.tools import bench\n",
        "backends/up.py": "from .. import apps, engine\n",
        "tools/bench.py": "from ..backends import ort\nfrom ..engine.manifest import Manifest\n",
        "apps/face.py": "import runtime\nfrom runtime import FewShotSegmenter\n",
        "cli/main.py": "from ..apps import serve\nfrom runtime.tools.bench import run_bench\nimport numpy\n",
    }
    for name, text in files.items():
        (tmp_path / "runtime" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "runtime" / name).write_text(text)
    assert room_violations(tmp_path) == [
        "runtime/apps/face.py:1: apps imports runtime (the package face)",
        "runtime/apps/face.py:2: apps imports runtime.FewShotSegmenter (the package face)",
        "runtime/backends/ort.py:2: backends imports runtime.tools.bench (tools)",
        "runtime/backends/up.py:1: backends imports runtime.apps (apps)",
        "runtime/engine/dyn.py:2: engine imports runtime.cli (cli)",
        "runtime/engine/lazy.py:2: engine imports runtime.backends.ort.OrtBackend (backends)",
        "runtime/stray.py: outside the rooms ('engine', 'backends', 'tools', 'apps', 'cli')",
    ]
