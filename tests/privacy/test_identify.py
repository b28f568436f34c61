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
