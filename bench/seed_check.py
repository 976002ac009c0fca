"""Fresh-seed replication of the quality bars, beside them.

The bars of `bench/run.py --suite quality` are decided on seeds 0-4. When a
comparison there is closer than its seed noise, this script reads runs of
the same protocol on other seeds (made with `bench/run.py --suite quality
--seeds ... --models ... --results NAME`) and says, for each comparison of
the bars, whether the difference is distinguishable from seed noise:

- Adult: keras-mtl's MMoE and PLE against torch-rechub's and DeepCTR's, per
  task: the difference of the mean test AUCs with Welch's 95% confidence
  interval (the runs of different libraries share no randomness).
- Funnel: ESMM against the naive CVR model, the per-seed paired difference
  (both train on the same data of a seed) with the paired t interval.

An interval entirely below 0 reads "keras-mtl lower" ("naive higher" for the
funnel), entirely above "keras-mtl higher" ("ESMM higher"), otherwise "no
detectable difference". The figures over the fresh seeds come first; those
over the fresh and the earlier seeds together are secondary.

    python bench/seed_check.py \\
        --fresh bench/results/quality-seeds-5-24.jsonl \\
                bench/results/quality-funnel-seeds-5-24.jsonl \\
        --earlier bench/results/quality.jsonl bench/results/quality-funnel.jsonl

It writes the `quality-seeds` section of docs/BENCHMARKS.md (unless
`--no-write-doc`) and changes nothing else: the bars keep their seeds.
"""

import argparse
import os
import statistics
import sys

from scipy import stats

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run  # noqa: E402  (bench/run.py: the protocol, its records and doc)

SECTION = "quality-seeds"
CONFIDENCE = 0.95
BAR_MODELS = ("mmoe", "ple")
PEERS = ("torch_rechub", "deepctr")


def read_runs(paths):
    """The successful runs of several results files of one protocol.

    Returns `(metas, runs, failed)`, `failed` the number of failed runs.
    Files whose protocol settings differ (see `bench/run.py`'s `_settings`)
    cannot be pooled and raise an error, and so does a run (benchmark,
    library, model, seed) found twice.
    """
    metas, runs, seen, failed = [], [], set(), 0
    for path in paths:
        meta, records = run._read_results(path)
        if meta is None:
            raise SystemExit(f"{path}: no meta line; not a suite's results")
        if metas and run._settings(meta) != run._settings(metas[0]):
            raise SystemExit(
                f"{path}: other protocol settings than {paths[0]}: "
                f"{run._settings(meta)} != {run._settings(metas[0])}"
            )
        metas.append(meta)
        for record in records:
            if "error" in record:
                failed += 1
                continue
            key = (
                record["benchmark"],
                record["library"],
                record["model"],
                record["seed"],
            )
            if key in seen:
                raise SystemExit(f"{path}: run {key} appears twice")
            seen.add(key)
            runs.append(record)
    return metas, runs, failed


def _reading(low, high, lower, higher):
    if high < 0:
        return lower
    if low > 0:
        return higher
    return "no detectable difference"


def _adult_aucs(runs, library, model, task, seeds):
    by_seed = {
        r["seed"]: r["test_auc"][task]
        for r in runs
        if r["benchmark"] == "adult"
        and r["library"] == library
        and r["model"] == model
        and r["seed"] in seeds
    }
    return [by_seed[s] for s in sorted(by_seed)]


def adult_comparison(runs, model, peer, task, seeds):
    """keras-mtl's `model` against `peer`'s on `task` over `seeds`.

    Returns None when either side has fewer than 2 runs, else a dict with
    the means, their difference, Welch's interval and its reading.
    """
    ours = _adult_aucs(runs, "keras_mtl", model, task, seeds)
    theirs = _adult_aucs(runs, peer, model, task, seeds)
    if len(ours) < 2 or len(theirs) < 2:
        return None
    test = stats.ttest_ind(ours, theirs, equal_var=False)
    low, high = test.confidence_interval(CONFIDENCE)
    return {
        "ours": statistics.mean(ours),
        "theirs": statistics.mean(theirs),
        "n": (len(ours), len(theirs)),
        "difference": statistics.mean(ours) - statistics.mean(theirs),
        "low": float(low),
        "high": float(high),
        "p": float(test.pvalue),
        "reading": _reading(low, high, "keras-mtl lower", "keras-mtl higher"),
    }


def funnel_comparison(runs, seeds):
    """ESMM against the naive model, paired by seed, over `seeds`."""
    auc = {
        model: {
            r["seed"]: r["entire_space_auc"]
            for r in runs
            if r["benchmark"] == "funnel"
            and r["model"] == model
            and r["seed"] in seeds
        }
        for model in ("esmm", "naive")
    }
    common = sorted(set(auc["esmm"]) & set(auc["naive"]))
    if len(common) < 2:
        return None
    esmm = [auc["esmm"][s] for s in common]
    naive = [auc["naive"][s] for s in common]
    test = stats.ttest_rel(esmm, naive)
    low, high = test.confidence_interval(CONFIDENCE)
    return {
        "esmm": statistics.mean(esmm),
        "naive": statistics.mean(naive),
        "n": len(common),
        "difference": statistics.mean(esmm) - statistics.mean(naive),
        "low": float(low),
        "high": float(high),
        "p": float(test.pvalue),
        "wins": sum(a > b for a, b in zip(esmm, naive)),
        "reading": _reading(low, high, "naive higher", "ESMM higher"),
    }


