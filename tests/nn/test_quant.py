"""recengine.nn.QuantEmbeddingBag: int8/int4/fp16 rows pooled by the core equal torch's
pooling of the same dequantized rows, over the module options; the quantization error is
bounded; state_dict, compile and bad input."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

torch = pytest.importorskip("torch")

import recengine.nn as rnn  # noqa: E402
from recengine.reference import dequantize_rowwise_reference  # noqa: E402


@given(dtype=st.sampled_from(rnn.QUANT_DTYPES), mode=st.sampled_from(["sum", "mean", "max"]),
       num=st.integers(1, 50), dim=st.sampled_from([1, 2, 3, 8, 15, 16, 33]),
       padding=st.booleans(), two_d=st.booleans(), weighted=st.booleans(),
       include_last=st.booleans(), seed=st.integers(0, 2**16))
def test_equals_torch_on_the_dequantized_rows(dtype: str, mode: str, num: int, dim: int,
                                              padding: bool, two_d: bool, weighted: bool,
                                              include_last: bool, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    bag = torch.nn.EmbeddingBag(num, dim, mode=mode, padding_idx=0 if padding else None,
                                include_last_offset=include_last and not two_d)
    with torch.no_grad():
        bag.weight.copy_(torch.randn(num, dim, generator=g))
    q = rnn.QuantEmbeddingBag.from_float(bag, dtype)
    deq = q.dequantize()
    if two_d:
        x, o = torch.randint(0, num, (5, 3), generator=g), None
    else:
        x = torch.randint(0, num, (9,), generator=g)
        o = torch.tensor([0, 2, 2, 7, 9] if include_last else [0, 2, 2, 7])
    psw = torch.randn(x.shape, generator=g) if weighted and mode == "sum" else None
    got = q(x, o, per_sample_weights=psw)
    want = torch.nn.functional.embedding_bag(x, deq, o, mode=mode, per_sample_weights=psw,
                                             padding_idx=bag.padding_idx,
                                             include_last_offset=bag.include_last_offset)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_dequantized_rows_are_the_reference_format() -> None:
    torch.manual_seed(0)
    bag = torch.nn.EmbeddingBag(40, 13)
    for dtype, bits in (("int8", 8), ("int4", 4)):
        q = rnn.QuantEmbeddingBag.from_float(bag, dtype)
        ref = dequantize_rowwise_reference(q.packed_weight.numpy(), bits, 13)
        np.testing.assert_allclose(q.dequantize().numpy(), ref, rtol=1e-6, atol=1e-6)
        w = bag.weight.detach()
        step = (w.max(dim=1).values - w.min(dim=1).values) / (2**bits - 1)
        err = (q.dequantize() - w).abs().max(dim=1).values
        assert torch.all(err <= step / 2 + 1e-3)
    fp16 = rnn.QuantEmbeddingBag.from_float(bag, "fp16")
    torch.testing.assert_close(fp16.dequantize(), bag.weight.detach().half().float())


def test_state_dict_round_trip_and_compile() -> None:
    bag = torch.nn.EmbeddingBag(100, 16, mode="sum")
    q = rnn.QuantEmbeddingBag.from_float(bag, "int4")
    assert list(q.state_dict()) == ["packed_weight"]
    q2 = rnn.QuantEmbeddingBag(100, 16, "int4", mode="sum")
    q2.load_state_dict(q.state_dict())
    x, o = torch.tensor([1, 5, 7, 99]), torch.tensor([0, 3])
    assert torch.equal(q2(x, o), q(x, o))
    compiled = torch.compile(q, fullgraph=True, backend="aot_eager")
    assert torch.equal(compiled(x, o), q(x, o))
    converted = rnn.QuantEmbeddingBag.from_float(rnn.EmbeddingBag.from_pretrained(
        bag.weight.detach(), mode="sum"), "int8")
    torch.testing.assert_close(converted(x, o), bag(x, o), rtol=0.05, atol=0.05)


@pytest.mark.parametrize(
    "call, error",
    [
        (lambda q: q(torch.tensor([[1, 2]]), torch.tensor([0])), ValueError),
        (lambda q: q(torch.tensor([1, 2])), ValueError),
        (lambda q: q(torch.tensor([1, 10]), torch.tensor([0])), IndexError),
        (lambda q: q(torch.tensor([1, -1]), torch.tensor([0])), IndexError),
    ],
)
def test_bad_input(call: Any, error: type) -> None:
    q = rnn.QuantEmbeddingBag.from_float(torch.nn.EmbeddingBag(10, 4, mode="sum"), "int8")
    with pytest.raises(error):
        call(q)


def test_bad_construction() -> None:
    mean = rnn.QuantEmbeddingBag(10, 4, "int8", mode="mean")
    with pytest.raises(NotImplementedError):
        mean(torch.tensor([1, 2]), torch.tensor([0]), per_sample_weights=torch.ones(2))
    with pytest.raises(ValueError):
        rnn.QuantEmbeddingBag(10, 4, "fp32")
    with pytest.raises(ValueError):
        rnn.QuantEmbeddingBag.from_float(torch.nn.EmbeddingBag(10, 4, max_norm=1.0), "int8")
    with pytest.raises(TypeError):
        rnn.QuantEmbeddingBag.from_float(torch.nn.Linear(2, 2), "int8")  # type: ignore[arg-type]
