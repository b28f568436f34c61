"""The eight DeepRecInfra models: shapes, embeddings against a numpy reference, AUGRU against the
GRU, seeding, weights round trip, and bad input."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch")

import recengine.models as rm  # noqa: E402
from recengine.models import AUGRU, Batch  # noqa: E402
from recengine.nn import convert  # noqa: E402
from recengine.shapes import model_tables  # noqa: E402

SCALE = 1e-3  # every table at its 1024-row floor or a little above
OUT = {"rmc1": 1, "rmc2": 1, "rmc3": 1, "wnd": 1, "mtwnd": 3, "ncf": 1, "din": 2, "dien": 2}


@pytest.mark.parametrize("name", rm.model_names())
def test_every_model_scores_a_batch(name: str) -> None:
    model = rm.build(name, scale=SCALE)
    assert [t.num_rows for t in model.tables] == [t.num_rows for t in model_tables(name, SCALE)]
    batch = model.sample_batch(5, distribution="zipf", seed=3)
    with torch.inference_mode():
        y = model(batch)
    assert y.shape == (5, OUT[name]) and torch.isfinite(y).all()
    assert ((y >= 0) & (y <= 1)).all()
    if OUT[name] == 2:  # softmax heads
        torch.testing.assert_close(y.sum(dim=1), torch.ones(5))
    # The dense part on the looked-up vectors is the whole model (a server may run the two
    # apart), and it does not read the tables.
    with torch.inference_mode():
        vectors = model.embed(batch)
        for bag in (model.embeddings, model.sequence_tables):
            if bag is not None:
                bag.to("meta")
        torch.testing.assert_close(model.dense_part(vectors, batch.dense), y)


def test_a_model_without_a_dense_part_says_so() -> None:
    from recengine.models.base import RecModel

    m = RecModel(model_tables("ncf", SCALE), [], 0)
    with pytest.raises(NotImplementedError, match="dense part"):
        m.dense_part({}, torch.zeros(1, 0))


def test_seeded_weights_repeat_and_differ_across_seeds() -> None:
    a, b, c = (rm.build("rmc1", scale=SCALE, seed=s) for s in (1, 1, 2))
    batch = a.sample_batch(4, seed=0)
    with torch.inference_mode():
        assert torch.equal(a(batch), b(batch))
        assert not torch.equal(a(batch), c(batch))


@settings(max_examples=15, deadline=None)
@given(st.integers(1, 9), st.integers(0, 2**31 - 1))
def test_pooled_and_sequence_embeddings_match_numpy(size: int, seed: int) -> None:
    model = _din
    batch = model.sample_batch(size, distribution="zipf", seed=seed)
    emb = model.embed(batch)
    for f, ids in zip(model.features, batch.sparse):
        w = model._weight(f.table).detach().numpy()
        rows = w[ids.numpy()]  # [B, L, D]
        want = rows if f.sequence else rows.sum(axis=1)
        np.testing.assert_allclose(emb[f.name].detach().numpy(), want, rtol=1e-5, atol=1e-6)


_din = rm.build("din", scale=SCALE, history=4)


def test_augru_with_full_attention_is_the_gru_and_attention_gates_the_update() -> None:
    torch.manual_seed(0)
    aug = AUGRU(6, 5)
    x = torch.randn(3, 7, 6)
    h = torch.zeros(3, 5)
    for t in range(7):
        h = aug.cell(x[:, t], h)
    torch.testing.assert_close(aug(x, torch.ones(3, 7)), h)
    # No attention anywhere: no update, the state stays at zero.
    torch.testing.assert_close(aug(x, torch.zeros(3, 7)), torch.zeros(3, 5))


def test_batch_split_covers_every_sample_in_order() -> None:
    model = rm.build("ncf", scale=SCALE)
    batch = model.sample_batch(10, seed=0)
    parts = batch.split(4)
    assert [len(p) for p in parts] == [4, 4, 2]
    for i, s in enumerate(batch.sparse):
        assert torch.equal(torch.cat([p.sparse[i] for p in parts]), s)
    with pytest.raises(ValueError, match="at least one sample"):
        batch.split(0)


def test_weights_load_from_a_file(tmp_path) -> None:
    st_torch = pytest.importorskip("safetensors.torch")
    a = rm.build("wnd", scale=SCALE, seed=1)
    path = tmp_path / "wnd.safetensors"
    st_torch.save_file({k: v.contiguous() for k, v in a.state_dict().items()}, str(path))
    b = rm.build("wnd", scale=SCALE, seed=2, weights=path)
    batch = a.sample_batch(3, seed=0)
    with torch.inference_mode():
        assert torch.equal(a(batch), b(batch))
    with pytest.raises(FileNotFoundError, match="no weights file"):
        rm.build("wnd", scale=SCALE, weights=tmp_path / "missing.pt")


def test_bad_models_options_and_inputs_raise_clear_errors() -> None:
    with pytest.raises(ValueError, match="unknown model"):
        rm.build("rmc9")
    with pytest.raises(ValueError, match="scale"):
        rm.build("rmc1", scale=0)
    with pytest.raises(ValueError, match="at least one task"):
        rm.build("mtwnd", scale=SCALE, tasks=0)
    with pytest.raises(ValueError, match="bad option"):
        rm.build("rmc1", scale=SCALE, colour="red")
    model = rm.build("rmc1", scale=SCALE)
    batch = model.sample_batch(2, seed=0)
    with pytest.raises(ValueError, match="sparse features"):
        model(Batch(batch.dense, batch.sparse[:3]))
    with pytest.raises(ValueError, match="shape"):
        model(Batch(batch.dense, [s[:, :2] for s in batch.sparse]))
    bad = [s.clone() for s in batch.sparse]
    bad[0][0, 0] = model.tables[0].num_rows
    # torch's exception (as torch's model would raise), caused by the core's clear one.
    with pytest.raises(RuntimeError) as refused:
        model(Batch(batch.dense, bad))
    assert isinstance(refused.value.__cause__, IndexError)
    assert "out of range" in str(refused.value.__cause__)


@pytest.mark.parametrize("name", rm.model_names())
def test_torch_embeddings_build_the_same_model(name: str) -> None:
    """embeddings="torch": plain torch.nn.EmbeddingBag tables with the same state_dict keys,
    so the recengine route's weights load and both score a batch alike; convert() of it is the
    drop-in route."""
    ours = rm.build(name, scale=SCALE)
    theirs = rm.build(name, scale=SCALE, embeddings="torch")
    assert theirs.build_args["embeddings"] == "torch"
    bags = [m for m in theirs.modules() if isinstance(m, torch.nn.EmbeddingBag)]
    assert bags and all(type(m) is torch.nn.EmbeddingBag for m in bags)
    assert set(theirs.state_dict()) == set(ours.state_dict())
    theirs.load_state_dict(ours.state_dict())
    dropin = convert(rm.build(name, scale=SCALE, embeddings="torch"))
    dropin.load_state_dict(ours.state_dict())
    assert not [m for m in dropin.modules() if type(m) is torch.nn.EmbeddingBag]
    batch = ours.sample_batch(5, seed=3)
    with torch.no_grad():
        want = ours(batch)
        for model in (theirs, dropin):
            torch.testing.assert_close(model(batch), want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("embeddings", ["recengine", "torch"])
def test_sparse_option_gives_sparse_embedding_gradients(embeddings: str) -> None:
    model = rm.build("din", scale=SCALE, embeddings=embeddings, sparse=True).train()
    model(model.sample_batch(4, seed=1)).sum().backward()
    grads = [m.weight.grad for m in model.modules() if isinstance(m, torch.nn.EmbeddingBag)]
    assert grads and all(g is not None and g.is_sparse for g in grads)
    dense = rm.build("din", scale=SCALE, embeddings=embeddings).train()
    dense(dense.sample_batch(4, seed=1)).sum().backward()
    assert all(not m.weight.grad.is_sparse for m in dense.modules()
               if isinstance(m, torch.nn.EmbeddingBag))


def test_unknown_embeddings_route_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="embeddings must be one of"):
        rm.build("rmc1", scale=SCALE, embeddings="fbgemm")
