"""Analytic FLOP counts of the SEDD network and model-FLOPs utilisation (MFU).

Counts are matmul FLOPs (2 per multiply-add) of the network as written, with bidirectional attention (every
query attends to all L keys: no causal halving). Elementwise work (LayerNorm, softmax, rotary, GELU) is left
out, as is usual for MFU. A training step costs 3x the forward (the backward pass is two matmuls per forward
matmul); recomputation under `model.remat` is not counted, so MFU measures useful work only.
"""

from __future__ import annotations

from sedd_jax.models.transformer import FREQUENCY_EMBEDDING_SIZE

# Dense (no sparsity) peak matmul throughput per chip in TFLOP/s, from the vendors' data sheets.
PEAK_TFLOPS = {
    # device_kind prefix: {compute dtype: TFLOP/s}
    "NVIDIA H200": {"bfloat16": 989.0, "float32": 494.7},   # float32 via TF32 tensor cores
    "NVIDIA H100": {"bfloat16": 989.0, "float32": 494.7},
    "NVIDIA A100": {"bfloat16": 312.0, "float32": 156.0},
    "TPU v4": {"bfloat16": 275.0},
    "TPU v5 lite": {"bfloat16": 197.0},
    "TPU v5e": {"bfloat16": 197.0},
    "TPU v5p": {"bfloat16": 459.0},
    "TPU v5": {"bfloat16": 459.0},
    "TPU v6 lite": {"bfloat16": 918.0},
    "TPU v6e": {"bfloat16": 918.0},
}


def forward_flops_per_token(config, vocab_size: int) -> float:
    """Forward matmul FLOPs per token of the network of `config.model.*` at length `config.model.length`.

    Per block: q/k/v, attention output and the 4x MLP (24 H^2), scores and weighted values (4 L H), and the
    block's adaLN modulation (2 C 6H per sequence, i.e. / L per token). Plus the output layer (2 H V), the
    final modulation and the noise-conditioning MLP (per sequence, / L)."""
    m = config.model
    hidden, cond, length, blocks = int(m.hidden_size), int(m.cond_dim), int(m.length), int(m.n_blocks)
    per_block = 24 * hidden**2 + 4 * length * hidden + 2 * cond * 6 * hidden / length
    per_sequence = 2 * FREQUENCY_EMBEDDING_SIZE * cond + 2 * cond * cond + 2 * cond * 2 * hidden
    return blocks * per_block + 2 * hidden * vocab_size + per_sequence / length


def train_flops_per_token(config, vocab_size: int) -> float:
    """Forward + backward matmul FLOPs per token (3x the forward)."""
    return 3 * forward_flops_per_token(config, vocab_size)


def peak_flops(device_kind: str, compute_dtype: str) -> float | None:
    """Peak FLOP/s of one chip for `compute_dtype`, or None when the chip is not in `PEAK_TFLOPS` (CPUs)."""
    for prefix in sorted(PEAK_TFLOPS, key=len, reverse=True):
        if device_kind.startswith(prefix):
            tflops = PEAK_TFLOPS[prefix].get(compute_dtype)
            return None if tflops is None else tflops * 1e12
    return None


def mfu(flops_per_second_per_chip: float, device_kind: str, compute_dtype: str) -> float | None:
    """Achieved / peak FLOP/s on one chip, or None where the peak is unknown."""
    peak = peak_flops(device_kind, compute_dtype)
    return None if peak is None else flops_per_second_per_chip / peak
