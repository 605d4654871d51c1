"""Shared test fixtures: the reference parity data and the tiny official-format checkpoint."""

import atexit
import os
import pathlib
import shutil
import tempfile

# Tests run on the host CPU (subprocesses inherit this). libtpu, installed by the test extra for its compiler
# only (tests/test_compile.py), may then be loaded by several test processes at once.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
# The command lines' persistent compilation cache (sedd_jax/compilation_cache.py) defaults to
# $XDG_CACHE_HOME/sedd_jax/xla: tests and their subprocesses write it to a temporary directory, not the home's.
if "sedd_jax_tests_cache_" not in os.environ.get("XDG_CACHE_HOME", ""):   # pytest-xdist workers inherit it
    os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="sedd_jax_tests_cache_")
    atexit.register(shutil.rmtree, os.environ["XDG_CACHE_HOME"], ignore_errors=True)

import numpy as np
import pytest

FIXTURES = pathlib.Path(__file__).parent / "fixtures"
TINY_CHECKPOINT = FIXTURES / "sedd_tiny_absorb_hf"


@pytest.fixture(scope="session")
def parity():
    """The reference outputs of ../shared/fixtures/sedd_parity_absorb.npz (see its README)."""
    return dict(np.load(FIXTURES / "sedd_parity_absorb.npz"))


# The fast loop: `python -m pytest -m "not slow"` skips the modules below (whole trainer runs, TPU and multi-process
# compiles, subprocess CLIs), two to three minutes on 2 cores; `python -m pytest -n auto --dist loadfile` (CI, README)
# runs everything.
SLOW_MODULES = {"test_train.py", "test_train_step.py", "test_multiprocess_train.py", "test_compile.py",
                "test_compile_slices.py",
                "test_notebook.py", "test_data_multiprocess.py", "test_sample_cli.py", "test_pretrained.py",
                "test_model_execution.py", "test_launch.py", "test_sampling.py", "test_evaluate.py",
                "test_evaluate_protocols.py", "test_cli.py", "test_core_install.py",
                "test_readme.py"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.path.name in SLOW_MODULES:
            item.add_marker(pytest.mark.slow)
