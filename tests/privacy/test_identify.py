"""Identification from static features' rows: hand-checked buckets, the MovieLens-100k loader,
and the published MovieLens figures coming out of served traces."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from recengine.privacy import identify, load_movielens, serve_static, static_tables

USERS = """user_id:token\tage:token\tgender:token\toccupation:token\tzip_code:token
1\t24\tM\ttechnician\t85711
2\t24\tM\ttechnician\t94043
3\t53\tF\tother\t94043
4\t9\tF\tstudent\t10001
"""
INTER = """user_id:token\titem_id:token\trating:float\ttimestamp:float
1\t3\t4\t100
2\t1\t5\t50
4\t2\t1\t70
"""


def _write(tmp_path: Path, users: str = USERS, inter: str = INTER) -> Path:
    (tmp_path / "ml-100k.user").write_text(users)
    (tmp_path / "ml-100k.inter").write_text(inter)
    return tmp_path


def test_identify_buckets_by_hand() -> None:
    seen = {1: {"a": np.array([0]), "b": np.array([1])},
            2: {"a": np.array([0]), "b": np.array([1])},
            3: {"a": np.array([0]), "b": np.array([2])},
            4: {"a": np.array([5])}}  # read no row of b
    r = identify(seen, ["a", "b"])
    assert (r.users, r.buckets, r.one_anonymous, r.sizes) == (4, 3, 2, {1: 2, 2: 1})
    assert r.one_anonymous_share == 0.5
    assert identify(seen, ["a"]).one_anonymous == 1
    with pytest.raises(ValueError, match="at least one table"):
        identify(seen, [])


def test_the_loader_and_a_tiny_dataset_served(tmp_path: Path) -> None:
    ml = load_movielens(_write(tmp_path))
    assert ml.num_users == 4 and ml.num_items == 3
    assert ml.vocab["age"] == ["9", "24", "53"]  # by number, not as text
    assert ml.attribute("occupation").tolist() == ["technician", "technician", "other",
                                                   "student"]
    assert ml.ratings_user.tolist() == [0, 1, 3] and ml.ratings_item.tolist() == [2, 0, 1]
    seen = serve_static(ml, static_tables(ml, dim=4))
    assert sorted(seen) == [1, 2, 3, 4]  # requests tagged by user id
    r = identify(seen, ["age", "gender", "occupation"])
    assert (r.buckets, r.one_anonymous) == (3, 2)  # users 1 and 2 share a bucket
    assert identify(seen, ["age", "gender", "occupation", "zip_code"]).one_anonymous == 4
    part = serve_static(ml, static_tables(ml, dim=4), users=[0, 1])
    assert sorted(part) == [1, 2]
    with pytest.raises(ValueError, match="unknown static features"):
        static_tables(ml, features=["income"])


def test_malformed_files_are_refused_clearly(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        load_movielens(tmp_path / "nowhere")
    bad = USERS.replace("\tzip_code:token", "")
    with pytest.raises(ValueError, match="fields"):
        load_movielens(_write(tmp_path, users=bad))
    with pytest.raises(ValueError, match="lacks the columns"):
        load_movielens(_write(tmp_path, users="user_id:token\tage:token\n1\t3\n"))
    with pytest.raises(ValueError, match="unknown user"):
        load_movielens(_write(tmp_path, inter=INTER + "99\t1\t1\t1\n"))
    with pytest.raises(ValueError, match="below 1"):
        load_movielens(_write(tmp_path, inter=INTER + "1\t0\t1\t1\n"))


@pytest.mark.skipif(importlib.util.find_spec("recbole") is None, reason="needs recbole")
def test_movielens_figures_come_out_of_the_traces() -> None:
    ml = load_movielens()
    assert (ml.num_users, ml.num_items, ml.ratings_user.size) == (943, 1682, 100_000)
    seen = serve_static(ml, static_tables(ml))
    assert len(seen) == 943
    r = identify(seen, ["age", "gender", "occupation"])
    assert (r.buckets, r.one_anonymous) == (526, 326)
    r = identify(seen, ["age", "gender", "occupation", "zip_code"])
    assert (r.buckets, r.one_anonymous) == (936, 929)


def test_attribute_inference_learns_a_planted_signal() -> None:
    """Users of group "a" read rows 0-9, of group "b" rows 10-19 (plus noise rows): the
    classifier, never shown the user it guesses, gets nearly all right; with no signal it does
    no better than the majority class can by much."""
    from recengine.privacy import infer_attribute, single_bucket_items

    rng = np.random.default_rng(0)
    seen, labels, flat = {}, {}, {}
    for u in range(60):
        group = "a" if u % 3 else "b"
        base = 0 if group == "a" else 10
        rows = np.concatenate([base + rng.choice(10, 4, replace=False),
                               20 + rng.choice(20, 3, replace=False)])
        seen[u] = {"items": rows}
        flat[u] = {"items": 20 + rng.choice(20, 5, replace=False)}
        labels[u] = group
    r = infer_attribute(seen, "items", labels, folds=4)
    assert r.users == 60 and r.classes == ("a", "b")
    assert r.accuracy >= 0.95 and abs(r.baseline - 40 / 60) < 0.1
    noise = infer_attribute(flat, "items", labels, folds=4)
    assert noise.accuracy <= r.baseline + 0.2
    with pytest.raises(ValueError, match="folds"):
        infer_attribute(seen, "items", labels, folds=1)
    with pytest.raises(ValueError, match="penalties"):
        infer_attribute(seen, "items", labels, penalties=())
    # rows 0-19 each read by one group only, 20-29 by everyone: 20 of 30 give the bucket away
    both = {u: {"items": np.concatenate([seen[u]["items"][:4], np.arange(20, 30)]),
                "g": np.array([0 if labels[u] == "a" else 1])} for u in seen}
    assert single_bucket_items(both, "items", ["g"]) == pytest.approx(20 / 30)
    with pytest.raises(ValueError, match="no request read"):
        single_bucket_items(both, "nothing", ["g"])


def test_age_groups_and_labels(tmp_path: Path) -> None:
    ml = load_movielens(_write(tmp_path))
    assert ml.attribute("age_group").tolist() == ["<25", "<25", "45+", "<25"]
    assert ml.labels("gender") == {1: "M", 2: "M", 3: "F", 4: "F"}
    with pytest.raises(ValueError, match="unknown attribute"):
        ml.attribute("income")


def test_reidentification_by_hand() -> None:
    from recengine.privacy import reidentify

    # three users, disjoint histories: every later request finds its user
    seen = {(u, float(t)): {"h": np.array([10 * u + t, 10 * u + t + 1])}
            for u in range(3) for t in range(4)}
    r = reidentify(seen, "h")
    assert (r.users, r.accuracy, r.unique) == (3, 1.0, 1.0)
    # the same history for everyone: a three-way tie, 1/3 each
    same = {(u, float(t)): {"h": np.array([t, t + 1])} for u in range(3) for t in range(4)}
    r = reidentify(same, "h")
    assert r.accuracy == pytest.approx(1 / 3) and r.unique == 0.0
    with pytest.raises(ValueError, match="split"):
        reidentify(seen, "h", split=1.0)
    with pytest.raises(ValueError, match="no user has"):
        reidentify(seen, "h", gap=10)


def test_histories_served_are_the_k_items_before(tmp_path: Path) -> None:
    from recengine.privacy import serve_histories

    inter = INTER + "1\t2\t3\t200\n1\t1\t3\t300\n1\t3\t3\t300\n"  # user 1: 3@100, 2@200, {1,3}@300
    ml = load_movielens(_write(tmp_path, inter=inter))
    seen = serve_histories(ml, k=2)
    # items are rows item_id - 1; most recent first
    assert seen[(1, 200.0)]["history"].tolist() == [2]
    assert seen[(1, 300.0)]["history"].tolist() == [1, 2]
    assert (1, 100.0) not in seen and (2, 50.0) not in seen  # first requests: no history
    with pytest.raises(ValueError, match="k >= 1"):
        serve_histories(ml, k=0)


def test_hash_inversion_recovers_the_mask_from_frequencies() -> None:
    from recengine.privacy import invert_hash

    rng = np.random.default_rng(3)
    n, modulus, mask = 50, 53, 17
    prior = 1.0 / np.arange(1, n + 1) ** 1.2  # Zipf popularity of ids 0..49
    ids = rng.choice(n, 2000, p=prior / prior.sum())
    seen = {i: {"h": np.array([(x + mask) % modulus])} for i, x in enumerate(ids)}
    r = invert_hash(seen, "h", prior, modulus, true_mask=mask)
    assert r.mask == mask and r.lookups == 2000 and r.margin > 1.0
    assert r.ranked is not None and 0 <= r.ranked <= 1
    # every row read equally, every id equally popular: no shift stands out
    flat = {x: {"h": np.array([(x + mask) % modulus])} for x in range(modulus)}
    assert invert_hash(flat, "h", np.ones(modulus), modulus).margin == pytest.approx(1.0)
    with pytest.raises(ValueError, match="prior"):
        invert_hash(seen, "h", np.ones(60), modulus)
    with pytest.raises(ValueError, match="outside"):
        invert_hash({0: {"h": np.array([99])}}, "h", prior, modulus)
    with pytest.raises(ValueError, match="no request read"):
        invert_hash(seen, "x", prior, modulus)


def test_hashed_serving_reads_shifted_rows(tmp_path: Path) -> None:
    from recengine.privacy import serve_hashed

    ml = load_movielens(_write(tmp_path))
    seen = serve_hashed(ml, mask=2, modulus=5)
    # ratings in time order: item 1 (row 0) at 50, item 2 (row 1) at 70, item 3 (row 2) at 100
    assert [seen[k]["hashed"].tolist() for k in sorted(seen, key=lambda k: k)] == [[4], [2], [3]]
    with pytest.raises(ValueError, match="modulus"):
        serve_hashed(ml, mask=0, modulus=2)
