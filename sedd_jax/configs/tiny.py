"""The offline default: a small absorbing SEDD on Python's standard library source, trained on CPU.

    python -m sedd_jax.main --config=tiny --workdir=runs/tiny    # or --config=configs/tiny.py

No download: the corpus is the .py files of this Python installation (docs/data.md) and a SentencePiece
tokenizer is trained on it once and cached in the workdir. Sized to learn visibly in about 5 minutes on 2
CPU cores (loss falls from ~ln(tokens) nats/token at init).
"""

from sedd_jax.configs import base_config


def get_config():
    c = base_config()
    c.tokens = 2048                       # = the SentencePiece vocabulary (EOS included)
    c.data.train = "pystdlib"
    c.data.valid = "pystdlib"
    c.data.tokenizer = "sentencepiece"
    c.data.sp_vocab_size = 2048

    c.model.name = "tiny"
    c.model.hidden_size = 128
    c.model.n_heads = 4
    c.model.n_blocks = 4
    c.model.cond_dim = 64
    c.model.length = 128
    c.model.dropout = 0.0
    c.model.compute_dtype = "float32"     # bf16 matmuls are slow on CPUs
    c.model.attention = "plain"           # faster than XLA's dot_product_attention on CPUs (bench/README.md)

    c.training.batch_size = 32
    c.training.n_iters = 300               # ~5 minutes on 2 CPU cores
    c.training.log_freq = 10
    c.training.eval_freq = 100
    c.training.snapshot_freq = 300
    c.training.snapshot_freq_for_preemption = 100
    c.training.ema = 0.999                # short run: a shorter EMA horizon than the reference's 0.9999
    c.eval.batch_size = 32

    c.optim.lr = 1e-3
    c.optim.warmup = 100

    c.sampling.predictor = "analytic"
    c.sampling.steps = 64
    c.sampling.batch_size = 4
    return c
