"""Loading and saving tables: memory-mapped .npy, safetensors round trips, foreign files,
and clear errors for bad ones."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import numpy as np
import pytest
from recengine import EmbeddingTable, _core
from recengine.reference import pool_reference, to_bf16_reference

STORAGE = ("fp32", "fp16", "bf16", "int8", "int4")
FILE_ERRORS = (OSError, ValueError, TypeError)


def write_safetensors(path: Path, tensors: dict[str, tuple[str, list[int], bytes]],
                      metadata: dict[str, str] | None = None, pad_to: int = 8,
                      header: bytes | None = None) -> None:
    """Write a safetensors file by hand: u64 header length, JSON header, then the data."""
    head: dict = {}
    data = b""
    for name, (dtype, shape, blob) in tensors.items():
        head[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(data),
                                                                        len(data) + len(blob)]}
        data += blob
    if metadata is not None:
        head["__metadata__"] = metadata
    raw = json.dumps(head).encode() if header is None else header
    if pad_to > 1:
        raw += b" " * (-len(raw) % pad_to)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)


def table_data(n: int = 37, d: int = 11, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)


def check_lookups(t: EmbeddingTable, rows: np.ndarray) -> None:
    r = np.random.default_rng(1)
    idx = r.integers(0, rows.shape[0], 50)
    ln = np.array([10, 0, 25, 15])
    np.testing.assert_allclose(t.lookup(idx, lengths=ln), pool_reference(rows, idx, lengths=ln),
                               rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# .npy


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_load_npy_memory_mapped(tmp_path: Path, dtype: type) -> None:
    x = table_data().astype(dtype)
    path = tmp_path / "t.npy"
    np.save(path, x)
    for p in (path, str(path)):
        t = EmbeddingTable.load(p)
        assert t.is_memory_mapped
        assert t.dtype == ("fp32" if dtype == np.float32 else "fp16")
        assert t.shape == x.shape and t.num_rows == 37 and t.dim == 11
        assert "mmap" in repr(t)
        np.testing.assert_array_equal(t.to_numpy(), x.astype(np.float32))
        check_lookups(t, x.astype(np.float32))


def test_npy_mapping_outlives_the_file_name(tmp_path: Path) -> None:
    x = table_data(500, 16)
    path = tmp_path / "t.npy"
    np.save(path, x)
    t = EmbeddingTable.load(path)
    os.remove(path)
    check_lookups(t, x)
    np.testing.assert_array_equal(t.to_numpy(), x)


@pytest.mark.parametrize("storage", ["fp32", "fp16"])
def test_save_npy_round_trip(tmp_path: Path, storage: str) -> None:
    t = EmbeddingTable(table_data(), dtype=storage)
    path = tmp_path / "t.npy"
    t.save(path)
    back = np.load(path)
    assert back.dtype == (np.float32 if storage == "fp32" else np.float16)
    np.testing.assert_array_equal(back.astype(np.float32), t.to_numpy())
    u = EmbeddingTable.load(path)
    assert u.dtype == storage
    np.testing.assert_array_equal(u.raw_rows(), t.raw_rows())


@pytest.mark.parametrize("storage", ["bf16", "int8", "int4"])
def test_save_npy_refuses_other_dtypes(tmp_path: Path, storage: str) -> None:
    with pytest.raises(ValueError, match="safetensors"):
        EmbeddingTable(table_data(), dtype=storage).save(tmp_path / "t.npy")


def test_bad_npy_files(tmp_path: Path) -> None:
    cases = {
        "f64.npy": (table_data().astype(np.float64), TypeError),
        "i32.npy": (np.ones((3, 4), np.int32), TypeError),
        "one_d.npy": (np.ones(5, np.float32), ValueError),
        "three_d.npy": (np.ones((2, 2, 2), np.float32), ValueError),
        "fortran.npy": (np.asfortranarray(table_data()), ValueError),
        "big_endian.npy": (table_data().astype(">f4"), ValueError),
    }
    for name, (arr, exc) in cases.items():
        np.save(tmp_path / name, arr)
        with pytest.raises(exc):
            EmbeddingTable.load(tmp_path / name)
    with pytest.raises(OSError):
        EmbeddingTable.load(tmp_path / "missing.npy")
    (tmp_path / "garbage.npy").write_bytes(b"not a numpy file at all")
    with pytest.raises(FILE_ERRORS):
        EmbeddingTable.load(tmp_path / "garbage.npy")
    with pytest.raises(ValueError, match="format"):
        EmbeddingTable.load(tmp_path / "table.bin")
    with pytest.raises(ValueError):
        EmbeddingTable(table_data()).save(tmp_path / "table.txt")


# ---------------------------------------------------------------------------------------------
# safetensors


@pytest.mark.parametrize("storage", STORAGE)
def test_safetensors_round_trip(tmp_path: Path, storage: str) -> None:
    t = EmbeddingTable(table_data(d=13), dtype=storage)
    path = tmp_path / "t.safetensors"
    t.save(path)
    u = EmbeddingTable.load(path)
    assert (u.dtype, u.shape, u.row_bytes) == (storage, t.shape, t.row_bytes)
    assert u.is_memory_mapped
    np.testing.assert_array_equal(u.raw_rows(), t.raw_rows())
    np.testing.assert_array_equal(u.to_numpy(), t.to_numpy())
    check_lookups(u, t.to_numpy())
    t.save(tmp_path / "named.safetensors", name="emb")
    assert _core.safetensors_names(str(tmp_path / "named.safetensors")) == ["emb"]
    v = EmbeddingTable.load(tmp_path / "named.safetensors", name="emb")
    np.testing.assert_array_equal(v.raw_rows(), t.raw_rows())


@pytest.mark.parametrize("storage", ["int8", "int4", "fp16"])
def test_saved_file_is_standard_safetensors(tmp_path: Path, storage: str) -> None:
    st = pytest.importorskip("safetensors.numpy")
    t = EmbeddingTable(table_data(d=13), dtype=storage)
    path = tmp_path / "t.safetensors"
    t.save(path)
    loaded = st.load_file(str(path))
    assert list(loaded) == ["weight"]
    arr = loaded["weight"]
    if storage == "fp16":
        assert arr.dtype == np.float16
        np.testing.assert_array_equal(arr.astype(np.float32), t.to_numpy())
    else:
        assert arr.dtype == np.uint8 and arr.shape == (t.num_rows, t.row_bytes)
        np.testing.assert_array_equal(arr, t.raw_rows())
        from safetensors import safe_open

        with safe_open(str(path), framework="numpy") as f:
            meta = f.metadata() or {}
        assert any(storage in str(v) for v in meta.values()), meta


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_load_file_from_safetensors_package(tmp_path: Path, dtype: type) -> None:
    st = pytest.importorskip("safetensors.numpy")
    x = table_data().astype(dtype)
    path = tmp_path / "ext.safetensors"
    st.save_file({"embedding.weight": x}, str(path))
    t = EmbeddingTable.load(path)
    assert t.dtype == ("fp32" if dtype == np.float32 else "fp16")
    np.testing.assert_array_equal(t.to_numpy(), x.astype(np.float32))
    check_lookups(t, x.astype(np.float32))


def test_multi_tensor_file_needs_name(tmp_path: Path) -> None:
    st = pytest.importorskip("safetensors.numpy")
    a, b = table_data(10, 4, 1), table_data(20, 6, 2).astype(np.float16)
    path = tmp_path / "multi.safetensors"
    st.save_file({"user": a, "item": b, "bias": np.ones(3, np.float32)}, str(path))
    assert sorted(_core.safetensors_names(str(path))) == ["bias", "item", "user"]
    np.testing.assert_array_equal(EmbeddingTable.load(path, name="user").to_numpy(), a)
    t = EmbeddingTable.load(path, name="item")
    assert t.dtype == "fp16"
    np.testing.assert_array_equal(t.to_numpy(), b.astype(np.float32))
    with pytest.raises((ValueError, KeyError)) as info:
        EmbeddingTable.load(path)
    assert "user" in str(info.value) and "item" in str(info.value)
    with pytest.raises((ValueError, KeyError)) as info:
        EmbeddingTable.load(path, name="nope")
    assert "nope" in str(info.value)
    with pytest.raises(ValueError):  # a 1-D tensor is not a table
        EmbeddingTable.load(path, name="bias")


def test_hand_written_bf16_file(tmp_path: Path) -> None:
    x = to_bf16_reference(table_data())
    blob = (x.view(np.uint32) >> 16).astype("<u2").tobytes()
    path = tmp_path / "bf.safetensors"
    write_safetensors(path, {"w": ("BF16", list(x.shape), blob)})
    t = EmbeddingTable.load(path)
    assert t.dtype == "bf16"
    np.testing.assert_array_equal(t.to_numpy(), x)
    check_lookups(t, x)


@pytest.mark.parametrize("dtype", ["F32", "F16", "BF16"])
def test_unaligned_tensor_data(tmp_path: Path, dtype: str) -> None:
    """Data starting at an address that is not a multiple of the element size still loads."""
    x = table_data(20, 5)
    if dtype == "F16":
        x = x.astype(np.float16).astype(np.float32)
        blob = x.astype("<f2").tobytes()
    elif dtype == "BF16":
        x = to_bf16_reference(x)
        blob = (x.view(np.uint32) >> 16).astype("<u2").tobytes()
    else:
        blob = x.astype("<f4").tobytes()
    for extra in range(4):
        path = tmp_path / f"u{extra}.safetensors"
        head = json.dumps({"w": {"dtype": dtype, "shape": [20, 5],
                                 "data_offsets": [0, len(blob)]}}).encode() + b" " * extra
        write_safetensors(path, {"w": (dtype, [20, 5], blob)}, pad_to=1, header=head)
        t = EmbeddingTable.load(path)
        np.testing.assert_array_equal(t.to_numpy(), x)
        check_lookups(t, x)


def test_bad_safetensors_files(tmp_path: Path) -> None:
    x = table_data(4, 3)
    good = x.tobytes()
    bad: dict[str, bytes] = {
        "empty": b"",
        "short": b"\x05\x00",
        "huge_header": struct.pack("<Q", 1 << 40) + b"{}",
        "bad_json": struct.pack("<Q", 8) + b"{not js}",
    }
    for name, content in bad.items():
        (tmp_path / f"{name}.safetensors").write_bytes(content)
    # header claims more data than there is
    head = json.dumps({"w": {"dtype": "F32", "shape": [4, 3], "data_offsets": [0, 48]}})
    write_safetensors(tmp_path / "truncated.safetensors", {}, header=head.encode())
    with open(tmp_path / "truncated.safetensors", "ab") as f:
        f.write(good[:20])
    # shape and offsets disagree
    head = json.dumps({"w": {"dtype": "F32", "shape": [5, 3], "data_offsets": [0, 48]}})
    write_safetensors(tmp_path / "mismatch.safetensors", {}, header=head.encode())
    with open(tmp_path / "mismatch.safetensors", "ab") as f:
        f.write(good)
    for name in [*bad, "truncated", "mismatch"]:
        with pytest.raises(FILE_ERRORS) as info:
            EmbeddingTable.load(tmp_path / f"{name}.safetensors")
        assert str(info.value), name
    # unsupported dtypes and shapes
    write_safetensors(tmp_path / "i64.safetensors",
                      {"w": ("I64", [4, 3], np.ones((4, 3), np.int64).tobytes())})
    with pytest.raises(TypeError):
        EmbeddingTable.load(tmp_path / "i64.safetensors")
    write_safetensors(tmp_path / "f64.safetensors", {"w": ("F64", [4, 3], x.astype(
        np.float64).tobytes())})
    with pytest.raises(TypeError):
        EmbeddingTable.load(tmp_path / "f64.safetensors")
    write_safetensors(tmp_path / "three_d.safetensors", {"w": ("F32", [2, 2, 3], good)})
    with pytest.raises(ValueError):
        EmbeddingTable.load(tmp_path / "three_d.safetensors")
    write_safetensors(tmp_path / "zero_dim.safetensors", {"w": ("F32", [4, 0], b"")})
    with pytest.raises(ValueError):
        EmbeddingTable.load(tmp_path / "zero_dim.safetensors")
    # raw uint8 rows without the metadata saying which format they are in
    write_safetensors(tmp_path / "u8.safetensors", {"w": ("U8", [4, 11], bytes(44))})
    with pytest.raises((TypeError, ValueError)):
        EmbeddingTable.load(tmp_path / "u8.safetensors")
    with pytest.raises(OSError):
        EmbeddingTable.load(tmp_path / "missing.safetensors")


def test_save_to_unwritable_path(tmp_path: Path) -> None:
    t = EmbeddingTable(table_data())
    with pytest.raises(OSError):
        t.save(tmp_path / "no" / "such" / "dir" / "t.safetensors")
