"""The reference recipe (§0, §4): SEDD small, absorb + loglinear, OpenWebText, GPT-2 tokenizer.

Batch 512, AdamW 3e-4 with 2500 warm-up steps, grad clip 1, EMA 0.9999, 400k updates (what the paper's
OpenWebText models were trained for), bf16 compute. Validation on WikiText-103.

Uniform-graph variant (the paper's SEDD Uniform): --config.graph.type=uniform --config.noise.type=geometric
--config.model.scale_by_sigma=False. On a pod, shard parameters with e.g. --config.mesh.fsdp=8.
"""

from sedd_jax.configs import base_config


def get_config():
    return base_config()
