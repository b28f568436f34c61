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
        "(x + mask) mod P by row frequencies against public popularity; then each attack "
        "again on the traces of the oblivious lookups (a scan of the table, Path ORAM, "
        "padding with dummy rows) and what those cost against the plain lookup.")
    options = (
        Option("--data", "directory of ml-100k.user and ml-100k.inter (default: the copy in "
                         "the recbole wheel)", metavar="DIR"),
        Option("--attacks", "comma list of identification, attribute_inference, "
                            "reidentification, hash_inversion and cost (the defences' "
                            "lookups/s; default: all)",
               parse=a.comma_list(a.one_of("privacy.study", "PARTS"), "attack")),
        Option("--defences", "comma list of scan, oram, pad: the oblivious lookups attacked "
                             "and costed (default: all)",
               parse=a.comma_list(a.one_of("privacy.cost", "DEFENCES"), "defence")),
        Option("--pad-count", "rows every padded bag reads (default: 8)",
               parse=a.int_in(1, 4096)),
        Option("--sessions", "linked sessions intersected against padding (default: 4)",
               parse=a.int_in(1, 100)),
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
        Option("--cost-rows", "comma list of table sizes for the cost (default: "
                              "100,1000,10000,100000,1000000)",
               parse=a.comma_list(a.positive_int, "size")),
        Option("--batches", "comma list of batch sizes for the cost (default: "
                            "1,16,64,256,1024)", parse=a.comma_list(a.positive_int, "batch")),
        Option("--budget", "seconds of timing per cost cell (default: 0.3)",
               parse=a.float_in(0.001, 60.0), dest="budget_s"),
        Option("--quick", "a run of about a minute: 2 folds, k up to 5, 5 masks at 4 "
                          "amounts, cost up to 100,000 rows at batches 1, 64, 1024 (options "
                          "given still apply)", switch=True),
    )
    quick: ClassVar[Mapping[str, Any]] = {"folds": 2, "max_k": 5, "trials": 5,
                                          "lookups": [10, 100, 1000, 10000],
                                          "cost_rows": [100, 1000, 10000, 100000],
                                          "batches": [1, 64, 1024], "budget_s": 0.1}
    needs: ClassVar[Mapping[str, str]] = {"recbole": "pip install --no-deps recbole",
                                          "scipy": 'pip install "recengine[hercules]"'}
    plot_help = ("save re-identification by k, masks recovered by traffic and the defences' "
                 "slowdown by table size")

    def total(self, config: Any) -> int:
        defended = len([d for d in config.defences if d != "scan"])
        per = {"identification": 1, "attribute_inference": 1,
               "reidentification": config.max_k + defended, "hash_inversion": 1, "cost": 1}
        return sum(per[x] for x in config.attacks)

    def ticks(self) -> bool:
        return True

    def report(self, rows: Sequence[dict[str, Any]], summary: Any, config: Any) -> Report:
        tables = []
        ident = [r for r in rows if r["metric"] == "one_anonymous"]
        if ident:
            tables.append(Table(
                "identification: users bucketed by the rows their static features read",
                ["features", "defence", "buckets", "users alone", "of users"],
                [[r["features"], r["defence"], str(r["buckets"]), str(r["value"]),
                  str(r["baseline"])] for r in ident], left=2))
        linked = [r for r in rows if r["metric"] == "linked_alone"]
        if linked:
            tables.append(Table(
                "identification across sessions: a user's key singles them out in an earlier "
                "session (padding: the rows all linked sessions read)",
                ["features", "defence", "sessions", "users singled out", "of users"],
                [[r["features"], r["defence"], str(r["sessions"]), str(r["value"]),
                  str(r["baseline"])] for r in linked], left=2))
        infer = [r for r in rows if r["attack"] == "attribute_inference"]
        if infer:
            tables.append(Table(
                "attribute inference from the item rows each user's requests read",
                ["metric", "defence", "value", "majority class"],
                [[r["metric"], r["defence"], f"{r['value']:.1%}",
                  "-" if r["baseline"] is None else f"{r['baseline']:.1%}"] for r in infer],
                left=2))
        re = [r for r in rows if r["attack"] == "reidentification"]
        if re:
            tables.append(Table(
                f"re-identification: fingerprint at mid-history, the request {config.gap} "
                f"later matched",
                ["k recent items", "defence", "fingerprint unique", "top-1 matched",
                 "chance"],
                [[str(r["k"]), r["defence"], f"{r['unique']:.1%}", f"{r['value']:.1%}",
                  f"{r['baseline']:.2%}"] for r in re], left=2))
        hi = [r for r in rows if r["attack"] == "hash_inversion"]
        if hi:
            tables.append(Table(
                f"hash inversion of (x + mask) mod {hi[0]['modulus']}: masks recovered from "
                f"row frequencies",
                ["lookups observed", "defence", "popularity prior", "masks recovered",
                 "rank matching alone", "prior drift (TV)"],
                [[f"{r['lookups']:,}", r["defence"],
                  "same period" if r["drift"] == "none" else "first half",
                  f"{r['value']:.0%}", f"{r['rank_matched']:.1%}",
                  f"{r['popularity_tv']:.2f}"] for r in hi], left=3))
        cost = [r for r in rows if r["attack"] == "cost"]
        if cost:
            tables.append(Table(
                "cost: lookups/s of each defence against the plain lookup, called in turn "
                "(bags of one id, fp32, 64 values; ~ = extrapolated, too slow to run)",
                ["rows", "batch", "defence", "lookups/s", "call (us)", "slowdown",
                 "plain lookups/s"],
                [[f"{r['rows']:,}", str(r["batch"]), r["defence"],
                  ("~" if r["estimated"] else "") + f"{r['lookups_per_s']:,.0f}",
                  f"{r['latency_us']:,.1f}", f"{r['slowdown']:,.1f}x",
                  f"{r['plain_lookups_per_s']:,.0f}"] for r in cost], left=3))
        lines = []
        if summary.get("one_anonymous"):
            lines.append("Hashemi et al. count 326 and 929 of 943 users alone on MovieLens-100k "
                         "with (age, gender, occupation) and with zip code added")
        oram = [r for r in cost if r["defence"] == "oram"]
        if oram:
            big = max(oram, key=lambda r: r["rows"])
            lines.append(f"Path ORAM reads and writes {big['blocks_per_lookup']} blocks a "
                         f"lookup at {big['rows']:,} rows (levels {big['levels']}); the Path "
                         f"ORAM paper's 2^20 rows: 20 levels x 4 blocks for the rows' tree")
        cross = summary.get("scan_beats_oram_up_to_rows")
        if cross:
            smallest = min(r["rows"] for r in cost)
            lines.append("the scan beats the ORAM " + "; ".join(
                f"at batch {b}: " + (f"at no table size measured ({smallest:,} rows and up)"
                                     if n is None else f"up to {n:,} rows")
                for b, n in cross.items()))
        return Report(tables=tables, lines=lines)


STUDY = PrivacyStudy()
