"""The notebooks run where users run them: each is executed by a Jupyter kernel (nbclient) started in a temporary
directory holding only the notebook, with the installed package and without the repository on its path; the
parameter cell is shortened (fewer steps; the checkpoint notebook reads the offline tiny fixture)."""

import importlib.util
import os
import re
import subprocess
import sys
import types

import nbformat
import pytest
from nbclient import NotebookClient

from tests.evaluate_testing import char_checkpoint
from tests.train_testing import REPO

MASK_TEXT = "\u2591"
# Appended to the executed copy: where the kernel runs and whether the repository's packages are importable.
PROBE = ('import importlib.util, os\n'
         'print("cwd:", os.getcwd())\n'
         'print("repo importable:", any(importlib.util.find_spec(m) is not None for m in ("configs", "tests")))')


def _set_parameters(notebook, parameters: dict) -> None:
    """Replaces `NAME = ...` lines of the notebook's parameter cell (the first code cell assigning them all)."""
    cell = next(c for c in notebook.cells if c.cell_type == "code"
                and all(re.search(rf"^{name} = ", c.source, re.M) for name in parameters))
    for name, value in parameters.items():
        cell.source = re.sub(rf"^{name} = .*$", f"{name} = {value!r}", cell.source, count=1, flags=re.M)


def _text(cell) -> str:
    return "".join(o.get("text", "") for o in cell.get("outputs", []) if o.output_type == "stream")


def execute(name: str, directory, monkeypatch, **parameters) -> list:
    """Runs notebooks/`name` in `directory` (a kernel whose PYTHONPATH lacks the repository) and returns its code
    cells with their outputs, the probe cell last."""
    notebook = nbformat.read(os.path.join(REPO, "notebooks", name), as_version=4)
    _set_parameters(notebook, parameters)
    notebook.cells.append(nbformat.v4.new_code_cell(PROBE))
    directory.mkdir()
    nbformat.write(notebook, str(directory / name))
    python_path = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep)
                   if p and os.path.realpath(p) != os.path.realpath(REPO)]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(python_path))
    NotebookClient(notebook, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(directory)}}).execute()
    cells = [c for c in notebook.cells if c.cell_type == "code"]
    assert _text(cells[-1]) == f"cwd: {directory}\nrepo importable: False\n"
    return cells


def _cell(cells, snippet: str):
    return next(c for c in cells if snippet in c.source)


def test_quickstart_notebook(tmp_path, monkeypatch):
    steps, iters = 8, 12
    cells = execute("quickstart.ipynb", tmp_path / "quickstart", monkeypatch, N_ITERS=iters, STEPS=steps)
    assert "from sedd_jax.configs import tiny" in cells[2].source and "sys.path" not in cells[2].source
    assert f"'step': {iters}" in _text(_cell(cells, "train.train_and_evaluate"))
    plots = [o for o in _cell(cells, "metrics.jsonl").outputs if o.output_type == "display_data"]
    assert len(plots) == 1 and plots[0].data["image/png"]
    frames = _text(_cell(cells, "sample_frames"))
    assert frames.startswith("(6, 2, 128)\n")
    assert re.findall(r"after step (\d+) of (\d+)", frames) == [(str(s), str(steps)) for s in (0, 2, 3, 5, 6, 8)]
    shown = re.split(r"-+ after step \d+ of \d+ -+\n", frames)[1:]
    assert shown[0] == MASK_TEXT * 128 + "\n"  # all MASK before the first step
    assert MASK_TEXT not in shown[-1] and shown[-1].strip()
    infilled = _text(_cell(cells, 'prefix="def add(a, b):"')).split("-" * 60 + "\n")[:-1]
    assert len(infilled) == 2 and all(t.startswith("def add(a, b):") and t.rstrip().endswith("return result")
                                      for t in infilled)


def test_checkpoint_notebook(tmp_path, monkeypatch):
    checkpoint = char_checkpoint(tmp_path)
    texts = ["the cat sat on the mat", "tam eht no tas tac eht"]
    cells = execute("checkpoint.ipynb", tmp_path / "checkpoint", monkeypatch, CHECKPOINT=str(checkpoint), STEPS=4,
                    BATCH=2, PREFIX="the ", SUFFIX=" end", TEXTS=texts, MC_SAMPLES=4)
    assert "tiny: length 32, vocabulary 50, Absorbing graph, LogLinear noise" in _text(_cell(cells, "pretrained.load"))
    sampled = _text(_cell(cells, "model.sample(jax.random.key(0)")).split("-" * 60 + "\n")
    assert len(sampled) == 3 and all(sampled[:2])
    infilled = _text(_cell(cells, "prefix=PREFIX")).split("-" * 60 + "\n")[:-1]
    assert len(infilled) == 2 and all(t.startswith("the ") and t.endswith(" end\n") for t in infilled)
    bounds = re.findall(r"bound +([\d.]+) \+- ([\d.]+) nats \(([\d.]+) per token\): '(.*)'",
                        _text(_cell(cells, "log_likelihood_bound")))
    assert [b[3] for b in bounds] == texts and all(float(b[0]) > 0 and float(b[1]) > 0 for b in bounds)


@pytest.mark.parametrize("name, extras", [("quickstart.ipynb", "notebook,train"),
                                          ("checkpoint.ipynb", "notebook,gpt2")])
def test_colab_install_cell(name, extras, monkeypatch):
    """On Colab without sedd-jax, the install cell pip-installs it from REPO_URL (no %cd, no restart); anywhere
    else, or when it is installed, it does nothing."""
    notebook = nbformat.read(os.path.join(REPO, "notebooks", name), as_version=4)
    install = next(c.source for c in notebook.cells if "REPO_URL =" in c.source)
    assert "%" not in install and "!" not in install  # plain Python: no shell escapes, no %cd
    calls = []
    monkeypatch.setattr(subprocess, "run", lambda command, check: calls.append(command))
    exec(install, {})
    assert calls == []  # not on Colab
    monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    exec(install, {})
    assert calls == []  # sedd-jax already installed
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "sedd_jax" else find_spec(n, *a))
    exec(install, {})
    assert calls == [[sys.executable, "-m", "pip", "install", "-q",
                      f"sedd-jax[{extras}] @ git+https://github.com/sedd-jax/sedd-jax"]]
