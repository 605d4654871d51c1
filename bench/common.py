"""Shared pieces of the benchmarks: the benchmark configuration, median timing, memory and device figures.

Imports only the core (jax, flax, optax, ml_collections), so the benchmarks run on an accelerator machine that
has JAX but not TensorFlow, TFDS, grain or clu.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import flax  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from sedd_jax import configs, models  # noqa: E402

# The configuration of the side-by-side CPU comparison with the PyTorch reference (issue 8's table).
BENCH_MODEL = dict(hidden_size=256, n_heads=4, n_blocks=4, cond_dim=128, length=256, dropout=0.1,
                   attention="plain")  # plain attention is the faster on CPUs
BENCH_TOKENS = 1000


def add_model_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--size", default="bench", choices=["bench"] + sorted(models.MODEL_SIZES),
                        help="'bench': hidden 256, 4 heads, 4 blocks, cond 128 (the reference comparison)")
    parser.add_argument("--tokens", type=int, default=None, help="vocabulary (default: 1000 for bench, else 50257)")
    parser.add_argument("--graph", default="absorb", choices=("absorb", "uniform"))
    parser.add_argument("--length", type=int, default=None, help="sequence length (default: the size's)")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--compute_dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--dropout", type=float, default=None, help="default: the size's (0.1 for bench)")
    parser.add_argument("--attention", default=None, choices=("plain", "fused", "splash"),
                        help="default: the config's")
    parser.add_argument("--scan_blocks", type=int, default=None, choices=(0, 1), help="default: the config's")
    parser.add_argument("--remat", default=None, choices=sorted(models.REMAT_POLICIES), help="default: the config's")
    parser.add_argument("--time_conditioning", type=int, default=None, choices=(0, 1),
                        help="0: a time-independent network (absorb); default: the config's (1)")
    parser.add_argument("--masked_positions_only", type=int, default=None, choices=(0, 1),
                        help="absorb, training: the last layers and the loss at masked positions only; default: "
                             "the config's (1)")
    parser.add_argument("--position_chunks", type=int, default=None,
                        help="... in chunks of 1/N of each data shard's positions (training and the likelihood "
                             "bound); default: the config's (16)")


def config_from_flags(args):
    """A training config (sedd_jax.configs.base_config) with the benchmark's model, vocabulary and batch."""
    c = configs.base_config()
    size = BENCH_MODEL if args.size == "bench" else models.MODEL_SIZES[args.size]
    c.model.update(size)
    c.model.name = args.size
    c.tokens = args.tokens or (BENCH_TOKENS if args.size == "bench" else 50257)
    c.graph.type = args.graph
    if args.graph == "uniform":
        c.noise.type, c.model.scale_by_sigma = "geometric", False
    c.model.length = args.length or c.model.length
    c.model.compute_dtype = args.compute_dtype
    for field in ("dropout", "attention", "remat"):
        if getattr(args, field) is not None:
            c.model[field] = getattr(args, field)
    if args.scan_blocks is not None:
        c.model.scan_blocks = bool(args.scan_blocks)
    if args.time_conditioning is not None:
        c.model.time_conditioning = bool(args.time_conditioning)
    if args.masked_positions_only is not None:
        c.training.masked_positions_only = bool(args.masked_positions_only)
    if args.position_chunks is not None:
        c.training.position_chunks = args.position_chunks
    c.training.batch_size = args.batch_size
    c.eval.batch_size = args.batch_size
    configs.validate(c)
    return c


def random_params(model):
    """Parameters of `model` (a SEDD network) with random weights everywhere, the zero-initialised output and
    modulation layers included, so that its scores are not all equal."""
    params = flax.core.meta.unbox(jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 8), jnp.int32),
                                                      jnp.ones((1,)))["params"])
    leaves, tree = jax.tree.flatten(params)
    return jax.tree.unflatten(tree, [w + 0.02 * jax.random.normal(jax.random.key(i), w.shape)
                                     for i, w in enumerate(leaves)])


def describe(config) -> str:
    m = config.model
    return (f"{m.name}: hidden {m.hidden_size}, {m.n_heads} heads, {m.n_blocks} blocks, cond {m.cond_dim}, "
            f"tokens {config.tokens} {config.graph.type}, L {m.length}, batch {config.training.batch_size}, "
            f"{m.compute_dtype}, dropout {m.dropout}, attention {m.attention}, scan_blocks {m.scan_blocks}, "
            f"remat {m.remat}{'' if m.time_conditioning else ', time-independent'}"
            + (f", train: last layers at {'masked' if config.training.masked_positions_only else 'all'} positions"
               if config.graph.type == "absorb" else ""))


def device_line() -> str:
    """The device, and on CPUs the glibc malloc tunables (huge pages change CPU figures, bench/README.md)."""
    d = jax.devices()[0]
    line = f"device: {d.device_kind} x {jax.device_count()} ({jax.default_backend()}), jax {jax.__version__}"
    if jax.default_backend() == "cpu":
        line += f", GLIBC_TUNABLES={os.environ.get('GLIBC_TUNABLES', '(unset)')}"
    return line


def time_calls(fn, repeats: int) -> list[float]:
    """Wall seconds of `repeats` calls of `fn()` (each waited for with block_until_ready)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return times


def median(times: list[float]) -> float:
    return statistics.median(times)


def product_rate_line(rows: int, inner: int, cols: int, dtype) -> str:
    """The device's rate on one matrix product `[rows, inner] x [inner, cols]` in `dtype` (median of 20 calls,
    one jitted `jnp.matmul`). A step's speed is bounded by the kernels of the library under it, so side-by-side
    ratios depend on them: bench/torch_reference.py prints the same line for torch's (bench/README.md)."""
    a, b = jnp.ones((rows, inner), dtype), jnp.ones((inner, cols), dtype)
    product = jax.jit(jnp.matmul)
    seconds = median(time_calls(lambda: product(a, b), 21)[1:])  # the first call compiles
    return (f"one product [{rows}, {inner}] x [{inner}, {cols}] {jnp.dtype(dtype).name}: "
            f"{2 * rows * inner * cols / seconds / 1e9:,.1f} GFLOP/s (XLA, median of 20 calls)")


def peak_memory_line() -> str:
    """Peak memory so far: the accelerator's peak bytes in use, or the process's peak RSS on CPU."""
    stats = jax.local_devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        return f"peak device memory {stats['peak_bytes_in_use'] / 2**30:.2f} GiB"
    return f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB"


def save_program(text: str, path: str) -> None:
    """Writes a compiled program's text (`Compiled.as_text()`: the HLO after XLA's passes, on a GPU the autotuned
    one) to `path`, creating its directory, for `bench/roofline.py --hlo`."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


def compiled_memory_line(compiled) -> str:
    analysis = compiled.memory_analysis()
    if analysis is None:
        return "compiled memory: not reported on this backend"
    mib = lambda n: n / 2**20
    return (f"compiled memory per device: arguments {mib(analysis.argument_size_in_bytes):.1f} MiB, temporaries "
            f"{mib(analysis.temp_size_in_bytes):.1f} MiB, outputs {mib(analysis.output_size_in_bytes):.1f} MiB "
            f"(aliased {mib(analysis.alias_size_in_bytes):.1f} MiB)")
