"""Executes the notebooks top to bottom with nbclient.

Usage (from the repository root):

    .venv/bin/python notebooks/run.py notebooks/01_quickstart.ipynb
    .venv/bin/python notebooks/run.py                 # every notebook
    .venv/bin/python notebooks/run.py --check         # run, write nothing
    KERAS_MTL_NOTEBOOK_SCALE=10 .venv/bin/python notebooks/run.py --check

By default each notebook is executed and written back in place with its
outputs, and its metadata is stamped with

    "keras_mtl": {"code_sha256": <sha256 of the code cells>,
                  "scale": <KERAS_MTL_NOTEBOOK_SCALE of the run>,
                  "seconds": <wall time of the run>,
                  "cpu_seconds": <CPU time of the kernel process>,
                  "load_average": [<1-minute load average at the start>,
                                   <and at the end>]}

so that `tests/test_notebooks.py` can tell when code was edited without
re-running. The CPU time and load averages say how busy the machine was: on
shared cores the wall time alone overstates what a run costs. `--check`
executes a temporary copy and leaves the file alone. A notebook with a
failing cell is never written.

The kernel is always an ipykernel on the interpreter running this script
(the project's `.venv`), whatever kernels Jupyter has registered. Low-level
output of the kernel process (TensorFlow's C++ start-up lines) goes to this
script's stderr, not into the notebook.
"""

import argparse
import hashlib
import os
import pathlib
import re
import sys
import tempfile
import time

import nbformat
from jupyter_client.kernelspec import KernelSpec
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import AsyncKernelManager
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

NOTEBOOK_DIR = pathlib.Path(__file__).resolve().parent
SCALE_VARIABLE = "KERAS_MTL_NOTEBOOK_SCALE"
STAMP_KEY = "keras_mtl"
KERNEL_NAME = "python3"
DEFAULT_TIMEOUT = 600  # seconds per cell

# C++ log lines that TensorFlow prints before TF_CPP_MIN_LOG_LEVEL applies
# (absl's pre-init warning and `I0000 12:00:00.000 123 file.cc:31] ...`).
_NOISE = re.compile(
    r"^(WARNING: All log messages before absl::InitializeLog\(\)"
    r"|[IWEF]\d{4} \d\d:\d\d:\d+\.\d+ +\d+ [\w./-]+:\d+\] )"
)


def notebooks():
    """Every notebook in `notebooks/`, in name order."""
    return sorted(NOTEBOOK_DIR.glob("*.ipynb"))


def code_sources(nb):
    """The sources of the code cells of `nb`, in order."""
    return [cell.source for cell in nb.cells if cell.cell_type == "code"]


def code_sha256(nb):
    """sha256 of the code cells' sources joined by NUL characters."""
    joined = "\0".join(code_sources(nb))
    return hashlib.sha256(joined.encode("utf-8")).hexdigest()


def _cpu_seconds(pid):
    """User + system CPU time of process `pid` and its reaped children."""
    import psutil

    times = psutil.Process(pid).cpu_times()
    return (
        times.user + times.system + times.children_user + times.children_system
    )


def read_scale(environ=None):
    """The scale a run uses: `KERAS_MTL_NOTEBOOK_SCALE`, or 1."""
    environ = os.environ if environ is None else environ
    text = environ.get(SCALE_VARIABLE, "1")
    try:
        scale = float(text)
    except ValueError:
        scale = -1.0
    if not scale > 0:
        raise ValueError(
            f"`{SCALE_VARIABLE}` must be a positive number. Received: {text!r}"
        )
    return scale


class _ThisInterpreterKernels(KernelSpecManager):
    """Resolves every kernel name to an ipykernel on `sys.executable`."""

    def get_kernel_spec(self, kernel_name):
        return KernelSpec(
            argv=[
                sys.executable,
                "-m",
                "ipykernel_launcher",
                "-f",
                "{connection_file}",
            ],
            display_name="Python 3 (ipykernel)",
            language="python",
            resource_dir=str(NOTEBOOK_DIR),
        )


def _tidy_outputs(nb):
    """Drops TensorFlow's C++ start-up lines; merges consecutive streams."""
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        kept = []
        for output in cell.get("outputs", []):
            if output.get("output_type") == "stream":
                lines = output.text.splitlines(keepends=True)
                output.text = "".join(
                    line for line in lines if not _NOISE.match(line)
                )
                if not output.text:
                    continue
                previous = kept[-1] if kept else None
                if (
                    previous is not None
                    and previous.get("output_type") == "stream"
                    and previous.name == output.name
                ):
                    previous.text += output.text
                    continue
            kept.append(output)
        cell.outputs = kept


