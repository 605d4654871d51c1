"""README.md's Python snippets run as written, against the tiny official-format fixture (offline)."""

import re

import jax
import numpy as np

from tests import evaluate_testing
from tests.train_testing import REPO


def python_blocks(markdown: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", markdown, re.S)


def test_readme_python_snippets_run(tmp_path, monkeypatch, capsys):
    """Each ```python block is executed in order in one namespace, with the checkpoint name "sedd-small" pointing
    at the tiny fixture with the offline char tokenizer (the published checkpoints decode with GPT-2's, which
    downloads once)."""
    with open(f"{REPO}/README.md", encoding="utf-8") as f:
        blocks = python_blocks(f.read())
    assert len(blocks) >= 1 and any('pretrained.load("sedd-small")' in b for b in blocks)
    checkpoint = evaluate_testing.char_checkpoint(tmp_path)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sedd-small").symlink_to(checkpoint)
    namespace: dict = {}
    for i, block in enumerate(blocks):
        exec(compile(block, f"README.md python block {i}", "exec"), namespace)
    out = capsys.readouterr().out
    # What the snippets compute: shapes and the bound they print.
    model, length = namespace["model"], namespace["model"].config.model.length
    assert namespace["log_score"].shape == (1, len(namespace["text"]), model.graph.dim)
    assert namespace["nats"].shape == (1,) and np.isfinite(namespace["nats"]).all()
    assert namespace["bound"][0] > 0 and 0 < namespace["stderr"][0] < namespace["bound"][0]
    assert "-log p(text) <= " in out
    assert namespace["ids"].shape == (2, length) and len(namespace["texts"]) == 2
    assert all(t.startswith("the") and t.endswith("fox") for t in namespace["texts"])
    assert namespace["frames"].shape == (4, 1, length)
    assert isinstance(namespace["tokens"], jax.Array) and namespace["tokens"].shape == (2, length)
