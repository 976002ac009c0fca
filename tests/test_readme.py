"""The README's quick start runs as written (on fewer rows)."""

import pathlib
import re

import pandas as pd

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def test_readme_shows_the_two_commands():
    text = README.read_text()
    assert "make demo" in text and "make test" in text


def test_quick_start_runs(capsys):
    text = README.read_text()
    (code,) = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert "synthetic_funnel(100_000" in code and "epochs=3" in code
    code = code.replace("100_000", "3_000").replace("epochs=3", "epochs=1")
    namespace = {}
    exec(compile(code, "README.md", "exec"), namespace)
    printed = capsys.readouterr().out
    assert "click" in printed and "watch_time" in printed
    report = namespace["metrics"].evaluate_report(
        namespace["model"],
        namespace["test_df"],
        namespace["tasks"],
        features=namespace["specs"],
    )
    assert isinstance(report, pd.DataFrame)
    assert list(report.index) == ["click", "conversion", "watch_time"]
