"""``recengine privacy``: what the embedding rows a request reads give away, on MovieLens-100k
(:mod:`recengine.privacy.study`)."""

from __future__ import annotations

from typing import Any, ClassVar, Mapping, Sequence

from . import Option, Report, Study, Table
from . import _args as a

__all__ = ["STUDY", "PrivacyStudy"]


class PrivacyStudy(Study):
    runner = "recengine.privacy.study"
    name = "privacy"
    help = "access-pattern attacks on MovieLens-100k from the rows its requests read"
    description = (
        "Serve MovieLens-100k's users through recengine with the access hook on and attack "
        "what a host sees (Hashemi et al., 'Data Leakage via Access Patterns of Sparse "
        "Features'): identification by the rows static features read (k-anonymity), gender "
        "and age group inferred from the item rows each user reads, re-identification from "
        "the k most recent items of a history feature, and hash inversion of ids hashed as "
        "(x + mask) mod P by row frequencies against public popularity.")
    options = (
        Option("--data", "directory of ml-100k.user and ml-100k.inter (default: the copy in "
                         "the recbole wheel)", metavar="DIR"),
        Option("--attacks", "comma list of identification, attribute_inference, "
                            "reidentification, hash_inversion (default: all)",
               parse=a.comma_list(a.one_of("privacy.study", "ATTACKS"), "attack")),
        Option("--folds", "folds of the attribute classifier (default: 5)",
               parse=a.int_in(2, 100)),
        Option("--max-k", "re-identify with k = 1..MAX_K recent items (default: 10)",
               parse=a.int_in(1, 100)),
        Option("--gap", "match the request this many requests after the fingerprint's "
                        "(default: 1)", parse=a.int_in(1, 1000)),
        Option("--lookups", "comma list of lookups observed for hash inversion (default: "
                            "10,30,100,300,1000,3000,10000)",
               parse=a.comma_list(a.positive_int, "amount")),
        Option("--trials", "random masks per amount (default: 20)", parse=a.int_in(1, 10**4)),
        Option("--modulus", "the hash's P (default: the smallest prime >= the items)",
               parse=a.positive_int),
        Option("--seed", "seed of masks, windows and folds", parse=a.seed),
        Option("--quick", "a run of about a minute: 3 folds, k up to 6, 5 masks at 4 amounts "
                          "(options given still apply)", switch=True),
    )
    quick: ClassVar[Mapping[str, Any]] = {"folds": 3, "max_k": 6, "trials": 5,
                                          "lookups": [10, 100, 1000, 10000]}
    needs: ClassVar[Mapping[str, str]] = {"recbole": "pip install --no-deps recbole",
                                          "scipy": 'pip install "recengine[hercules]"'}
    plot_help = "save re-identification by k and masks recovered by traffic"

    def total(self, config: Any) -> int:
        per = {"identification": 1, "attribute_inference": 1,
               "reidentification": config.max_k, "hash_inversion": 1}
        return sum(per[x] for x in config.attacks)

    def ticks(self) -> bool:
        return True

    def report(self, rows: Sequence[dict[str, Any]], summary: Any, config: Any) -> Report:
        tables = []
        ident = [r for r in rows if r["attack"] == "identification"]
        if ident:
            tables.append(Table(
                "identification: users bucketed by the rows their static features read",
                ["features", "defence", "buckets", "users alone", "of users"],
                [[r["features"], r["defence"], str(r["buckets"]), str(r["value"]),
                  str(r["baseline"])] for r in ident], left=2))
        infer = [r for r in rows if r["attack"] == "attribute_inference"]
        if infer:
            tables.append(Table(
                "attribute inference from the item rows each user's requests read",
                ["metric", "value", "majority class"],
                [[r["metric"], f"{r['value']:.1%}",
                  "-" if r["baseline"] is None else f"{r['baseline']:.1%}"] for r in infer],
                left=1))
        re = [r for r in rows if r["attack"] == "reidentification"]
        if re:
            tables.append(Table(
                f"re-identification: fingerprint at mid-history, the request {config.gap} "
                f"later matched",
                ["k recent items", "fingerprint unique", "top-1 matched", "chance"],
                [[str(r["k"]), f"{r['unique']:.1%}", f"{r['value']:.1%}",
                  f"{r['baseline']:.2%}"] for r in re]))
        hi = [r for r in rows if r["attack"] == "hash_inversion"]
        if hi:
            tables.append(Table(
                f"hash inversion of (x + mask) mod {hi[0]['modulus']}: masks recovered from "
                f"row frequencies",
                ["lookups observed", "popularity prior", "masks recovered",
                 "rank matching alone", "prior drift (TV)"],
                [[f"{r['lookups']:,}", "same period" if r["drift"] == "none" else "first half",
                  f"{r['value']:.0%}", f"{r['rank_matched']:.1%}",
                  f"{r['popularity_tv']:.2f}"] for r in hi], left=2))
        lines = []
        if summary.get("one_anonymous"):
            lines.append("Hashemi et al. count 326 and 929 of 943 users alone on MovieLens-100k "
                         "with (age, gender, occupation) and with zip code added")
        return Report(tables=tables, lines=lines)


STUDY = PrivacyStudy()
