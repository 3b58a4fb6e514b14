"""The stage packages import one way: runtime <- fssam2_export <- training <- calibration.

A package may import itself and the stages to its left, never one to its right: the runtime imports none of the
others, the exporter only the runtime, training the runtime and the exporter, calibration any of them. Every import
statement counts, also those inside functions (lazy imports make cycles too).
"""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("runtime", "fssam2_export", "training", "calibration")


def violations(root: Path) -> list[str]:
    """'file:line: stage imports later-stage' for every import of a later stage under root/<stage>/."""
    found = []
    for rank, stage in enumerate(STAGES):
        for path in sorted((root / stage).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0:
                    names = [node.module]
                elif (
                    isinstance(node, ast.Call)
                    and getattr(node.func, "attr", getattr(node.func, "id", None)) == "import_module"
                    and node.args
                    and isinstance(node.args[0], ast.Constant)
                    and isinstance(node.args[0].value, str)
                ):
                    names = [node.args[0].value]
                else:
                    continue
                for name in names:
                    top = name.split(".")[0]
                    if top in STAGES and STAGES.index(top) > rank:
                        found.append(f"{path.relative_to(root)}:{node.lineno}: {stage} imports {name}")
    return found


def test_stage_packages_import_one_way():
    assert violations(ROOT) == []


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
