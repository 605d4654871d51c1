"""Sampler overhead: seconds per sampler step against one bare model forward of the same shape.

    python bench/bench_sampler.py [--size=tiny|small|medium] [--tokens=50257] [--graph=absorb]
        [--batch_size=8] [--length=128] [--steps=32] [--checkpoint=PATH]

A step of the sampler is one score evaluation (exp of the network's log-score) plus the predictor's
elementwise work over [B, L, V] and one categorical draw per position. Both are jitted and timed after a
warm-up compile; the sampler's time per model evaluation is total / (steps + 1) (the denoiser is one more
evaluation). Target: overhead <= 10%. Figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import functools
import time

import jax
import jax.numpy as jnp
import ml_collections

from sedd_jax import graphs, models, noise as noise_lib, sampling


def _time(fn, *args, repeats: int) -> float:
    jax.block_until_ready(fn(*args))  # compile + warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        best = min(best, time.perf_counter() - start)
    return best


def _exp_score(model, params, x, sigma):
    return jnp.exp(model.apply({"params": params}, x, sigma, train=False).astype(jnp.float32))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", default="tiny", choices=sorted(models.MODEL_SIZES))
    p.add_argument("--tokens", type=int, default=50257)
    p.add_argument("--graph", default="absorb", choices=("absorb", "uniform"))
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--length", type=int, default=128)
    p.add_argument("--steps", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--compute_dtype", default="float32")
    p.add_argument("--checkpoint", default=None, help="benchmark this checkpoint's model instead")
    args = p.parse_args()

    if args.checkpoint:
        from sedd_jax import pretrained
        loaded = pretrained.load(args.checkpoint, compute_dtype=args.compute_dtype)
        model, params, graph, noise = loaded.model, loaded.params, loaded.graph, loaded.noise
        name = args.checkpoint
    else:
        model_cfg = models.model_config(args.size)
        model_cfg.scale_by_sigma = args.graph == "absorb"
        config = ml_collections.ConfigDict(dict(tokens=args.tokens, graph=dict(type=args.graph),
                                                noise=dict(type="loglinear"), model=model_cfg))
        graph = graphs.get_graph(args.graph, args.tokens)
        noise = noise_lib.get_noise("loglinear") if args.graph == "absorb" else noise_lib.get_noise("geometric")
        model = models.get_model(config, args.compute_dtype)
        params = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 8), jnp.int32), jnp.zeros((1,), jnp.float32))
        params = params["params"]
        name = f"random-init {args.size}"
    b, l = args.batch_size, args.length
    print(f"{name}: graph {args.graph}, V = {graph.dim}, B = {b}, L = {l}, steps = {args.steps}, "
          f"device = {jax.devices()[0].device_kind} x {jax.device_count()}")

    score_fn = jax.tree_util.Partial(functools.partial(_exp_score, model), params)
    x = graph.sample_limit(jax.random.key(1), b, l)
    sigma = jnp.full((b,), 1.0)
    log_forward = jax.jit(lambda params, x, sigma: model.apply({"params": params}, x, sigma, train=False))
    t_log = _time(log_forward, params, x, sigma, repeats=args.repeats)
    print(f"  bare forward (log-score)              {t_log * 1e3:9.2f} ms")
    forward = jax.jit(lambda fn, x, sigma: fn(x, sigma))
    t_forward = _time(forward, score_fn, x, sigma, repeats=args.repeats)
    print(f"  bare forward (exp of log-score)       {t_forward * 1e3:9.2f} ms   <- overheads below are against this")
    for predictor in ("analytic", "euler"):
        for method in ("unbiased", "reference"):
            sampler = sampling.get_pc_sampler(graph, noise, (b, l), predictor, args.steps, method=method)
            run = jax.jit(sampler)
            t_total = _time(run, score_fn, jax.random.key(2), repeats=max(1, args.repeats - 1))
            per_eval = t_total / (args.steps + 1)
            print(f"  sampler {predictor:8s} {method:9s}  per step {per_eval * 1e3:9.2f} ms   "
                  f"overhead {100 * (per_eval / t_forward - 1):+6.1f}%")


if __name__ == "__main__":
    main()
