"""Optional dependencies: imported where they are used, or an ImportError naming the pip extra to install.

The core install (`pip install sedd-jax`) loads checkpoints, samples and scores; the extras add:
  train  TensorFlow Datasets, TensorFlow, grain, clu, TensorBoard (the trainer, its data pipeline, TFDS datasets)
  gpt2   tiktoken (the GPT-2 tokenizer of OpenWebText and the official checkpoints)

    tfds = extras.require("tensorflow_datasets", "training data")
    # ModuleNotFoundError -> ImportError: training data needs TensorFlow Datasets: pip install "sedd-jax[train]"

TensorFlow prints start-up banners on stderr from its native libraries before their logging is set up, where
TF_CPP_MIN_LOG_LEVEL does not reach: absl's "All log messages before absl::InitializeLog() ..." and the oneDNN
notice (once per library: twice), and the CPU-instructions notice (TENSORFLOW_BANNERS). Modules that import
TensorFlow (TensorFlow Datasets, clu) are imported after a `quiet_tensorflow()` import that drops exactly those
lines and passes every other line through.
"""

from __future__ import annotations

import importlib
import os
import sys
import tempfile

# Top-level module -> (what it is called in messages, pip extra that installs it).
PACKAGES = {
    "tensorflow": ("TensorFlow", "train"),
    "tensorflow_datasets": ("TensorFlow Datasets", "train"),
    "grain": ("grain", "train"),
    "clu": ("clu", "train"),
    "tiktoken": ("tiktoken", "gpt2"),
}
IMPORTS_TENSORFLOW = ("tensorflow", "tensorflow_datasets", "clu")
TENSORFLOW_BANNERS = ("All log messages before absl::InitializeLog() is called are written to STDERR",
                      "oneDNN custom operations are on",
                      "This TensorFlow binary is optimized to use available CPU instructions",
                      "To enable the following instructions:")  # the second line of the one above


def missing_message(module: str, what: str, missing: str | None = None) -> str:
    """`<what> needs <package>: pip install "sedd-jax[<extra>]"` for `module` (or for `missing`, the module that
    could not be found while importing it, when that is another one)."""
    root = module.split(".")[0]
    name, extra = PACKAGES[root]
    missing_root = (missing or root).split(".")[0]
    if missing_root != root:
        name = f"{name} (which needs the missing module {missing_root!r})"
    return f'{what} needs {name}: pip install "sedd-jax[{extra}]"'


def require(module: str, what: str):
    """Imports and returns `module` (e.g. "grain", "clu.metric_writers"), a module of an extra (PACKAGES).
    When it or a module it imports is not installed: ImportError `<what> needs <package>: pip install
    "sedd-jax[<extra>]"`, without the import chain. TensorFlow is first imported by `quiet_tensorflow`."""
    if module.split(".")[0] in IMPORTS_TENSORFLOW:
        quiet_tensorflow(what)
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        raise ImportError(missing_message(module, what, e.name)) from None


def quiet_tensorflow(what: str):
    """Imports and returns TensorFlow with its start-up banners (TENSORFLOW_BANNERS) removed from stderr (file
    descriptor 2, where its native libraries write); every other line it writes there is written back. Not
    installed: the ImportError of `require`."""
    if sys.modules.get("tensorflow") is not None:
        return sys.modules["tensorflow"]
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            return importlib.import_module("tensorflow")
        except ModuleNotFoundError as e:
            raise ImportError(missing_message("tensorflow", what, e.name)) from None
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            lines = captured.read().decode("utf-8", errors="replace").splitlines(keepends=True)
            sys.stderr.write("".join(line for line in lines if not any(b in line for b in TENSORFLOW_BANNERS)))
            sys.stderr.flush()
