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
