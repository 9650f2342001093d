"""sasg.kernels.cache: numba's entries older than a kernel source are dropped, nothing else is."""

from __future__ import annotations

import os

from sasg.kernels.cache import HERE, drop_stale, stale_entries


def _touch(path, mtime: float, text: str = "") -> None:
    path.write_text(text)
    os.utime(path, (mtime, mtime))


def test_entries_older_than_the_newest_source_are_dropped_and_nothing_else(tmp_path):
    pkg = tmp_path / "kernels"
    cache = pkg / "__pycache__"
    cache.mkdir(parents=True)
    _touch(pkg / "topk.py", 1_000)
    _touch(pkg / "vector.py", 2_000)  # a helper edited after the cache was built
    old = ["topk._select_rows-201.py311.nbi", "topk._select_rows-201.py311.1.nbc", "vector.above_bits-40.py312.nbi"]
    for name in old:
        _touch(cache / name, 1_500)
    fresh = cache / "topk.select-10.py311.nbi"
    _touch(fresh, 2_500)  # built after every source
    kept = ["other.f-3.py311.nbi",  # not a module of this folder
            "topk.cpython-311.pyc",  # Python's own cache
            "notes.txt"]
    for name in kept:
        _touch(cache / name, 1_500)
    outside = tmp_path / "outside.nbi"
    _touch(outside, 1_500, "not sasg's")
    link = cache / "topk.linked-5.py311.nbi"
    link.symlink_to(outside)
    os.utime(link, (1_500, 1_500), follow_symlinks=False)

    assert [p.name for p in stale_entries(pkg)] == sorted(old)
    assert drop_stale(pkg) == 3
    left = sorted(p.name for p in cache.iterdir())
    assert left == sorted([fresh.name, *kept, link.name])
    assert link.is_symlink() and outside.read_text() == "not sasg's"  # a link is never followed nor removed
    assert drop_stale(pkg) == 0  # nothing stale left


def test_no_cache_folder_is_nothing_to_drop(tmp_path):
    _touch(tmp_path / "rice.py", 1_000)
    assert stale_entries(tmp_path) == [] and drop_stale(tmp_path) == 0


def test_the_installed_cache_is_not_stale():
    # The Makefile compiles the kernels after the last source edit: nothing here is stale, so
    # ``python -m sasg.kernels`` has nothing to drop (a stale entry would mean an edit whose
    # machine code was never rebuilt).
    stale = stale_entries(HERE)
    assert stale == [], (f"{len(stale)} cached kernel entries are older than a kernel source (e.g. "
                         f"{stale[0].name}): run `make test`, or `python -m sasg.kernels`, to rebuild them")
