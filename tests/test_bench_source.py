"""Tests of bench/run.py: the guard against source edits during a suite
run, and the selection of a suite's runs.

Every benchmark worker imports `keras_mtl` afresh, so an edit made while a
suite runs silently changes the code of the later runs. `bench/run.py`
stores a digest of the package source with every run and its sections warn
when the runs differ.
"""

import importlib.util
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench_run():
    spec = importlib.util.spec_from_file_location(
        "bench_run", ROOT / "bench" / "run.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_source_digest_follows_python_sources_only(
    bench_run, tmp_path, monkeypatch
):
    package = tmp_path / "keras_mtl"
    (package / "layers").mkdir(parents=True)
    (package / "a.py").write_text("A = 1\n")
    (package / "layers" / "b.py").write_text("B = 2\n")
    monkeypatch.setattr(bench_run, "ROOT", str(tmp_path))
    first = bench_run._source_digest()
    assert first == bench_run._source_digest()
    (package / "notes.txt").write_text("not code\n")
    assert bench_run._source_digest() == first
    (package / "layers" / "b.py").write_text("B = 3\n")
    edited = bench_run._source_digest()
    assert edited != first
    (package / "layers" / "b.py").write_text("B = 2\n")
    assert bench_run._source_digest() == first
    (package / "a.py").rename(package / "c.py")
    assert bench_run._source_digest() not in (first, edited)


def test_quality_section_warns_when_runs_imported_other_source(bench_run):
    meta = {
        "machine": {},
        "seeds": [0],
        "quick": False,
        "started": "2026-11-22T00:00:00+00:00",
        "command": "python bench/run.py --suite quality",
        "git": "abc1234",
        "adult_epochs": 30,
        "funnel_n": 1000,
        "funnel_epochs": 1,
    }
    runs = [
        {"benchmark": "adult", "library": "keras_mtl", "model": "mmoe"},
        {"benchmark": "funnel", "library": "keras_mtl", "model": "esmm"},
        {"benchmark": "funnel", "library": "keras_mtl", "model": "naive"},
    ]
    for run in runs:
        run.update(seed=0, error="not run in this test")
    path = str(ROOT / "bench" / "results" / "quality.jsonl")

    def warnings(sources):
        records = [
            {**run, **({"source": s} if s else {})}
            for run, s in zip(runs, sources)
        ]
        section = bench_run.render_quality(meta, records, path)
        return [line for line in section.splitlines() if "Warning" in line]

    assert warnings(["d1", "d1", "d1"]) == []
    # Older records without a digest are not counted as a change.
    assert warnings(["d1", None, "d1"]) == []
    (line,) = warnings(["d1", "d2", "d1"])
    assert "source changed during the run" in line
    assert "2 different versions" in line


def test_quality_jobs_filter_libraries_and_models(bench_run):
    everything = bench_run._quality_jobs([0, 1])
    # 4 keras-mtl + 3 + 3 peer Adult models and 3 funnel models per seed.
    assert len(everything) == 2 * (4 + 3 + 3 + 3)
    assert [job[3] for job in everything[:13]] == [0] * 13
    jobs = bench_run._quality_jobs([5, 6], models=["mmoe", "ple"])
    assert jobs == [
        ("adult", library, model, seed)
        for seed in (5, 6)
        for library in ("keras_mtl", "torch_rechub", "deepctr")
        for model in ("mmoe", "ple")
    ]
    funnel = bench_run._quality_jobs(
        [3], only=["funnel"], models=["esmm", "naive"]
    )
    assert funnel == [
        ("funnel", "keras_mtl", "esmm", 3),
        ("funnel", "keras_mtl", "naive", 3),
    ]
    assert bench_run._quality_jobs([0], only=["deepctr"], models=["esmm"]) == []
