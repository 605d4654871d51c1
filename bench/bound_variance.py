"""Monte-Carlo spread of the likelihood bound: reported confidence intervals against repeated evaluations.

    python bench/bound_variance.py --checkpoint=runs/tiny --dataset=pystdlib --split=validation

For each t grid (iid, stratified) and each K, evaluates the same blocks with `--seeds` different seeds
(`sedd_jax.evaluate.evaluate_blocks`, what `sedd-evaluate` runs) and prints the mean bound, the reported
Monte-Carlo standard error (root mean square over seeds) and the standard deviation of the bound across
seeds (what the reported error estimates). docs/evaluation.md records the figures for configs/tiny.py.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from sedd_jax import evaluate, likelihood, pretrained  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, help="checkpoint directory (official, converted or workdir)")
    p.add_argument("--dataset", default="pystdlib", help="a sedd_jax.data dataset name")
    p.add_argument("--split", default="validation")
    p.add_argument("--files", default=None, help="data.files, for --dataset=files")
    p.add_argument("--cache_dir", default=None, help="TFDS data_dir and token caches")
    p.add_argument("--blocks", type=int, default=64, help="blocks, evenly spaced over the split")
    p.add_argument("--ks", default="16,64", help="comma-separated K (draws per block)")
    p.add_argument("--seeds", type=int, default=16, help="evaluations per (grid, K)")
    p.add_argument("--batch_size", type=int, default=32)
    args = p.parse_args()

    from sedd_jax.data import datasets

    model = pretrained.load(args.checkpoint)
    tok = model.tokenizer
    config = evaluate.data_config(model, int(model.config.model.length), args.files, args.cache_dir)
    blocks = datasets.load_blocks(config, model.path if model.is_workdir else None, args.dataset, args.split, tok)
    blocks = blocks[np.linspace(0, len(blocks) - 1, min(args.blocks, len(blocks))).astype(int)]
    print(f"{args.checkpoint}: {args.dataset} ({args.split}), {len(blocks)} of its blocks of "
          f"{blocks.shape[1]} tokens, {args.seeds} seeds per row")
    print("| t grid | K | mean bound (nats/token) | reported MC SE | SD across seeds | reported / actual |")
    print("|---|---|---|---|---|---|")
    for t_grid in likelihood.T_GRIDS:
        for k in (int(k) for k in args.ks.split(",")):
            runs = [evaluate.evaluate_blocks(model, blocks, mc_samples=k, seed=seed, t_grid=t_grid,
                                             batch_size=args.batch_size) for seed in range(args.seeds)]
            means = np.array([r["nats_per_token"] for r in runs])
            reported = float(np.sqrt(np.mean([r["mc_stderr_nats_per_token"] ** 2 for r in runs])))
            actual = float(means.std(ddof=1))
            print(f"| {t_grid} | {k} | {means.mean():.4f} | {reported:.4f} | {actual:.4f} | "
                  f"{reported / actual:.2f} |", flush=True)


if __name__ == "__main__":
    main()
