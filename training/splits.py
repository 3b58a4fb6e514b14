"""FS-SAM2's few-shot split lists, shipped xz-compressed in `training/data/splits/` (see its SOURCE.md).

A `lists_dir` may point elsewhere (same relative paths, plain `.txt` or `.txt.xz`), e.g. for tests.
"""

from __future__ import annotations

import ast
import lzma
from pathlib import Path

PACKAGED_LISTS = Path(__file__).parent / "data" / "splits"


def _read_text(relative: str, lists_dir: Path | None) -> str:
    base = lists_dir or PACKAGED_LISTS
    for path in (base / relative, base / f"{relative}.xz"):
        if path.is_file():
            return lzma.open(path, "rt").read() if path.suffix == ".xz" else path.read_text()
    raise FileNotFoundError(f"split list {relative} not found under {base}")


def read_names(relative: str, lists_dir: Path | None = None) -> list[str]:
    """A one-name-a-line list (empty lines dropped)."""
    return [line.strip() for line in _read_text(relative, lists_dir).splitlines() if line.strip()]


def read_classwise(relative: str, lists_dir: Path | None = None) -> dict[int, list[str]]:
    """A `{label: [name, ...]}` dict literal (1-based labels) as {0-based class id: names}."""
    text = _read_text(relative, lists_dir)
    try:
        table = ast.literal_eval(text)
    except (ValueError, SyntaxError) as e:
        raise ValueError(f"split list {relative} is not a Python dict literal: {e}") from e
    if not isinstance(table, dict):
        raise ValueError(f"split list {relative} is not a dict of class -> names")
    return {int(label) - 1: [str(n) for n in names] for label, names in table.items()}
