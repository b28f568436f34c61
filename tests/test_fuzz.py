"""Fuzzing the public entry points with hostile arrays (``tests/hostile.py``): each call
either answers exactly as the numpy reference (or torch) does, or raises a documented
exception (``ValueError``, ``TypeError``, ``IndexError``, ``MemoryError``). A
``PanicException`` (a ``BaseException``), a ``SystemError``, a crash or a hang fails.

Sizes are small so that CI runs every property at the ``fast`` profile; ``HYPOTHESIS_PROFILE=
slow`` runs a thousand examples of each.
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
import pytest
import recengine
from hostile import ALLOWED, hostile_arrays, index_arrays
from hypothesis import given, note
from hypothesis import strategies as st
from recengine import EmbeddingCollection, EmbeddingTable
from recengine.cache import CachedTable, ExpertCache
from recengine.reference import pool_backward_reference, pool_reference

ROWS, DIM = 10, 5
# Casting a hostile float64 past float32's range warns (numpy's cast); the values are infinite
# then, as in torch, which is what the properties compare.
pytestmark = pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")
STORAGE = ("fp32", "fp16", "bf16", "int8", "int4")
MODES = st.sampled_from(["sum", "mean", "max", "median"])
PADDING = st.one_of(st.none(), st.integers(-ROWS - 2, ROWS + 2),
                    st.sampled_from([2**63 - 1, -(2**63), 2**63, 2**70]))


def _table(storage: str) -> EmbeddingTable:
    x = np.linspace(-2, 2, ROWS * DIM, dtype=np.float32).reshape(ROWS, DIM)
    return EmbeddingTable(x, dtype=storage)


TABLES = {s: _table(s) for s in STORAGE}


@st.composite
def bag_args(draw: Any, max_dims: int = 2) -> dict[str, Any]:
    """indices with offsets or lengths (or neither, or both), weights, mode, padding."""
    idx = draw(index_arrays(ROWS, dims=(0, max_dims)))
    how = draw(st.sampled_from(["offsets", "lengths", "none", "both", "offsets"]))
    bounds = index_arrays(12, dims=(0, 2), max_side=6)
    kw: dict[str, Any] = {"indices": idx}
    if how in ("offsets", "both"):
        kw["offsets"] = draw(bounds)
    if how in ("lengths", "both"):
        kw["lengths"] = draw(bounds)
    if draw(st.booleans()):
        kw["weights"] = draw(st.one_of(
            hostile_arrays(("float32", "float64", "float16"), max_dims=2, max_side=12),
            hostile_arrays(max_side=12)))
    kw["mode"] = draw(MODES)
    kw["padding_idx"] = draw(PADDING)
    kw["include_last_offset"] = draw(st.booleans()) if "offsets" in kw else False
    return kw


def _reference(values: np.ndarray, kw: dict[str, Any]) -> np.ndarray:
    """The numpy reference's answer for arguments the core accepted: it must accept them
    too (read as int64 indices and float32 weights, which the core converted)."""
    ref_kw = dict(kw)
    ref_kw["indices"] = np.asarray(kw["indices"]).astype(np.int64)
    for name in ("offsets", "lengths"):
        if name in kw:
            ref_kw[name] = np.asarray(kw[name]).astype(np.int64)
    if "weights" in kw:
        ref_kw["weights"] = np.asarray(kw["weights"]).astype(np.float32)
    if ref_kw["padding_idx"] is not None and ref_kw["padding_idx"] < 0:
        ref_kw["padding_idx"] += values.shape[0]
    return pool_reference(values, **ref_kw)


def _same(got: np.ndarray, want: np.ndarray) -> None:
    assert got.dtype == np.float32 and got.shape == want.shape, (got.shape, want.shape)
    np.testing.assert_allclose(got, want, rtol=2e-6, atol=2e-6)


@given(storage=st.sampled_from(STORAGE), kw=bag_args())
def test_table_lookup(storage: str, kw: dict[str, Any]) -> None:
    table = TABLES[storage]
    try:
        got = table.lookup(**kw)
    except ALLOWED as e:
        note(f"refused: {e!r}")
        return
    _same(got, _reference(table.to_numpy(), kw))


@given(kw=bag_args(), table=hostile_arrays(("float32", "float16", "float64", "int32",
                                              "object", "bool"), min_dims=0, max_dims=3,
                                             max_side=6))
def test_functional_embedding_bag(kw: dict[str, Any], table: np.ndarray) -> None:
    try:
        got = recengine.functional.embedding_bag(table, **{
            k: v for k, v in kw.items() if k != "lengths"})
    except ALLOWED as e:
        note(f"refused: {e!r}")
        return
    values = np.asarray(table, dtype=np.float32)
    _same(got, _reference(values, {k: v for k, v in kw.items() if k != "lengths"}))


@given(kw=bag_args(max_dims=1))
def test_sparse_lengths_sum(kw: dict[str, Any]) -> None:
    table = TABLES["fp32"].to_numpy()
    args = {k: v for k, v in kw.items() if k not in ("offsets", "include_last_offset")}
    args.setdefault("lengths", np.zeros(0, np.int64))
    try:
        got = recengine.functional.sparse_lengths_sum(table, **args)
    except ALLOWED as e:
        note(f"refused: {e!r}")
        return
    _same(got, _reference(table, args))


@given(kw=bag_args(max_dims=1),
       grad=hostile_arrays(("float32", "float64", "float16", "int64"), max_dims=3,
                           max_side=6))
def test_embedding_bag_backward(kw: dict[str, Any], grad: np.ndarray) -> None:
    args = {k: v for k, v in kw.items() if k != "lengths"}
    try:
        got = recengine.functional.embedding_bag_backward(grad, ROWS, **args)
    except ALLOWED as e:
        note(f"refused: {e!r}")
        return
    ref = dict(args)
    ref["indices"] = np.asarray(args["indices"]).astype(np.int64)
    if "offsets" in args:
        ref["offsets"] = np.asarray(args["offsets"]).astype(np.int64)
    if "weights" in args:
        ref["weights"] = np.asarray(args["weights"]).astype(np.float32)
    if ref["padding_idx"] is not None and ref["padding_idx"] < 0:
        ref["padding_idx"] += ROWS
    want = pool_backward_reference(np.asarray(grad, dtype=np.float32), ROWS, **ref)
    got = np.asarray(got.to_dense() if hasattr(got, "to_dense") else got)
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5)


@given(arr=hostile_arrays(max_dims=3, max_side=6), storage=st.sampled_from(STORAGE))
def test_table_from_any_array(arr: np.ndarray, storage: str) -> None:
    try:
        table = EmbeddingTable(arr, dtype=storage)
    except ALLOWED as e:
        note(f"refused: {e!r}")
        return
    assert table.shape == arr.shape
    if storage == "fp32":
        np.testing.assert_array_equal(table.to_numpy(), np.asarray(arr, dtype=np.float32))


@given(arr=hostile_arrays(max_dims=3, max_side=8), storage=st.sampled_from(STORAGE),
       dim=st.integers(-2, 8))
def test_table_from_raw_bytes(arr: np.ndarray, storage: str, dim: int) -> None:
    try:
        table = EmbeddingTable.from_raw(arr, storage, dim)
    except ALLOWED as e:
        note(f"refused: {e!r}")
        return
    assert arr.dtype == np.uint8
    np.testing.assert_array_equal(table.raw_rows(), arr)


@given(kws=st.lists(bag_args(max_dims=1), min_size=1, max_size=3),
       mode=MODES)
def test_collection_lookup(kws: list[dict[str, Any]], mode: str) -> None:
    tables = [TABLES[s] for s in STORAGE[:len(kws)]]
    lengths = [kw.get("lengths", np.zeros(0, np.int64)) for kw in kws]
    try:
        got = EmbeddingCollection(tables).lookup([kw["indices"] for kw in kws],
                                                 lengths=lengths, mode=mode)
    except ALLOWED as e:
        note(f"refused: {e!r}")
        return
    want = np.concatenate([
        _reference(t.to_numpy(), {"indices": kw["indices"], "lengths": ln, "mode": mode,
                                  "padding_idx": None})
        for t, kw, ln in zip(tables, kws, lengths)], axis=1)
    _same(got, want)


@given(kw=bag_args(max_dims=1), slots=st.integers(-1, 12))
def test_cached_table_lookup(kw: dict[str, Any], slots: int) -> None:
    args = {k: v for k, v in kw.items() if k != "padding_idx"}
    try:
        got = CachedTable(TABLES["int8"], slots=slots).lookup(**args)
    except ALLOWED as e:
        note(f"refused: {e!r}")
        return
    _same(got, _reference(TABLES["int8"].to_numpy(), {**args, "padding_idx": None}))


@given(blobs=hostile_arrays(max_dims=3, max_side=6), slots=st.integers(-1, 8),
       ids=index_arrays(6))
def test_expert_cache(blobs: np.ndarray, slots: int, ids: Any) -> None:
    try:
        cache = ExpertCache.from_array(blobs, slots=slots)
        with cache.batch(ids) as where:
            got = [cache.view(blobs.dtype, blobs.shape[1:])[s] for s in where]
    except ALLOWED as e:
        note(f"refused: {e!r}")
        return
    for g, i in zip(got, np.asarray(ids).reshape(-1)):
        np.testing.assert_array_equal(g, blobs[int(i)])


# ---------------------------------------------------------------------------------------------
# recengine.nn against torch


torch = pytest.importorskip("torch")


def _as_tensor(arr: Any) -> Optional[Any]:
    """A torch tensor of ``arr`` where torch has its dtype (else None)."""
    if arr is None:
        return None
    a = np.asarray(arr)
    if a.dtype.kind not in "iufb" or a.dtype in (np.uint16, np.uint32, np.uint64):
        return None
    return torch.from_numpy(np.array(a))


@given(kw=bag_args(), weight_dtype=st.sampled_from(["float32", "float16", "bfloat16"]),
       sparse=st.booleans())
def test_nn_embedding_bag_answers_as_torch(kw: dict[str, Any], weight_dtype: str,
                                           sparse: bool) -> None:
    import recengine.nn.functional as rnf

    inp = _as_tensor(kw["indices"])
    offsets = _as_tensor(kw.get("offsets"))
    psw = _as_tensor(kw.get("weights"))
    if inp is None or (kw.get("offsets") is not None and offsets is None) or \
            (kw.get("weights") is not None and psw is None):
        return  # torch has no tensor of that dtype
    if kw["mode"] == "max" and (offsets is None or offsets.numel() == 0 or inp.numel() == 0):
        return  # torch's own max kernel crashes on some of these; nothing to compare
    weight = torch.linspace(-2, 2, ROWS * DIM).reshape(ROWS, DIM).to(getattr(torch, weight_dtype))
    if psw is not None:
        psw = psw.to(weight.dtype)
    pad = kw["padding_idx"]
    args = (inp, weight, offsets, None, 2.0, False, kw["mode"], sparse, psw,
            kw["include_last_offset"], pad)
    try:
        want = torch.nn.functional.embedding_bag(*args)
    except Exception as theirs:
        with pytest.raises(type(theirs)):
            rnf.embedding_bag(*args)
        return
    got = rnf.embedding_bag(*args)
    assert got.dtype == want.dtype and got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-2 if weight_dtype != "float32" else 1e-5,
                               atol=1e-2 if weight_dtype != "float32" else 1e-5, equal_nan=True)

