"""Tests of bench/seed_check.py, the fresh-seed replication of the bars."""

import importlib.util
import json
import pathlib
import sys

import numpy as np
import pytest
from scipy import stats

ROOT = pathlib.Path(__file__).resolve().parents[1]
META = {
    "started": "2026-11-23T00:00:00+00:00",
    "finished": "2026-11-23T01:00:00+00:00",
    "command": "python bench/run.py --suite quality",
    "git": "abc1234",
    "machine": {"cores": 2, "cpu_model": "CPU", "memory_gib": 8},
    "quick": False,
    "adult_epochs": 30,
    "adult_adam_epsilon": 1e-8,
    "funnel_n": 400000,
    "funnel_epochs": 8,
    "threads": 1,
}


@pytest.fixture(scope="module")
def seed_check():
    sys.path.insert(0, str(ROOT / "bench"))
    spec = importlib.util.spec_from_file_location(
        "seed_check", ROOT / "bench" / "seed_check.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _adult(library, model, seed, income, never_married):
    return {
        "benchmark": "adult",
        "library": library,
        "model": model,
        "seed": seed,
        "test_auc": {"income": income, "never_married": never_married},
    }


def _funnel(model, seed, auc):
    return {
        "benchmark": "funnel",
        "library": "keras_mtl",
        "model": model,
        "seed": seed,
        "entire_space_auc": auc,
    }


def _write(path, records, **meta):
    with open(path, "w") as f:
        f.write(json.dumps({"meta": {**META, **meta}}) + "\n")
        for record in records:
            f.write(json.dumps(record) + "\n")
    return str(path)


def _runs(seeds, rng):
    """keras-mtl clearly higher on income, the same on never-married."""
    runs = []
    for seed in seeds:
        for library, lift in (
            ("keras_mtl", 0.004),
            ("torch_rechub", 0.0),
            ("deepctr", 0.0),
        ):
            for model in ("mmoe", "ple"):
                runs.append(
                    _adult(
                        library,
                        model,
                        seed,
                        0.905 + lift + rng.normal(0, 0.0005),
                        0.964 + rng.normal(0, 0.0002),
                    )
                )
        base = 0.59 + rng.normal(0, 0.005)
        runs.append(_funnel("naive", seed, base))
        runs.append(_funnel("esmm", seed, base - 0.003 + rng.normal(0, 1e-4)))
    return runs


def test_adult_interval_is_welchs_and_read_by_its_sign(seed_check):
    rng = np.random.default_rng(0)
    runs = _runs(range(5, 25), rng)
    seeds = set(range(5, 25))
    income = seed_check.adult_comparison(
        runs, "mmoe", "torch_rechub", "income", seeds
    )
    ours = [
        r["test_auc"]["income"]
        for r in runs
        if r["library"] == "keras_mtl" and r["model"] == "mmoe"
    ]
    theirs = [
        r["test_auc"]["income"]
        for r in runs
        if r["library"] == "torch_rechub" and r["model"] == "mmoe"
    ]
    low, high = stats.ttest_ind(
        ours, theirs, equal_var=False
    ).confidence_interval(0.95)
    assert income["low"] == pytest.approx(low)
    assert income["high"] == pytest.approx(high)
    assert income["difference"] == pytest.approx(
        np.mean(ours) - np.mean(theirs)
    )
    assert income["n"] == (20, 20)
    assert income["reading"] == "keras-mtl higher"
    same = seed_check.adult_comparison(
        runs, "ple", "deepctr", "never_married", seeds
    )
    assert same["low"] < 0 < same["high"]
    assert same["reading"] == "no detectable difference"
    # Seeds outside the set are not used; one run a side is no interval.
    assert (
        seed_check.adult_comparison(runs, "mmoe", "deepctr", "income", {5})
        is None
    )


def test_funnel_difference_is_paired_by_seed(seed_check):
    rng = np.random.default_rng(1)
    runs = _runs(range(5, 15), rng)
    result = seed_check.funnel_comparison(runs, set(range(5, 15)))
    # The seeds' data differ by 0.005 (std) but ESMM trails by 0.003 on
    # every one: only a paired test sees it.
    assert result["reading"] == "naive higher"
    assert result["wins"] == 0
    assert result["high"] < 0
    assert result["n"] == 10


def test_render_pools_files_and_refuses_what_cannot_be_pooled(
    seed_check, tmp_path
):
    rng = np.random.default_rng(2)
    runs = _runs(range(0, 25), rng)
    early = [r for r in runs if r["seed"] < 5]
    fresh = [r for r in runs if r["seed"] >= 5]
    adult = _write(
        tmp_path / "a.jsonl", [r for r in fresh if r["benchmark"] == "adult"]
    )
    crashed = {**_funnel("esmm", 30, 0.0), "error": "killed"}
    funnel = _write(
        tmp_path / "f.jsonl",
        [r for r in fresh if r["benchmark"] == "funnel"] + [crashed],
    )
    earlier = _write(tmp_path / "e.jsonl", early)
    section = seed_check.render([adult, funnel], [earlier])
    assert "fresh 5–24; pooled with 0–4" in section
    assert "**1 fresh run(s) failed** and are left out." in section
    rows = [line for line in section.splitlines() if line.startswith("| mmoe")]
    assert len(rows) == 4
    assert "keras-mtl higher" in rows[0]
    assert "(n=20)" in rows[0]
    assert "| fresh seeds (20) |" in section
    assert "| all seeds (25) |" in section
    # The same seeds twice are no replication.
    with pytest.raises(SystemExit, match="share seeds"):
        seed_check.render([adult], [adult])
    # Runs of another protocol cannot be pooled.
    other = _write(tmp_path / "o.jsonl", early, adult_epochs=10)
    with pytest.raises(SystemExit, match="other protocol settings"):
        seed_check.render([adult, funnel], [other])
