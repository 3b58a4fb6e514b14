"""Files the project writes get the process umask's mode (0644 under umask 022, 0640 under 027), as `open` gives,
not `mkstemp`'s private 0600: a teammate, a web server or another node can read masks, tables, sets and caches.
(Label outputs: test_label; the serve store: test_serve; libfssam2's writers: test_cpp.)"""

import os
from contextlib import contextmanager

import pytest

from runtime.engine.files import create_temp_dir, write_atomic


@contextmanager
def umask(mask: int):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


@pytest.mark.parametrize("mask", [0o022, 0o027])
def test_atomic_writes_take_the_umask_mode(tmp_path, mask, seg_128, episode):
    with umask(mask):
        written = write_atomic(tmp_path / "sub" / "f.json", b"{}")
        again = write_atomic(written, b"[]")  # replacing a file: the new one's mode, same rule
        made = create_temp_dir(tmp_path, ".partial-")
        set_file = seg_128.encode_supports(episode.supports[:1]).save(tmp_path / "s.fssam2")
    for path in (written, again, set_file):
        assert path.stat().st_mode & 0o777 == 0o666 & ~mask, path
    assert made.stat().st_mode & 0o777 == 0o777 & ~mask
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == ["f.json"], "temporary file left behind"


def test_ort_cache_entries_are_readable_by_others(seg_128, artifacts_128):
    """The optimised-model cache beside the artifacts (made under the session's umask) is shared like them."""
    mask = os.umask(0)
    os.umask(mask)
    entries = [p for p in (artifacts_128 / ".ort_cache").rglob("*") if p.is_file()]
    assert entries, "no cache entries: the check would see nothing"
    for p in entries:
        assert p.stat().st_mode & 0o777 == 0o666 & ~mask, p
