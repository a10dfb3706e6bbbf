"""Kernel cache placement: under the state directory, re-pointed even after import."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from forecaster.cache import (
    CacheDirectoryError,
    cache_dir_for,
    kernels,
    point_cache_at,
    use_cache_dir,
)


def test_every_kernel_is_re_pointed_at_the_cache_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import numba

    original = getattr(numba.config, "CACHE_DIR", "")
    monkeypatch.setenv("NUMBA_CACHE_DIR", "")
    target = cache_dir_for(tmp_path / "state")
    try:
        use_cache_dir(target)
        assert len(kernels()) >= 8
        for kernel in kernels():
            assert kernel.stats.cache_path.startswith(str(target.resolve()))
    finally:
        # Back to where the rest of the suite caches (not the deleted tmp_path).
        setattr(numba.config, "CACHE_DIR", original)  # noqa: B010
        for kernel in kernels():
            kernel.enable_caching()


def test_an_unwritable_cache_directory_is_refused(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(CacheDirectoryError, match="cannot create"):
        use_cache_dir(blocker / "cache")


def test_point_cache_at_leaves_an_explicit_environment_alone(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("NUMBA_CACHE_DIR", "/explicit")
    point_cache_at(tmp_path)
    assert os.environ["NUMBA_CACHE_DIR"] == "/explicit"
    monkeypatch.delenv("NUMBA_CACHE_DIR")
    point_cache_at(tmp_path)
    assert os.environ["NUMBA_CACHE_DIR"] == str(tmp_path)
