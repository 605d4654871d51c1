"""The tiny official-format checkpoint with an offline tokenizer, for the evaluator's tests."""

import json
import os

from tests.conftest import TINY_CHECKPOINT


def char_checkpoint(directory):
    """`directory/sedd_tiny_char`: the tiny fixture (50 tokens) with the offline char tokenizer (28 ids); the
    weights are a symlink to the fixture's."""
    path = directory / "sedd_tiny_char"
    path.mkdir()
    config = json.loads((TINY_CHECKPOINT / "config.json").read_text())
    config["data"]["tokenizer"] = "char"
    (path / "config.json").write_text(json.dumps(config))
    os.symlink(TINY_CHECKPOINT / "pytorch_model.bin", path / "pytorch_model.bin")
    return path
