"""runtime.engine.files.replace_dir / recover_dir: a whole copy survives a crash at any step."""

import pytest

from runtime.engine.files import recover_dir, replace_dir


def _dir(path, text):
    path.mkdir()
    (path / "f").write_text(text)
    return path


@pytest.mark.parametrize("old", ["dir", "file", "none"])
def test_replace_dir_replaces_a_dir_a_file_or_nothing(tmp_path, old):
    final = tmp_path / "out"
    if old == "dir":
        _dir(final, "old")
    elif old == "file":
        final.write_text("old")
    replace_dir(_dir(tmp_path / "new", "new"), final)
    assert (final / "f").read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_recover_dir_after_a_crash_between_the_renames(tmp_path):
    final = _dir(tmp_path / "out", "old")
    final.rename(tmp_path / ".out.old")  # replace_dir's first step, then the crash
    recover_dir(final)
    assert (final / "f").read_text() == "old" and not (tmp_path / ".out.old").exists()
    _dir(tmp_path / ".out.old", "stale")  # a crash after the new copy was in: the aside copy goes
    replace_dir(_dir(tmp_path / "new", "new"), final)
    assert (final / "f").read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_export_after_an_interrupted_replace_restores_and_keeps_the_old_artifacts(tmp_path):
    """An export whose replace crashed between the renames left only `.art.old`: the next export puts it back and,
    without overwrite, refuses to replace it (checked before anything is exported)."""
    from fssam2_export.export import export_artifacts

    _dir(tmp_path / ".art.old", "old")
    with pytest.raises(FileExistsError, match="not empty"):
        export_artifacts(None, tmp_path / "art", progress=False)
    assert (tmp_path / "art" / "f").read_text() == "old" and not (tmp_path / ".art.old").exists()