def execute_notebook(path, scale=None, timeout=DEFAULT_TIMEOUT, usage=None):
    """Executes the notebook at `path` and returns it with its outputs.

    Args:
        path: path of the `.ipynb` file. It is read, never written.
        scale: float or None. Value of `KERAS_MTL_NOTEBOOK_SCALE` in the
            kernel. Defaults to the variable of this process, or 1.
        timeout: int. Seconds each cell may run. Defaults to 600.
        usage: dict or None. When given, filled with `load_average` (the
            1-minute load average before and after the run) and, where
            `psutil` is installed, `cpu_seconds` (CPU time of the kernel
            process after its last cell).

    Returns:
        `(nb, seconds)`: the executed `nbformat` notebook and the wall time.

    Raises:
        nbclient.exceptions.CellExecutionError: a cell raised.
    """
    path = pathlib.Path(path).resolve()
    scale = read_scale() if scale is None else float(scale)
    nb = nbformat.read(path, as_version=4)
    env = dict(os.environ)
    env[SCALE_VARIABLE] = repr(scale)
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    env["MPLBACKEND"] = "module://matplotlib_inline.backend_inline"
    kernel = AsyncKernelManager(
        kernel_name=KERNEL_NAME,
        kernel_spec_manager=_ThisInterpreterKernels(),
    )
    client = NotebookClient(
        nb,
        km=kernel,
        timeout=timeout,
        kernel_name=KERNEL_NAME,
        # TensorFlow's C++ logging bypasses Python; keep it out of cells.
        extra_arguments=["--IPKernelApp.capture_fd_output=False"],
        record_timing=False,
        resources={"metadata": {"path": str(path.parent)}},
    )
    usage = {} if usage is None else usage

    def sample_cpu(**_):
        process = getattr(kernel.provisioner, "process", None)
        if process is None:
            return
        try:
            usage["cpu_seconds"] = _cpu_seconds(process.pid)
        except (ImportError, OSError, ValueError):
            pass  # no psutil, or the kernel is gone: wall time only

    client.on_cell_executed = sample_cpu
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    client.execute(env=env)
    seconds = time.perf_counter() - start
    usage["load_average"] = [
        round(load_before, 2),
        round(os.getloadavg()[0], 2),
    ]
    _tidy_outputs(nb)
    nb.metadata["kernelspec"] = {
        "display_name": "Python 3 (ipykernel)",
        "language": "python",
        "name": KERNEL_NAME,
    }
    return nb, seconds


def stamp(nb, scale, seconds, usage=None):
    """Records which code and scale produced the outputs of `nb`.

    `usage` (from `execute_notebook`) adds `cpu_seconds` and `load_average`.
    """
    nb.metadata[STAMP_KEY] = {
        "code_sha256": code_sha256(nb),
        "scale": float(scale),
        "seconds": round(seconds, 1),
    }
    usage = usage or {}
    if "cpu_seconds" in usage:
        nb.metadata[STAMP_KEY]["cpu_seconds"] = round(usage["cpu_seconds"], 1)
    if "load_average" in usage:
        nb.metadata[STAMP_KEY]["load_average"] = list(usage["load_average"])
    return nb


def _describe(seconds, scale, usage):
    parts = [f"{seconds:.1f} s"]
    if "cpu_seconds" in usage:
        parts.append(f"cpu {usage['cpu_seconds']:.1f} s")
    if "load_average" in usage:
        before, after = usage["load_average"]
        parts.append(f"load {before:g} -> {after:g}")
    parts.append(f"scale {scale:g}")
    return ", ".join(parts)


def run(path, check=False, scale=None, timeout=DEFAULT_TIMEOUT):
    """Executes one notebook; writes it back in place unless `check`.

    Returns:
        `(ok, seconds)`.
    """
    path = pathlib.Path(path)
    scale = read_scale() if scale is None else float(scale)
    usage = {}
    try:
        nb, seconds = execute_notebook(
            path, scale=scale, timeout=timeout, usage=usage
        )
    except CellExecutionError as err:
        print(f"FAILED {path}:\n{err}", file=sys.stderr)
        return False, 0.0
    described = _describe(seconds, scale, usage)
    if check:
        with tempfile.TemporaryDirectory() as tmp:
            nbformat.write(nb, pathlib.Path(tmp) / path.name)
        print(f"ok     {path} ({described}, checked)")
    else:
        nbformat.write(stamp(nb, scale, seconds, usage), path)
        print(f"ok     {path} ({described}, written)")
    return True, seconds


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "paths",
        nargs="*",
        type=pathlib.Path,
        help="notebooks to run (default: every notebook in notebooks/)",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="execute a temporary copy; write nothing",
    )
    parser.add_argument(
        "--timeout",
        type=int,
        default=DEFAULT_TIMEOUT,
        help=f"seconds per cell (default {DEFAULT_TIMEOUT})",
    )
    args = parser.parse_args(argv)
    try:
        scale = read_scale()
    except ValueError as err:
        parser.error(str(err))
    paths = args.paths or notebooks()
    failed = [
        path
        for path in paths
        if not run(path, args.check, scale, args.timeout)[0]
    ]
    if failed:
        print(f"{len(failed)} notebook(s) failed: {failed}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
