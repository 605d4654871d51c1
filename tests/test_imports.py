"""The core imports only the JAX stack (design.md): no TensorFlow, TFDS, grain, orbax, clu or torch."""

import subprocess
import sys

from tests.train_testing import REPO

CHECK = """
import sys
from sedd_jax import graphs, noise, losses, sampling, pretrained, models, categorical
heavy = [m for m in ("tensorflow", "tensorflow_datasets", "grain", "orbax.checkpoint", "clu", "torch",
                     "sentencepiece") if m in sys.modules]
print("heavy:", heavy)
"""


def test_core_import_is_light():
    done = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert "heavy: []" in done.stdout, done.stdout + done.stderr


def _sedd_jax_imports() -> dict[str, set[str]]:
    """module -> the sedd_jax modules it imports anywhere (top level or inside functions), from the source."""
    import ast
    import pathlib

    root = pathlib.Path(REPO) / "sedd_jax"
    modules = {}
    for path in root.rglob("*.py"):
        parts = path.relative_to(root.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = path
    graph = {}
    for name, path in modules.items():
        imported = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                # `from package import submodule` names the submodule; `from module import name`, the module.
                imported |= {f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in modules
                             else node.module for alias in node.names}
        graph[name] = {m for m in imported if m in modules and m != name}
    return graph


def test_no_two_modules_import_each_other():
    graph = _sedd_jax_imports()
    assert graph["sedd_jax.train"] and "sedd_jax.checkpoints" in graph["sedd_jax.train"]  # the scan sees imports
    cycles = sorted((a, b) for a in graph for b in graph[a] if a < b and a in graph.get(b, ()))
    assert not cycles, cycles


def test_trainer_does_not_import_the_checkpoint_loader():
    done = subprocess.run([sys.executable, "-c", "import sys, sedd_jax.train; "
                           "print('pretrained' if 'sedd_jax.pretrained' in sys.modules else 'clean')"],
                          capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.stdout.strip() == "clean", done.stdout + done.stderr
