"""Likelihood-bound speed: one call of the evaluator's draw function (K DWDSE draws of each row), with the whole
network and, under the absorbing graph, with its last layers and the loss at masked positions only.

    python bench/likelihood.py [--size=bench|tiny|small|medium] [--tokens=N] [--length=256] [--batch_size=8]
        [--mc_samples=8] [--position_chunks=16] [--compute_dtype=float32] [--repeats=5]

Defaults: issue 8's side-by-side configuration (tokens 1000 absorb, hidden 256, 4 heads, 4 blocks, cond 128, length
256, batch 8, float32). `likelihood.draw_losses` is timed as `Pretrained.log_likelihood_bound`, `sedd-evaluate` and
the trainer's eval step run it, on random weights: the median wall time per call over --repeats calls of each path
(alternating, after a warm-up), draws of tokens per second, the compiled temporaries, and the largest difference
between the two paths' draws. Figures are printed, never asserted.
"""

from __future__ import annotations

import argparse

import common  # first: puts the repository on sys.path
import jax
import jax.numpy as jnp
import numpy as np

from sedd_jax import graphs, likelihood, models, noise as noise_lib


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    common.add_model_flags(p)
    p.add_argument("--mc_samples", type=int, default=8, help="draws per row in one call")
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    for name in ("mc_samples", "position_chunks", "repeats"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    config = common.config_from_flags(args)
    print(common.describe(config).split(", train:")[0] + f", {args.mc_samples} draws per row")
    print(common.device_line())
    graph = graphs.get_graph(config.graph.type, config.tokens)
    noise = noise_lib.from_config(config)
    model = models.get_model(config, config.model.compute_dtype)
    b, length = args.batch_size, config.model.length
    params = common.random_params(model)
    x0 = jax.random.randint(jax.random.key(1), (b, length), 0, graph.tokens, jnp.int32)
    ids, key = jnp.arange(b, dtype=jnp.int32), jax.random.key(2)

    paths = {"whole network": dict(log_score_fn=lambda p, x, s: model.apply({"params": p}, x, s))}
    if graph.absorb:
        paths["masked positions only"] = dict(log_score_fn=None, trunk_and_head=models.trunk_and_head(model),
                                              position_chunks=config.training.position_chunks)
    compiled, draws, seconds = {}, {}, {}
    for name, path in paths.items():
        draw = likelihood.draw_losses(graph=graph, noise=noise, mc_samples=args.mc_samples, **path)
        compiled[name] = jax.jit(draw).lower(params, x0, ids, key).compile()
        draws[name] = np.asarray(compiled[name](params, x0, ids, key))
        seconds[name] = []
    for _ in range(args.repeats):  # the paths alternate call by call, so that both see the same machine
        for name, fn in compiled.items():
            seconds[name] += common.time_calls(lambda: fn(params, x0, ids, key), 1)
    for name, fn in compiled.items():
        median = common.median(seconds[name])
        print(f"{name:22s}: median {median * 1e3:.1f} ms per call | {b * length * args.mc_samples / median:,.0f} "
              f"tokens x draws/s | {common.compiled_memory_line(fn)}")
    if graph.absorb:
        whole, masked = draws["whole network"], draws["masked positions only"]
        speedup = common.median(seconds["whole network"]) / common.median(seconds["masked positions only"])
        print(f"masked positions only: {speedup:.2f}x | largest difference of the draws "
              f"{np.max(np.abs(masked - whole)) / np.max(np.abs(whole)):.1e} of the largest draw")


if __name__ == "__main__":
    main()
