"""The notebooks run top to bottom, and their committed outputs are current.

Every `notebooks/*.ipynb` is picked up. The execution test runs each one in
the quick setting (`KERAS_MTL_NOTEBOOK_SCALE=1`) into a temporary copy with
`notebooks/run.py`; the staleness test checks that the committed file carries
the outputs of an in-order run of its current code (`run.py` stamps the code's
sha256 after a successful run). Fast checks hold every notebook to the
conventions (linked from `notebooks/README.md`, the `KERAS_MTL_NOTEBOOK_SCALE`
knob in its first code cell); the execution test also checks that a run leaves
no files in `notebooks/` (tuner projects and exports go to temporary
directories). After editing a notebook, re-run it:

    .venv/bin/python notebooks/run.py notebooks/<name>.ipynb
"""

import importlib.util
import pathlib

import nbformat
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = ROOT / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
# PNG plots at modest size and dpi keep a notebook well under this.
MAX_BYTES = 1_000_000


def _load_runner():
    spec = importlib.util.spec_from_file_location(
        "notebook_runner", NOTEBOOK_DIR / "run.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


run = _load_runner()


def _code_cells(nb):
    return [cell for cell in nb.cells if cell.cell_type == "code"]


def _errors(nb):
    return [
        f"{output.get('ename')}: {output.get('evalue')}"
        for cell in _code_cells(nb)
        for output in cell.get("outputs", [])
        if output.get("output_type") == "error"
    ]


def _has_png(nb):
    return any(
        "image/png" in output.get("data", {})
        for cell in _code_cells(nb)
        for output in cell.get("outputs", [])
    )


EXPECTED = (
    "01_quickstart.ipynb",
    "02_esmm_selection_bias.ipynb",
    "03_task_relatedness.ipynb",
    "04_loss_balancing.ipynb",
    "05_tuning.ipynb",
    "06_serving.ipynb",
)


def test_the_notebooks_exist():
    names = [path.name for path in NOTEBOOKS]
    for name in EXPECTED:
        assert name in names
    assert run.notebooks() == NOTEBOOKS


def test_readme_lists_every_notebook():
    readme = (NOTEBOOK_DIR / "README.md").read_text(encoding="utf-8")
    missing = [
        path.name
        for path in NOTEBOOKS
        if f"[`{path.name}`]({path.name})" not in readme
    ]
    assert not missing, f"notebooks/README.md does not link {missing}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.stem)
def test_first_code_cell_reads_the_scale(path):
    # The one knob the tests and run.py turn: KERAS_MTL_NOTEBOOK_SCALE.
    first = _code_cells(nbformat.read(path, as_version=4))[0].source
    assert run.SCALE_VARIABLE in first
    assert "SCALE = float(os.environ.get(" in first


def test_code_sha256_sees_every_code_cell():
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_markdown_cell("# title"),
        nbformat.v4.new_code_cell("x = 1"),
        nbformat.v4.new_code_cell("print(x)"),
    ]
    before = run.code_sha256(nb)
    nb.cells[0].source = "# another title"  # prose is not code
    assert run.code_sha256(nb) == before
    nb.cells[2].source = "print(x + 1)"
    assert run.code_sha256(nb) != before
    nb.cells[2].source = "print(x)"
    nb.cells.append(nbformat.v4.new_code_cell(""))
    assert run.code_sha256(nb) != before


