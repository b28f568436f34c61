"""``recengine privacy``: the access-pattern attacks on MovieLens-100k, each run on the traces
of requests served through recengine (the access hook), never on the raw data.

1. **Identification** (``attack: "identification"``): users bucketed by the rows their static
   features read; per feature set, buckets and users alone in theirs (``metric:
   "one_anonymous"``, against the users ``baseline``) and the bucket-size histogram; again
   with the tables looked up obliviously (``defence: "scan"``: every row read each request).
2. **Attribute inference** (``"attribute_inference"``): gender and age group guessed from
   the item rows each user's requests read, by a classifier trained on the other users
   (k-fold): ``metric: "accuracy_gender"`` ... against the majority class; and the share of
   items read by a single (age, gender, occupation) bucket.
3. **Re-identification** (``"reidentification"``): for k = 1..``max_k`` recent items in a
   history feature, the share of users whose fingerprint is unique and the top-1 accuracy of
   matching the request ``gap`` later (``metric: "top1_k3"`` ..., baseline ``1 / users``).
4. **Hash inversion** (``"hash_inversion"``): ids hashed as ``(x + mask) mod P``; the share
   of random masks recovered from the row frequencies of ``n`` lookups, with the public
   popularity from the same period as the traffic (``drift: "none"``) or from the first half
   of the timeline against traffic from the second (``drift: "first_half"``, with the total
   variation distance between the two).

Every row has ``attack``, ``defence`` (``"none"``, or ``"scan"`` for identification),
``metric``, ``value`` and ``baseline``.

Example::

    >>> rows = list(iter_study(Config(attacks=("identification",))))  # doctest: +SKIP
    >>> [r["value"] for r in rows if r["metric"] == "one_anonymous"]  # doctest: +SKIP
    [326, 929]
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Any, Callable, Iterator, Optional, Sequence

import numpy as np

from .attacks import identify, infer_attribute, invert_hash, reidentify, single_bucket_items
from .movielens import MovieLens, load_movielens
from .serving import (
    per_user,
    serve_hashed,
    serve_histories,
    serve_ratings,
    serve_static,
    static_tables,
)

__all__ = ["ATTACKS", "Config", "config_dict", "iter_study", "plot_study", "summarize_study"]

#: The attacks, in the order they run.
ATTACKS: tuple[str, ...] = ("identification", "attribute_inference", "reidentification",
                            "hash_inversion")

_FEATURE_SETS = (("age", "gender", "occupation"), ("age", "gender", "occupation", "zip_code"))
_BUCKET = ("age", "gender", "occupation")


@dataclass
class Config:
    """What the study attacks.

    Args:
        data: the directory of ``ml-100k.user`` and ``ml-100k.inter`` (default: recbole's).
        attacks: which of :data:`ATTACKS` to run.
        folds: folds of the attribute classifier.
        max_k: re-identification for k = 1..max_k recent items.
        gap: re-identification matches the request this many requests after the
            fingerprint's.
        lookups: hash inversion's amounts of traffic observed.
        trials: random masks per amount.
        modulus: the hash's P (default: the smallest prime >= the items).
        seed: of the masks, windows and folds.
    """

    data: Optional[str] = None
    attacks: Sequence[str] = ATTACKS
    folds: int = 5
    max_k: int = 10
    gap: int = 1
    lookups: Sequence[int] = (10, 30, 100, 300, 1000, 3000, 10000)
    trials: int = 20
    modulus: int = 0
    seed: int = 0

    def __post_init__(self) -> None:
        unknown = [a for a in self.attacks if a not in ATTACKS]
        if unknown or not self.attacks:
            raise ValueError(f"unknown attacks {unknown}; expected some of "
                             f"{', '.join(ATTACKS)}")
        if self.folds < 2 or self.max_k < 1 or self.gap < 1 or self.trials < 1:
            raise ValueError("folds >= 2, max_k >= 1, gap >= 1 and trials >= 1")
        if not self.lookups or min(self.lookups) < 1:
            raise ValueError("lookups must be positive amounts")
        if self.data is not None and not os.path.isdir(self.data):
            raise ValueError(f"no directory {self.data!r}")


def config_dict(config: Config) -> dict[str, Any]:
    return asdict(config)


def _prime_at_least(n: int) -> int:
    def prime(k: int) -> bool:
        return k >= 2 and all(k % d for d in range(2, int(k ** 0.5) + 1))
    while not prime(n):
        n += 1
    return n


def _row(attack: str, metric: str, value: float, baseline: Optional[float],
         defence: str = "none", **extra: Any) -> dict[str, Any]:
    return {"attack": attack, "defence": defence, "metric": metric, "value": value,
            "baseline": baseline, **extra}


def _identification(ml: MovieLens) -> Iterator[dict[str, Any]]:
    for defence in ("none", "scan"):
        seen = serve_static(ml, static_tables(ml),
                            oblivious=None if defence == "none" else defence)
        for features in _FEATURE_SETS:
            r = identify(seen, features)
            label = "+".join(features)
            yield _row("identification", "one_anonymous", r.one_anonymous, r.users, defence,
                       features=label, buckets=r.buckets,
                       bucket_sizes={str(k): v for k, v in r.sizes.items()})


def _inference(ml: MovieLens, config: Config) -> Iterator[dict[str, Any]]:
    items = per_user(serve_ratings(ml))
    for attribute in ("gender", "age_group"):
        r = infer_attribute(items, "items", ml.labels(attribute), folds=config.folds,
                            seed=config.seed)
        yield _row("attribute_inference", f"accuracy_{attribute}", r.accuracy, r.baseline,
                   users=r.users, classes=list(r.classes))
    static = serve_static(ml, static_tables(ml))
    both = {u: {**static[u], **items[u]} for u in items if u in static}
    yield _row("attribute_inference", "single_bucket_items",
               single_bucket_items(both, "items", _BUCKET), None, bucket="+".join(_BUCKET))


def _reidentification(ml: MovieLens, config: Config,
                      tick: Callable[[], None]) -> Iterator[dict[str, Any]]:
    for k in range(1, config.max_k + 1):
        r = reidentify(serve_histories(ml, k), "history", gap=config.gap)
        yield _row("reidentification", f"top1_k{k}", r.accuracy, 1 / r.users, k=k,
                   users=r.users, unique=r.unique)
        tick()


def _hash_inversion(ml: MovieLens, config: Config) -> Iterator[dict[str, Any]]:
    modulus = config.modulus or _prime_at_least(ml.num_items)
    order = np.argsort(ml.ratings_time, kind="stable")
    half = order.size // 2
    late = np.bincount(ml.ratings_item[order[half:]], minlength=ml.num_items)
    early = np.bincount(ml.ratings_item[order[:half]], minlength=ml.num_items)
    tv = 0.5 * float(np.abs(late / late.sum() - early / early.sum()).sum())
    rng = np.random.default_rng(config.seed)
    for n in sorted(config.lookups):
        n = min(n, order.size - half)
        for drift, prior in (("none", late), ("first_half", early)):
            got, ranked = 0, []  # ranked: rank matching's share right, per mask
            for _ in range(config.trials):
                mask = int(rng.integers(0, modulus))
                start = int(rng.integers(half, order.size - n + 1))
                r = invert_hash(serve_hashed(ml, mask, modulus, order[start:start + n]),
                                "hashed", prior, modulus, true_mask=mask)
                got += r.mask == mask
                ranked.append(float("nan") if r.ranked is None else r.ranked)
            yield _row("hash_inversion", "mask_recovered", got / config.trials,
                       1 / modulus, lookups=n, drift=drift,
                       popularity_tv=0.0 if drift == "none" else tv,
                       rank_matched=float(np.mean(ranked)), modulus=modulus)


def iter_study(config: Config, status: Callable[[str], None] = lambda m: None,
               tick: Optional[Callable[[], None]] = None) -> Iterator[dict[str, Any]]:
    """The rows of each attack in :data:`ATTACKS` order (see the module)."""
    def step() -> None:
        if tick:
            tick()

    status("loading MovieLens-100k")
    ml = load_movielens(config.data)
    if "identification" in config.attacks:
        status("identification: serving every user's static features")
        yield from _identification(ml)
        step()
    if "attribute_inference" in config.attacks:
        status(f"attribute inference: every rating served, {config.folds}-fold classifiers")
        yield from _inference(ml, config)
        step()
    if "reidentification" in config.attacks:
        status(f"re-identification: histories of k = 1..{config.max_k} items")
        yield from _reidentification(ml, config, step)
    if "hash_inversion" in config.attacks:
        status(f"hash inversion: {config.trials} masks at each of {len(config.lookups)} "
               f"amounts of traffic")
        yield from _hash_inversion(ml, config)
        step()


def summarize_study(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """``one_anonymous`` by feature set, ``accuracy`` and ``baseline`` by attribute,
    ``single_bucket_items``, ``top1`` and ``unique`` by k, and the fewest lookups that
    recovered every mask by drift (None where none did)."""
    out: dict[str, Any] = {}
    for r in rows:
        if r["attack"] == "identification":
            key = r["features"] if r["defence"] == "none" else f"{r['features']} ({r['defence']})"
            out.setdefault("one_anonymous", {})[key] = r["value"]
        elif r["metric"].startswith("accuracy_"):
            out.setdefault("accuracy", {})[r["metric"][9:]] = (r["value"], r["baseline"])
        elif r["metric"] == "single_bucket_items":
            out["single_bucket_items"] = r["value"]
        elif r["attack"] == "reidentification":
            out.setdefault("top1", {})[str(r["k"])] = r["value"]
            out.setdefault("unique", {})[str(r["k"])] = r["unique"]
        elif r["attack"] == "hash_inversion":
            best = out.setdefault("lookups_to_recover", {})
            if r["value"] == 1.0 and best.get(r["drift"]) is None:
                best[r["drift"]] = r["lookups"]
            best.setdefault(r["drift"], None)
    return out


def plot_study(rows: Sequence[dict[str, Any]], path: str, config: Config) -> None:
    """Re-identification accuracy and fingerprint uniqueness by k, and the share of masks
    recovered by traffic observed, with and without drift."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    re = [r for r in rows if r["attack"] == "reidentification"]
    if re:
        ks = [r["k"] for r in re]
        axes[0].plot(ks, [100 * r["value"] for r in re], "o-", label="next request matched")
        axes[0].plot(ks, [100 * r["unique"] for r in re], "s--", label="fingerprint unique")
        axes[0].set_xlabel("recent items in the history feature (k)")
        axes[0].set_ylabel("users (%)")
        axes[0].set_title("re-identification, MovieLens-100k")
        axes[0].legend()
    else:
        axes[0].axis("off")
    hi = [r for r in rows if r["attack"] == "hash_inversion"]
    if hi:
        for drift, style in (("none", "o-"), ("first_half", "s--")):
            pts = [r for r in hi if r["drift"] == drift]
            axes[1].plot([r["lookups"] for r in pts], [100 * r["value"] for r in pts], style,
                         label=f"prior: {'same period' if drift == 'none' else 'first half'}")
        axes[1].set_xscale("log")
        axes[1].set_xlabel("lookups observed")
        axes[1].set_ylabel("masks recovered (%)")
        axes[1].set_title("hash inversion by frequency")
        axes[1].legend()
    else:
        axes[1].axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
