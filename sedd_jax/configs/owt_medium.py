"""SEDD medium (§0.1): 24 blocks, hidden 1024, 16 heads; otherwise the owt_small recipe.

The reference trains medium with gradient accumulation 2 on 8 x A100-80GB; on TPU, prefer FSDP
(--config.mesh.fsdp=N) and keep training.accum at 1 when memory allows. Uniform variant as in owt_small.
"""

from sedd_jax import models
from sedd_jax.configs import base_config


def get_config():
    c = base_config()
    c.model.update(models.model_config("medium"))
    c.training.accum = 2
    return c
