"""Shared fixtures and hypothesis profiles of the recengine test suite.

Profiles: ``fast`` (the default, a few dozen examples per property) and ``slow`` (many more),
picked with the environment variable ``HYPOTHESIS_PROFILE``::

    HYPOTHESIS_PROFILE=slow python -m pytest tests

Nothing here imports ``recengine`` at import time, so ``tests/test_reference.py`` runs before
the compiled core exists.
"""

from __future__ import annotations

import multiprocessing
import os
import time
import warnings
from typing import Any, Callable, Iterator, Optional

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

_SUPPRESS = [HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
             HealthCheck.data_too_large]
settings.register_profile("fast", max_examples=40, deadline=None, suppress_health_check=_SUPPRESS,
                          print_blob=True)
settings.register_profile("slow", max_examples=1000, deadline=None,
                          suppress_health_check=_SUPPRESS, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "fast"))



def pytest_configure(config: pytest.Config) -> None:
    # On a failure hypothesis writes a patch file with libcst, whose import warns through
    # mypy_extensions; with filterwarnings = error that would turn the report into an
    # INTERNALERROR and hide the real failure.
    config.addinivalue_line(
        "filterwarnings", "ignore:mypy_extensions.TypedDict is deprecated:DeprecationWarning")


#: Every SIMD level the core may have; levels the CPU lacks are skipped.
SIMD_LEVELS = ("scalar", "avx2", "avx512")

#: Embedding dims worth covering: tiny, odd, and around the 8/16-lane vector widths.
DIMS = (1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 65, 100, 127, 128, 129, 255,
        256, 257, 1000, 1024)

EPS32 = float(np.finfo(np.float32).eps)


@pytest.fixture(params=SIMD_LEVELS)
def simd_level(request: pytest.FixtureRequest) -> Iterator[str]:
    """Force each SIMD level the CPU offers in turn; restore automatic choice afterwards."""
    from recengine import _core

    level = request.param
    if level not in _core.available_simd_levels():
        pytest.skip(f"this CPU lacks {level}")
    _core.set_simd_level(level)
    try:
        assert _core.simd_level() == level
        yield level
    finally:
        _core.set_simd_level(None)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(20240611)


@pytest.fixture
def restore_threads() -> Iterator[None]:
    """Put the core's thread count back after a test that changes it."""
    import recengine

    before = recengine.get_num_threads()
    try:
        yield
    finally:
        recengine.set_num_threads(before)


def pooled_tolerance(
    rows_f32: np.ndarray,
    indices: Any,
    offsets: Any = None,
    lengths: Any = None,
    weights: Any = None,
    mode: str = "sum",
    padding_idx: Optional[int] = None,
    include_last_offset: bool = False,
    ulps: float = 8.0,
) -> np.ndarray:
    """Elementwise tolerance ``[B, D]`` for comparing a pooled result with ``pool_reference``.

    Float32 summation in any order (and a dequantisation folded into an FMA) is off by at most
    a few ulps per term of the largest term magnitude: ``ulps * eps32 * (n_b + 2) * S_b`` where
    ``S_b = sum_j |w_j| * max|row_j|`` over bag b (divided by the count for mean), plus
    ``1e-5`` relative.
    """
    from recengine.reference import pool_reference

    rows = np.asarray(rows_f32, dtype=np.float32)
    rowmax = np.abs(rows).max(axis=1, keepdims=True) if rows.size else np.zeros((len(rows), 1))
    absw = None if weights is None else np.abs(np.asarray(weights, dtype=np.float32))
    kw = dict(offsets=offsets, lengths=lengths, padding_idx=padding_idx,
              include_last_offset=include_last_offset)
    s = pool_reference(rowmax, indices, weights=absw, mode="mean" if mode == "mean" else "sum",
                       **kw).astype(np.float64)
    n = pool_reference(np.ones((len(rows), 1), np.float32), indices, **kw).astype(np.float64)
    ref = pool_reference(rows, indices, weights=weights, mode=mode, **kw).astype(np.float64)
    return 1e-5 * np.abs(ref) + ulps * EPS32 * (n + 2) * s + 1e-30


def assert_pooled_close(out: np.ndarray, rows_f32: np.ndarray, indices: Any,
                        **kw: Any) -> None:
    """Assert ``out`` is ``pool_reference(rows_f32, indices, **kw)`` within float tolerance."""
    from recengine.reference import pool_reference

    ref = pool_reference(rows_f32, indices, **kw)
    assert out.dtype == np.float32
    assert out.shape == ref.shape, (out.shape, ref.shape)
    tol = pooled_tolerance(rows_f32, indices, **kw)
    err = np.abs(out.astype(np.float64) - ref.astype(np.float64))
    bad = ~(err <= tol)
    if bad.any():
        b, d = np.argwhere(bad)[0]
        raise AssertionError(
            f"{int(bad.sum())} of {bad.size} values differ; first at bag {b} col {d}: "
            f"got {out[b, d]!r}, expected {ref[b, d]!r} (tol {tol[b, d]:.3g})")


@pytest.fixture
def check_pooled() -> Callable[..., None]:
    """``check_pooled(out, rows_f32, indices, **lookup_kwargs)``: see ``assert_pooled_close``."""
    return assert_pooled_close


def run_forked(target: Any, args: tuple, timeout: float = 60.0) -> Any:
    """Run ``target(conn, *args)`` in a forked child; return what it sent, or fail (never hang).
    """
    ctx = multiprocessing.get_context("fork")
    recv, send = ctx.Pipe(duplex=False)
    with warnings.catch_warnings():
        # Python 3.12+ warns about fork() in a multi-threaded process: that is the point here.
        warnings.simplefilter("ignore", DeprecationWarning)
        proc = ctx.Process(target=target, args=(send, *args), daemon=True)
        proc.start()
    send.close()
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if recv.poll(0.05):
                try:
                    msg = recv.recv()
                except EOFError:  # the child closed the pipe without sending: it died
                    proc.join(timeout=30)
                    pytest.fail(f"the forked child died without an answer (exit {proc.exitcode})")
                proc.join(timeout=30)
                return msg
            if not proc.is_alive() and not recv.poll(0.05):
                pytest.fail(f"the forked child died without an answer (exit {proc.exitcode})")
        pytest.fail(f"the forked child did not answer within {timeout} s (deadlock?)")
    finally:
        if proc.is_alive():
            proc.kill()
            proc.join(timeout=10)
        recv.close()


@pytest.fixture
def core_pool_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """A list that grows by one at each call of ``recengine.nn._op.pool`` (the drop-in's way
    into the core) during the test: to check which calls reach the core."""
    from recengine.nn import _op

    calls: list[int] = []
    real = _op.pool

    def counting(*args: Any) -> Any:
        calls.append(1)
        return real(*args)

    monkeypatch.setattr(_op, "pool", counting)
    return calls