def test_tidy_outputs_drops_tf_log_lines_and_merges_streams():
    stream = nbformat.v4.new_output
    cell = nbformat.v4.new_code_cell("fit()")
    cell.outputs = [
        stream("stream", name="stdout", text="Epoch 1/2\n"),
        stream(
            "stream",
            name="stderr",
            text=(
                "WARNING: All log messages before absl::InitializeLog() is "
                "called are written to STDERR\n"
                "I0000 00:00:1795331761.237912   27014 cudart_stub.cc:31] "
                "Could not find cuda drivers on your machine.\n"
            ),
        ),
        stream("stream", name="stdout", text="loss: 0.5\n"),
        stream("stream", name="stdout", text="Epoch 2/2\n"),
        stream("stream", name="stderr", text="UserWarning: keep me\n"),
    ]
    nb = nbformat.v4.new_notebook()
    nb.cells = [cell]
    run._tidy_outputs(nb)
    assert [(o.name, o.text) for o in nb.cells[0].outputs] == [
        ("stdout", "Epoch 1/2\nloss: 0.5\nEpoch 2/2\n"),
        ("stderr", "UserWarning: keep me\n"),
    ]


def test_stamp_records_cpu_time_and_load():
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("x = 1")]
    usage = {"cpu_seconds": 20.06, "load_average": [1.5, 2.25]}
    stamped = run.stamp(nb, 1, 12.34, usage).metadata[run.STAMP_KEY]
    assert stamped == {
        "code_sha256": run.code_sha256(nb),
        "scale": 1.0,
        "seconds": 12.3,
        "cpu_seconds": 20.1,
        "load_average": [1.5, 2.25],
    }
    assert set(run.stamp(nb, 1, 12.34).metadata[run.STAMP_KEY]) == {
        "code_sha256",
        "scale",
        "seconds",
    }


@pytest.mark.parametrize(
    "text, expected", [("1", 1.0), ("10", 10.0), ("0.5", 0.5)]
)
def test_read_scale(text, expected):
    assert run.read_scale({run.SCALE_VARIABLE: text}) == expected
    assert run.read_scale({}) == 1.0


@pytest.mark.parametrize("text", ["0", "-1", "ten", "nan"])
def test_read_scale_refuses_bad_values(text):
    with pytest.raises(ValueError, match=run.SCALE_VARIABLE):
        run.read_scale({run.SCALE_VARIABLE: text})


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.stem)
def test_committed_outputs_are_current(path):
    nb = nbformat.read(path, as_version=4)
    stamp = nb.metadata.get(run.STAMP_KEY)
    assert stamp, f"{path.name} was not executed with notebooks/run.py; run it."
    assert stamp["code_sha256"] == run.code_sha256(nb), (
        f"The code of {path.name} changed since its outputs were made; "
        f"re-run: .venv/bin/python notebooks/run.py {path.relative_to(ROOT)}"
    )
    assert stamp["scale"] == 1.0, (
        f"{path.name} holds outputs of scale {stamp['scale']}; commit the "
        "quick setting (KERAS_MTL_NOTEBOOK_SCALE unset or 1)."
    )
    counts = [cell.execution_count for cell in _code_cells(nb)]
    assert counts == list(range(1, len(counts) + 1)), (
        f"{path.name}: execution counts {counts} are not one in-order run."
    )
    assert not _errors(nb)
    assert _has_png(nb), f"{path.name} shows no plot."
    assert path.stat().st_size < MAX_BYTES


def _tree(directory):
    return sorted(
        str(p.relative_to(directory))
        for p in directory.rglob("*")
        if "__pycache__" not in p.parts and ".ipynb_checkpoints" not in p.parts
    )


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.stem)
def test_notebook_executes(path, tmp_path):
    committed = nbformat.read(path, as_version=4)
    before = _tree(NOTEBOOK_DIR)
    # Raises CellExecutionError, with the cell and traceback, on any error.
    executed, _ = run.execute_notebook(path, scale=1)
    # Tuner projects, exports and saved models go to temporary directories.
    assert _tree(NOTEBOOK_DIR) == before
    nbformat.write(executed, tmp_path / path.name)
    assert run.code_sources(executed) == run.code_sources(committed)
    counts = [cell.execution_count for cell in _code_cells(executed)]
    assert counts == list(range(1, len(counts) + 1))
    assert not _errors(executed)
    assert _has_png(executed), f"{path.name} drew no plot."
    # The committed file is left alone.
    assert nbformat.read(path, as_version=4) == committed
