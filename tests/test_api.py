"""The public surface: version, build information, exported names, reprs, the type stub,
and the docstring examples."""

from __future__ import annotations

import ast
import doctest
import importlib.metadata
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import recengine
from recengine import EmbeddingCollection, EmbeddingTable, _core

PKG = Path(recengine.__file__).parent


def test_version() -> None:
    v = recengine.__version__
    assert isinstance(v, str) and re.fullmatch(r"\d+\.\d+\.\d+([.-]?\w+)*", v), v
    assert v == _core.__version__ == recengine.build_info()["version"]
    try:
        assert importlib.metadata.version("recengine") == v
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("recengine is not installed with metadata")


def test_build_info() -> None:
    info = recengine.build_info()
    for key in ("version", "profile", "simd", "simd_available", "threads", "env"):
        assert key in info, key
    assert info["profile"] in ("release", "debug")
    assert set(info["simd_available"]) <= {"avx512", "avx2", "scalar"}
    assert "scalar" in info["simd_available"]
    assert info["simd"] in info["simd_available"]
    assert info["simd"] == _core.simd_level()
    assert list(info["simd_available"]) == list(_core.available_simd_levels())
    assert isinstance(info["threads"], int) and info["threads"] == recengine.get_num_threads()
    assert isinstance(info["env"], dict)


def test_build_info_tracks_simd_level() -> None:
    try:
        for level in _core.available_simd_levels():
            _core.set_simd_level(level)
            assert recengine.build_info()["simd"] == level
    finally:
        _core.set_simd_level(None)


def test_all_names_exist() -> None:
    assert len(set(recengine.__all__)) == len(recengine.__all__)
    for name in recengine.__all__:
        assert hasattr(recengine, name), name
    for mod in ("reference", "functional", "table", "collection", "_dtypes", "_convert"):
        m = __import__(f"recengine.{mod}", fromlist=["__all__"])
        for name in m.__all__:
            assert hasattr(m, name), f"recengine.{mod}.{name}"
    assert recengine.STORAGE_DTYPES == ("fp32", "fp16", "bf16", "int8", "int4")


def test_stub_matches_extension() -> None:
    stub = ast.parse((PKG / "_core.pyi").read_text())
    assert (PKG / "py.typed").exists()
    for node in stub.body:
        if isinstance(node, ast.FunctionDef):
            assert callable(getattr(_core, node.name, None)), node.name
        elif isinstance(node, ast.ClassDef):
            if node.name.startswith("_"):  # a stub-only type (a TypedDict of a returned dict)
                continue
            cls = getattr(_core, node.name)
            for item in node.body:
                if isinstance(item, ast.FunctionDef) and item.name != "__init__":
                    assert hasattr(cls, item.name), f"{node.name}.{item.name}"
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            assert hasattr(_core, node.target.id), node.target.id


def test_stubtest_passes() -> None:
    """mypy's stubtest: every signature, default and class of the stub is the extension's."""
    pytest.importorskip("mypy.stubtest")
    done = subprocess.run([sys.executable, "-m", "mypy.stubtest", "recengine._core"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]


def test_reprs_and_properties(tmp_path: Path) -> None:
    t = EmbeddingTable(np.ones((10, 4), np.float32))
    assert repr(t) == "EmbeddingTable(num_rows=10, dim=4, dtype='fp32', nbytes=160)"
    assert (t.shape, len(t), t.row_bytes, t.nbytes, t.is_memory_mapped) == ((10, 4), 10, 16,
                                                                            160, False)
    q = t.quantize("int4")
    assert repr(q) == "EmbeddingTable(num_rows=10, dim=4, dtype='int4', nbytes=60)"
    np.save(tmp_path / "t.npy", np.ones((3, 2), np.float16))
    m = EmbeddingTable.load(tmp_path / "t.npy")
    assert repr(m) == "EmbeddingTable(num_rows=3, dim=2, dtype='fp16', nbytes=12, mmap)"
    c = EmbeddingCollection([t, q])
    assert repr(c) == "EmbeddingCollection(2 tables, dims=[4, 4], nbytes=220)"


def test_readme_style_examples() -> None:
    table = EmbeddingTable.random(1_000, 32, seed=0)
    assert table.lookup(np.array([3, 5, 7]), offsets=np.array([0, 2])).shape == (2, 32)
    t = EmbeddingTable.random(1000, 16, dtype="int8", seed=1)
    assert (t.dtype, t.row_bytes) == ("int8", 24)
    t = EmbeddingTable(np.eye(4, dtype=np.float32))
    np.testing.assert_array_equal(t.lookup(np.array([0, 1, 3]), lengths=np.array([2, 1])),
                                  [[1, 1, 0, 0], [0, 0, 0, 1]])


def test_reference_doctests() -> None:
    from recengine import reference

    result = doctest.testmod(reference, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 5
    assert result.failed == 0


@pytest.mark.parametrize("level", ["scalar", "avx2"])
def test_simd_environment_variable(tmp_path: Path, level: str) -> None:
    if level not in _core.available_simd_levels():
        pytest.skip(f"this CPU lacks {level}")
    env = dict(os.environ, RECENGINE_SIMD=level)
    code = "import recengine; i = recengine.build_info(); print(i['simd'], i['env'])"
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[0] == level
    assert "RECENGINE_SIMD" in out.stdout
