"""text8 at character level (27 characters + EOS), 90M/5M/5M split, SEDD small, 1M updates (D3PM setup).

Needs the text8 file: --config.data.files=/path/to/text8 (see docs/data.md). Sequence length 256 as in
D3PM. Uniform variant: --config.graph.type=uniform --config.noise.type=geometric
--config.model.scale_by_sigma=False.
"""

from sedd_jax.configs import base_config


def get_config():
    c = base_config()
    c.tokens = 28
    c.data.train = "text8"
    c.data.valid = "text8"
    c.data.tokenizer = "char"
    c.model.length = 256
    c.training.n_iters = 1_000_000
    return c
