"""``recengine privacy``: the access-pattern attacks on MovieLens-100k, each run on the traces
of requests served through recengine (the access hook), never on the raw data.

1. **Identification** (``attack: "identification"``): users bucketed by the rows their static
   features read; per feature set, buckets and users alone in theirs (``metric:
   "one_anonymous"``, against the users ``baseline``) and the bucket-size histogram, for
   traces that never change (no defence, the scan); and for every defence the users a
   second session's key singles out in the first (``metric: "linked_alone"``, ``sessions``;
   padding also with ``sessions`` linked sessions intersected).
2. **Attribute inference** (``"attribute_inference"``): gender and age group guessed from
   the item rows each user's requests read, by a classifier trained on the other users
   (k-fold): ``metric: "accuracy_gender"`` ... against the majority class; and the share of
   items read by a single (age, gender, occupation) bucket.
3. **Re-identification** (``"reidentification"``): for k = 1..``max_k`` recent items in a
   history feature, the share of users whose fingerprint is unique and the top-1 accuracy of
   matching the request ``gap`` later (``metric: "top1_k3"`` ..., baseline ``1 / users``);
   the defences at k = 5.
4. **Hash inversion** (``"hash_inversion"``): ids hashed as ``(x + mask) mod P``; the share
   of random masks recovered from the row frequencies of ``n`` lookups, with the public
   popularity from the same period as the traffic (``drift: "none"``) or from the first half
   of the timeline against traffic from the second (``drift: "first_half"``, with the total
   variation distance between the two); the defences with the same-period prior.
5. **Cost** (``"cost"``): each defence's lookups/s against the plain lookup over table sizes
   and batches (:mod:`.cost`).

The attacks run again on the traces of each of ``defences``: ``"oram"`` and ``"pad"`` for all
four, ``"scan"`` for identification only (its trace is every row for every request, the same
whatever the request). Every row has ``attack``, ``defence`` (``"none"``, ``"scan"``,
``"oram"``, ``"pad"``), ``metric``, ``value`` and ``baseline``; cost rows also ``rows``,
``batch``, ``lookups_per_s`` and ``slowdown``.

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

from ..table import Pad
from .attacks import (
    identify,
    infer_attribute,
    intersect_sessions,
    invert_hash,
    link,
    reidentify,
    single_bucket_items,
)
from .cost import DEFENCES, crossover, measure
from .movielens import MovieLens, load_movielens
from .serving import (
    per_user,
    serve_hashed,
    serve_histories,
    serve_ratings,
    serve_static,
    static_tables,
)

__all__ = ["ATTACKS", "PARTS", "Config", "config_dict", "iter_study", "plot_study",
           "summarize_study"]

#: The attacks, in the order they run.
ATTACKS: tuple[str, ...] = ("identification", "attribute_inference", "reidentification",
                            "hash_inversion")
#: What the study can run: the attacks, then the defences' cost.
PARTS: tuple[str, ...] = (*ATTACKS, "cost")

_FEATURE_SETS = (("age", "gender", "occupation"), ("age", "gender", "occupation", "zip_code"))
_BUCKET = ("age", "gender", "occupation")


@dataclass
class Config:
    """What the study attacks.

    Args:
        data: the directory of ``ml-100k.user`` and ``ml-100k.inter`` (default: recbole's).
        attacks: which of :data:`PARTS` to run (the attacks, and ``"cost"``).
        defences: the oblivious lookups each attack is run against again, and whose cost is
            measured: some of ``"scan"``, ``"oram"``, ``"pad"``.
        pad_count: rows every padded bag reads.
        sessions: linked sessions intersected against padding's dummies (identification).
        folds: folds of the attribute classifier.
        max_k: re-identification for k = 1..max_k recent items.
        gap: re-identification matches the request this many requests after the
            fingerprint's.
        lookups: hash inversion's amounts of traffic observed.
        trials: random masks per amount.
        modulus: the hash's P (default: the smallest prime >= the items).
        seed: of the masks, windows and folds.
        cost_rows: table sizes of the cost sweep.
        batches: batch sizes of the cost sweep (bags of one lookup).
        budget_s: seconds of timing per cost cell.
    """

    data: Optional[str] = None
    attacks: Sequence[str] = PARTS
    defences: Sequence[str] = DEFENCES
    pad_count: int = 8
    sessions: int = 4
    folds: int = 5
    max_k: int = 10
    gap: int = 1
    lookups: Sequence[int] = (10, 30, 100, 300, 1000, 3000, 10000)
    trials: int = 20
    modulus: int = 0
    seed: int = 0
    cost_rows: Sequence[int] = (100, 1000, 10_000, 100_000, 1_000_000)
    batches: Sequence[int] = (1, 16, 64, 256, 1024)
    budget_s: float = 0.3

    def __post_init__(self) -> None:
        unknown = [a for a in self.attacks if a not in PARTS]
        if unknown or not self.attacks:
            raise ValueError(f"unknown attacks {unknown}; expected some of "
                             f"{', '.join(PARTS)}")
        bad = [d for d in self.defences if d not in DEFENCES]
        if bad:
            raise ValueError(f"unknown defences {bad}; expected some of {', '.join(DEFENCES)}")
        if self.pad_count < 1 or self.sessions < 1 or self.budget_s <= 0:
            raise ValueError("pad_count >= 1, sessions >= 1 and budget_s > 0")
        if not self.cost_rows or not self.batches or min(*self.cost_rows, *self.batches) < 1:
            raise ValueError("cost_rows and batches must be positive sizes")
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


def _how(defence: str, config: Config, popularity: Optional[np.ndarray] = None,
         least: int = 1) -> Any:
    """The ``oblivious=`` argument of a defence (padding to at least ``least`` rows)."""
    if defence == "none":
        return None
    if defence == "pad":
        count = max(config.pad_count, 1 << max(least - 1, 0).bit_length())
        return Pad(count=count, popularity=popularity, seed=config.seed)
    return defence


def _identification(ml: MovieLens, config: Config) -> Iterator[dict[str, Any]]:
    model = static_tables(ml)
    for defence in ("none", *config.defences):
        how = _how(defence, config)
        first, second = (serve_static(ml, model, oblivious=how) for _ in range(2))
        for features in _FEATURE_SETS:
            label = "+".join(features)
            if defence in ("none", "scan"):  # traces that never change: bucket them
                r = identify(first, features)
                yield _row("identification", "one_anonymous", r.one_anonymous, r.users,
                           defence, features=label, buckets=r.buckets,
                           bucket_sizes={str(k): v for k, v in r.sizes.items()})
            lk = link(first, second, features)
            yield _row("identification", "linked_alone", lk.linked_alone, lk.users, defence,
                       features=label, sessions=1)
        if defence == "pad" and config.sessions > 1:
            n = config.sessions
            first, second = (intersect_sessions([serve_static(ml, model, oblivious=how)
                                                 for _ in range(n)]) for _ in range(2))
            for features in _FEATURE_SETS:
                lk = link(first, second, features)
                yield _row("identification", "linked_alone", lk.linked_alone, lk.users,
                           defence, features="+".join(features), sessions=n)


def _defended(config: Config) -> tuple[str, ...]:
    """The defences re-run per request: the scan's trace is every row for every request
    (the same for all; a pass over 100,000 ratings would record 1,682 rows each), shown by
    identification and left out here."""
    return ("none", *(d for d in config.defences if d != "scan"))


def _item_popularity(ml: MovieLens) -> np.ndarray:
    return np.bincount(ml.ratings_item, minlength=max(ml.num_items, 1)).astype(float) + 1.0


def _inference(ml: MovieLens, config: Config) -> Iterator[dict[str, Any]]:
    for defence in _defended(config):
        how = _how(defence, config, _item_popularity(ml))
        items = per_user(serve_ratings(ml, oblivious=how))
        for attribute in ("gender", "age_group"):
            r = infer_attribute(items, "items", ml.labels(attribute), folds=config.folds,
                                seed=config.seed)
            yield _row("attribute_inference", f"accuracy_{attribute}", r.accuracy,
                       r.baseline, defence, users=r.users, classes=list(r.classes))
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
    k = min(5, config.max_k)  # the defences at the k that identifies nearly everyone
    for defence in _defended(config)[1:]:
        how = _how(defence, config, _item_popularity(ml), least=k)
        r = reidentify(serve_histories(ml, k, oblivious=how), "history", gap=config.gap)
        yield _row("reidentification", f"top1_k{k}", r.accuracy, 1 / r.users, defence, k=k,
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
    cases = [("none", "none", late), ("none", "first_half", early)]
    cases += [(d, "none", late) for d in _defended(config)[1:]]  # the attacker's best prior
    for n in sorted(config.lookups):
        n = min(n, order.size - half)
        for defence, drift, prior in cases:
            got, ranked = 0, []  # ranked: rank matching's share right, per mask
            for _ in range(config.trials):
                mask = int(rng.integers(0, modulus))
                start = int(rng.integers(half, order.size - n + 1))
                # The defender pads with the popularity of the hashed rows it serves.
                rows_pop = np.roll(np.pad(late + 1.0, (0, modulus - late.size)), mask)
                how = _how(defence, config, rows_pop)
                seen = serve_hashed(ml, mask, modulus, order[start:start + n], oblivious=how)
                r = invert_hash(seen, "hashed", prior, modulus, true_mask=mask)
                got += r.mask == mask
                ranked.append(float("nan") if r.ranked is None else r.ranked)
            yield _row("hash_inversion", "mask_recovered", got / config.trials,
                       1 / modulus, defence, lookups=n, drift=drift,
                       popularity_tv=0.0 if drift == "none" else tv,
                       rank_matched=float(np.nanmean(ranked)) if ranked else float("nan"),
                       modulus=modulus)


def iter_study(config: Config, status: Callable[[str], None] = lambda m: None,
               tick: Optional[Callable[[], None]] = None) -> Iterator[dict[str, Any]]:
    """The rows of each attack in :data:`ATTACKS` order (see the module)."""
    def step() -> None:
        if tick:
            tick()

    if any(a in ATTACKS for a in config.attacks):
        status("loading MovieLens-100k")
        ml = load_movielens(config.data)
    if "identification" in config.attacks:
        status("identification: serving every user's static features")
        yield from _identification(ml, config)
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
    if "cost" in config.attacks:
        status(f"cost: {', '.join(config.defences)} against the plain lookup")
        yield from measure(config.cost_rows, config.batches, budget_s=config.budget_s,
                           pad_count=config.pad_count, defences=config.defences,
                           seed=config.seed, status=status)
        step()


def summarize_study(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """``one_anonymous`` by feature set (and defence, in brackets, where not "none"),
    ``linked_alone`` by feature set, defence and sessions, ``accuracy`` and ``baseline`` by
    attribute (and defence), ``single_bucket_items``, ``top1`` and ``unique`` by k (and
    defence), the fewest lookups that recovered every mask by drift (and defence; None where
    none did), and from the cost rows the slowdown by defence, rows and batch and the scan's
    crossover with the ORAM by batch."""
    out: dict[str, Any] = {}

    def tag(key: str, r: dict[str, Any]) -> str:
        return key if r["defence"] == "none" else f"{key} ({r['defence']})"

    for r in rows:
        if r["attack"] == "identification" and r["metric"] == "one_anonymous":
            out.setdefault("one_anonymous", {})[tag(r["features"], r)] = r["value"]
        elif r["attack"] == "identification":
            key = f"{r['features']} ({r['defence']}, {r['sessions']} session(s))"
            out.setdefault("linked_alone", {})[key] = r["value"]
        elif r["metric"].startswith("accuracy_"):
            out.setdefault("accuracy", {})[tag(r["metric"][9:], r)] = (r["value"],
                                                                       r["baseline"])
        elif r["metric"] == "single_bucket_items":
            out["single_bucket_items"] = r["value"]
        elif r["attack"] == "reidentification":
            out.setdefault("top1", {})[tag(str(r["k"]), r)] = r["value"]
            out.setdefault("unique", {})[tag(str(r["k"]), r)] = r["unique"]
        elif r["attack"] == "hash_inversion":
            best = out.setdefault("lookups_to_recover", {})
            key = tag(r["drift"], r)
            if r["value"] == 1.0 and best.get(key) is None:
                best[key] = r["lookups"]
            best.setdefault(key, None)
        elif r["attack"] == "cost":
            out.setdefault("slowdown", {})[f"{r['defence']} {r['rows']} x{r['batch']}"] = (
                r["slowdown"])
    if "slowdown" in out:
        out["scan_beats_oram_up_to_rows"] = {str(b): n for b, n in crossover(rows).items()}
    return out


def plot_study(rows: Sequence[dict[str, Any]], path: str, config: Config) -> None:
    """Re-identification accuracy and fingerprint uniqueness by k, the share of masks
    recovered by traffic observed (with and without drift, no defence), and each defence's
    slowdown by table size at the smallest and largest batch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    re = [r for r in rows if r["attack"] == "reidentification" and r["defence"] == "none"]
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
    hi = [r for r in rows if r["attack"] == "hash_inversion" and r["defence"] == "none"]
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
    cost = [r for r in rows if r["attack"] == "cost"]
    if cost:
        batches = sorted({r["batch"] for r in cost})
        for d, color in zip(sorted({r["defence"] for r in cost}), ("C0", "C1", "C2")):
            for b, style in zip(sorted({batches[0], batches[-1]}), ("o-", "s--")):
                line = sorted((r["rows"], r["slowdown"]) for r in cost
                             if r["defence"] == d and r["batch"] == b)
                axes[2].plot(*zip(*line), style, color=color, label=f"{d}, batch {b}")
        axes[2].set_xscale("log")
        axes[2].set_yscale("log")
        axes[2].set_xlabel("table rows")
        axes[2].set_ylabel("time per call / plain lookup's")
        axes[2].set_title("the defences' cost")
        axes[2].legend(fontsize=8)
    else:
        axes[2].axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
