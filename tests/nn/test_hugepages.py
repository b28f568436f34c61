"""Weights on huge pages: recengine.nn.hugepages and the modules that use it."""

from __future__ import annotations

import copy
import gc
import io

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import recengine.nn as rnn  # noqa: E402
from recengine.nn import hugepages  # noqa: E402

needs_thp = pytest.mark.skipif(not hugepages.huge_pages_available(),
                               reason="transparent huge pages are off here")
BIG = (4096, 256)  # 4 MiB of float32


@needs_thp
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_empty_is_an_ordinary_tensor_on_huge_pages(dtype: torch.dtype) -> None:
    t = hugepages.empty(BIG, dtype)
    assert t.shape == BIG and t.dtype == dtype and t.is_contiguous()
    assert t.data_ptr() % hugepages.HUGE_PAGE == 0
    assert hugepages.on_huge_pages(t)
    t.fill_(3)
    assert bool((t == 3).all())
    assert hugepages.on_huge_pages(t[100:200])  # a view inside the mapping
    assert not hugepages.on_huge_pages(torch.empty(BIG, dtype=dtype))


def test_small_tensors_stay_put() -> None:
    t = torch.rand(10, 4)
    assert hugepages.to_huge_pages(t) is t
    assert not hugepages.on_huge_pages(hugepages.empty((10, 4)))


@needs_thp
def test_to_huge_pages_copies_once() -> None:
    t = torch.rand(BIG)
    moved = hugepages.to_huge_pages(t)
    assert moved is not t and hugepages.on_huge_pages(moved)
    assert torch.equal(moved, t)
    assert hugepages.to_huge_pages(moved) is moved
    strided = torch.rand(BIG[1], BIG[0]).t()  # non-contiguous in, contiguous out
    assert torch.equal(hugepages.to_huge_pages(strided), strided)


@needs_thp
def test_a_freed_mapping_is_forgotten() -> None:
    t = hugepages.empty(BIG)
    key = t.data_ptr()
    assert key in hugepages._MAPPINGS
    del t
    gc.collect()
    assert key not in hugepages._MAPPINGS


@needs_thp
def test_modules_allocate_and_convert_onto_huge_pages() -> None:
    bag = rnn.EmbeddingBag(*BIG, mode="sum", padding_idx=3)
    assert hugepages.on_huge_pages(bag.weight) and not bag.weight[3].any()
    ebc = rnn.EmbeddingBagCollection([rnn.EmbeddingBagConfig(*BIG, "t", feature_names=["f"])])
    assert hugepages.on_huge_pages(ebc.embedding_bags["t"].weight)

    given = torch.rand(BIG)
    shared = rnn.EmbeddingBag.from_pretrained(given)  # handed in: shared, as in torch
    assert shared.weight.data_ptr() == given.data_ptr()

    model = torch.nn.Sequential(torch.nn.EmbeddingBag(*BIG, mode="sum"))
    param = model[0].weight
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    before = param.detach().clone()
    rnn.convert(model)
    assert model[0].weight is param and hugepages.on_huge_pages(param)
    assert torch.equal(param.detach(), before)
    out = model[0](torch.tensor([1, 2, 3]), torch.tensor([0]))
    out.sum().backward()
    opt.step()  # the optimizer holds the same Parameter and updates the moved storage
    assert not torch.equal(param.detach()[1], before[1])

    kept = torch.nn.Sequential(torch.nn.EmbeddingBag(*BIG))
    ptr = kept[0].weight.data_ptr()
    rnn.convert(kept, huge_pages=False)
    assert kept[0].weight.data_ptr() == ptr


@needs_thp
def test_huge_page_weights_save_load_copy_and_pool_as_torch() -> None:
    bag = rnn.EmbeddingBag(*BIG, mode="sum")
    ref = torch.nn.EmbeddingBag(*BIG, mode="sum")
    ref.load_state_dict(bag.state_dict())
    ids = torch.from_numpy(np.random.default_rng(0).integers(0, BIG[0], 64))
    offsets = torch.arange(0, 64, 8)
    with torch.no_grad():
        torch.testing.assert_close(bag(ids, offsets), ref(ids, offsets))
    buf = io.BytesIO()
    torch.save(bag.state_dict(), buf)
    buf.seek(0)
    loaded = rnn.EmbeddingBag(*BIG, mode="sum")
    loaded.load_state_dict(torch.load(buf))  # copied into its own huge-page weight
    assert hugepages.on_huge_pages(loaded.weight)
    assert torch.equal(loaded.weight, bag.weight)
    twin = copy.deepcopy(bag)
    assert torch.equal(twin.weight, bag.weight) and twin.weight.data_ptr() != bag.weight.data_ptr()


def test_the_huge_pages_hint_changes_no_result() -> None:
    from recengine import _core

    rng = np.random.default_rng(1)
    table = rng.random((300, 40), dtype=np.float32)
    ids, offsets = rng.integers(0, 300, 90), np.array([0, 5, 5, 60])
    plain = _core.pool_array(table, ids, offsets, None, None, "sum", None, False)
    hinted = _core.pool_array(table, ids, offsets, None, None, "sum", None, False,
                              huge_pages=True)
    np.testing.assert_array_equal(plain, hinted)
    np.testing.assert_allclose(plain[1], 0)
    np.testing.assert_allclose(plain[0], table[ids[:5]].sum(0), rtol=1e-5)