def _seed_text(seeds):
    seeds = sorted(seeds)
    if seeds == list(range(seeds[0], seeds[-1] + 1)) and len(seeds) > 2:
        return f"{seeds[0]}–{seeds[-1]}"
    return ", ".join(str(s) for s in seeds)


def _interval(c):
    return f"{c['difference']:+.5f} [{c['low']:+.5f}, {c['high']:+.5f}]"


def render(fresh_paths, earlier_paths):
    """The `quality-seeds` section from the fresh and the earlier runs."""
    fresh_metas, fresh, failed = read_runs(fresh_paths)
    earlier_metas, earlier, _ = read_runs(earlier_paths)
    if earlier_metas and run._settings(earlier_metas[0]) != run._settings(
        fresh_metas[0]
    ):
        raise SystemExit(
            "the earlier runs have other protocol settings than the fresh "
            "ones; they cannot be pooled"
        )
    fresh_seeds = {r["seed"] for r in fresh}
    earlier_seeds = {r["seed"] for r in earlier}
    if fresh_seeds & earlier_seeds:
        raise SystemExit(
            "fresh and earlier runs share seeds "
            f"{sorted(fresh_seeds & earlier_seeds)}; a replication needs "
            "other seeds"
        )
    pooled = fresh + earlier
    all_seeds = fresh_seeds | earlier_seeds
    lines = []
    add = lines.append
    add("## Fresh-seed replication (beside the bars)")
    add("")
    add(
        "Generated by `bench/seed_check.py` from "
        + " and ".join(
            f"`{os.path.relpath(p, run.ROOT)}`"
            for p in [*fresh_paths, *earlier_paths]
        )
        + "; do not edit by hand. It does not change the bars or their "
        "seeds (0–4): see the rule above."
    )
    add("")
    add(
        "- Fresh runs: "
        + "; ".join(
            f"`{m['command']}` (tree {m['git']}, {m['started']} to "
            f"{m.get('finished', '?')} UTC)"
            for m in fresh_metas
        )
        + "."
    )
    if earlier_metas:
        add(
            "- Earlier runs (the bars' seeds): trees "
            + ", ".join(sorted({m["git"] for m in earlier_metas}))
            + "."
        )
    machine = fresh_metas[0]["machine"]
    add(
        f"- Machine: {machine.get('cores')}-core CPU "
        f"({machine.get('cpu_model') or 'unknown model'}), "
        f"{machine.get('memory_gib', '?')} GiB RAM, no GPU; "
        f"{fresh_metas[0].get('threads')} thread per library."
    )
    warning = run._source_warning(fresh)
    if warning:
        add(warning)
    add(
        f"- Seeds: fresh {_seed_text(fresh_seeds)}"
        + (f"; pooled with {_seed_text(earlier_seeds)}" if earlier else "")
        + f". Intervals: {CONFIDENCE:.0%}, Welch's t for the Adult "
        "comparisons (independent runs), the paired t for the funnel (the "
        "same data per seed)."
    )
    if failed:
        add(f"- **{failed} fresh run(s) failed** and are left out.")
    add("")
    add(
        "| keras-mtl model | vs | task | keras-mtl mean (fresh) | peer mean "
        "(fresh) | difference (fresh) [95% CI] | reading (fresh) | "
        "difference, all seeds [95% CI] | reading, all seeds |"
    )
    add("|---|---|---|---:|---:|---|---|---|---|")
    for model in BAR_MODELS:
        for peer in PEERS:
            for task in run.ADULT_TASKS:
                c = adult_comparison(fresh, model, peer, task, fresh_seeds)
                p = adult_comparison(pooled, model, peer, task, all_seeds)
                if c is None:
                    add(
                        f"| {model} | {run.LIBRARY_LABEL[peer]} | {task} | "
                        "n/a | n/a | not measured | - | - | - |"
                    )
                    continue
                add(
                    f"| {model} | {run.LIBRARY_LABEL[peer]} | {task} | "
                    f"{c['ours']:.5f} (n={c['n'][0]}) | "
                    f"{c['theirs']:.5f} (n={c['n'][1]}) | {_interval(c)} | "
                    f"{c['reading']} | "
                    + (f"{_interval(p)} | {p['reading']} |" if p else "- | - |")
                )
    add("")
    c = funnel_comparison(fresh, fresh_seeds)
    p = funnel_comparison(pooled, all_seeds)
    if c is None:
        add("Funnel: not measured on the fresh seeds.")
    else:
        add(
            "| funnel | ESMM mean | naive mean | paired difference [95% CI] "
            "| ESMM higher on | reading |"
        )
        add("|---|---:|---:|---|---:|---|")
        for label, f in (("fresh seeds", c), ("all seeds", p)):
            if f is None:
                continue
            add(
                f"| {label} ({f['n']}) | {f['esmm']:.4f} | {f['naive']:.4f} "
                f"| {_interval(f)} | {f['wins']} of {f['n']} | "
                f"{f['reading']} |"
            )
    return "\n".join(lines).rstrip() + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--fresh", nargs="+", required=True)
    parser.add_argument("--earlier", nargs="*", default=[])
    parser.add_argument("--doc", default=run.DOC)
    parser.add_argument(
        "--no-write-doc", dest="write_doc", action="store_false"
    )
    opts = parser.parse_args(argv)
    section = render(
        [os.path.abspath(p) for p in opts.fresh],
        [os.path.abspath(p) for p in opts.earlier],
    )
    print(section)
    if opts.write_doc:
        run.write_section(opts.doc, SECTION, section)
        print(f"wrote the {SECTION} section of {opts.doc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
