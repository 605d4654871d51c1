"""The quickstart notebook runs: its code cells execute in order (with a shorter training run)."""

import json
import os

from tests.train_testing import REPO


def test_quickstart_notebook_runs(tmp_path, monkeypatch, capsys):
    with open(os.path.join(REPO, "notebooks", "quickstart.ipynb")) as f:
        notebook = json.load(f)
    sources = ["".join(c["source"]) for c in notebook["cells"] if c["cell_type"] == "code"]
    assert any("train.train_and_evaluate" in s for s in sources) and any("suffix=" in s for s in sources)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for source in sources:
        source = source.replace("N_ITERS = 300", "N_ITERS = 12")
        exec(compile(source, "quickstart.ipynb", "exec"), namespace)
    assert namespace["last"]["step"] == 12
    assert namespace["ids"].shape == (2, 128)
    assert all(t.startswith("def add(a, b):") and t.rstrip().endswith("return result") for t in namespace["texts"])
