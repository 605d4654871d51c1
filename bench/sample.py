"""Sampling speed: time per full sampler run and per model evaluation, against a bare forward.

    python bench/sample.py [--size=bench|tiny|small|medium] [--length=256] [--batch_size=8] [--steps=128]
        [--predictors=analytic,euler] [--methods=unbiased] [--compute_dtype=float32] [--checkpoint=PATH]
        [--repeats=3] [--unchanged_steps] [--time_conditioning=0 --skip_unchanged [--rows_per_call=K]]

Defaults reproduce issue 8's side-by-side configuration (tokens 1000 absorb, hidden 256, 4 heads, 4 blocks,
cond 128, length 256, batch 8, float32; 128 predictor steps + the denoiser, i.e. 129 network evaluations).
The baseline is one bare network evaluation doing the same work as a sampler's (forward + exp of the
log-score, `models.exp_score`). Each figure is a median over --repeats runs after a warm-up compile.
--unchanged_steps also counts how often a predictor step changes no token (per sequence and per batch):
the steps a time-independent network could skip. --skip_unchanged (with a time-independent network:
--time_conditioning=0 or such a checkpoint) also times the sampler that evaluates the network only on the
sequences that changed (`get_pc_sampler(..., skip_unchanged=True)`), and counts the rows it evaluated.
Figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import functools

import common  # first: puts the repository on sys.path
import jax
import jax.numpy as jnp
import numpy as np

from sedd_jax import graphs, models, noise as noise_lib, pretrained, sampling


def _unchanged_steps(graph, noise, score_fn, predictor: str, steps: int, batch_dims, eps: float = 1e-5):
    """Fractions of predictor steps that change no token of a sequence / of the whole batch (one run)."""
    step_fn = jax.jit(functools.partial(sampling.PREDICTOR_FNS[predictor], graph, noise, score_fn),
                      static_argnames="dt")
    timesteps = np.linspace(1.0, eps, steps + 1, dtype=np.float32)
    x = graph.sample_limit(jax.random.key(7), *batch_dims).astype(jnp.int32)
    per_sequence, per_batch = 0, 0
    for i in range(steps):
        t = jnp.full(batch_dims[:1], timesteps[i], jnp.float32)
        new = step_fn(jax.random.fold_in(jax.random.key(8), i), x, t, dt=(1.0 - eps) / steps).astype(jnp.int32)
        unchanged = np.asarray((new == x).all(axis=1))
        per_sequence += unchanged.sum()
        per_batch += unchanged.all()
        x = new
    return per_sequence / (steps * batch_dims[0]), per_batch / steps


def _rows_evaluated(sampler, score_fn, key) -> int:
    """Network rows (sequences) a sampler run evaluates, counted by a host callback in the score function."""
    rows = []

    def counted(fn, x, sigma):
        jax.debug.callback(lambda n: rows.append(int(n)), jnp.int32(x.shape[0]))
        return fn(x, sigma)

    jax.block_until_ready(jax.jit(sampler)(jax.tree_util.Partial(counted, score_fn), key))
    jax.effects_barrier()
    return sum(rows)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    common.add_model_flags(p)
    p.add_argument("--steps", type=int, default=128)
    p.add_argument("--predictors", default="analytic,euler")
    p.add_argument("--methods", default="unbiased", help="categorical draws: unbiased,reference")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--checkpoint", default=None, help="benchmark this checkpoint's model instead")
    p.add_argument("--unchanged_steps", action="store_true")
    p.add_argument("--skip_unchanged", action="store_true",
                   help="also time the sampler that skips unchanged sequences (a time-independent network)")
    p.add_argument("--rows_per_call", type=int, default=None,
                   help="with --skip_unchanged: rows per network call (default: the changed rows, padded to a "
                        "power of two)")
    args = p.parse_args()

    if args.checkpoint:
        loaded = pretrained.load(args.checkpoint, compute_dtype=args.compute_dtype)
        model, params, graph, noise = loaded.model, loaded.params, loaded.graph, loaded.noise
        length = args.length or loaded.config.model.length
        print(f"checkpoint {args.checkpoint}")
    else:
        config = common.config_from_flags(args)
        print(common.describe(config))
        graph = graphs.get_graph(config.graph.type, config.tokens)
        noise = noise_lib.get_noise(config.noise.type, eps=config.noise.eps, sigma_min=config.noise.sigma_min,
                                    sigma_max=config.noise.sigma_max)
        model = models.get_model(config, config.model.compute_dtype)
        length = config.model.length
        params = common.random_params(model)
    print(common.device_line())
    b = args.batch_size
    score_fn = jax.tree_util.Partial(functools.partial(models.exp_score, model), params)
    x = graph.sample_limit(jax.random.key(1), b, length)
    sigma = jnp.full((b,), 1.0)

    forward = jax.jit(lambda fn, x, sigma: fn(x, sigma))
    common.time_calls(lambda: forward(score_fn, x, sigma), 1)
    t_forward = common.median(common.time_calls(lambda: forward(score_fn, x, sigma), max(5, 2 * args.repeats)))
    print(f"bare forward + exp [{b}, {length}, {graph.dim}]: median {t_forward * 1e3:.1f} ms")
    for predictor in args.predictors.split(","):
        for method in args.methods.split(","):
            run = jax.jit(sampling.get_pc_sampler(graph, noise, (b, length), predictor, args.steps, method=method))
            common.time_calls(lambda: run(score_fn, jax.random.key(2)), 1)
            total = common.median(common.time_calls(lambda: run(score_fn, jax.random.key(2)), args.repeats))
            per_eval = total / (args.steps + 1)
            print(f"{predictor:8s} {method:9s} {args.steps} steps + denoiser: median {total:.2f} s | "
                  f"{per_eval * 1e3:.1f} ms per evaluation ({100 * (per_eval / t_forward - 1):+.1f}% over a bare "
                  f"forward) | {b * length / total:,.0f} tokens/s | {common.peak_memory_line()}")
            if args.skip_unchanged:
                skipping = jax.jit(sampling.get_pc_sampler(graph, noise, (b, length), predictor, args.steps,
                                                           method=method, skip_unchanged=True,
                                                           rows_per_call=args.rows_per_call))
                same = np.array_equal(skipping(score_fn, jax.random.key(2)), run(score_fn, jax.random.key(2)))
                fast = common.median(common.time_calls(lambda: skipping(score_fn, jax.random.key(2)), args.repeats))
                rows = _rows_evaluated(skipping, score_fn, jax.random.key(2))
                print(f"         skip_unchanged (rows_per_call {args.rows_per_call}): median {fast:.2f} s | "
                      f"{total / fast:.2f}x | {b * length / fast:,.0f} tokens/s | network rows evaluated {rows} of "
                      f"{b * (args.steps + 1)} ({100 * rows / (b * (args.steps + 1)):.1f}%) | same samples: {same}")
            if args.unchanged_steps and predictor != "none":
                sequence, batch = _unchanged_steps(graph, noise, score_fn, predictor, args.steps, (b, length))
                print(f"         steps changing no token: {100 * sequence:.1f}% per sequence, {100 * batch:.1f}% "
                      f"per batch (closed form for absorb + loglinear: ~exp(-L/steps) = "
                      f"{100 * np.exp(-length / args.steps):.1f}% and exp(-B L/steps) = "
                      f"{100 * np.exp(-b * length / args.steps):.3g}%)")


if __name__ == "__main__":
    main()
