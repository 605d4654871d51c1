"""Load time of the offline default corpus (pystdlib + SentencePiece), as configs/tiny.py uses it.

    python bench/bench_data.py [--workdir DIR] [--sp_vocab_size 4096] [--length 128]

Prints the first load (walk + read the standard library, train SentencePiece, tokenize, pack, first
batch) in a fresh workdir, then the cached rerun (tokenizer and token cache reused).
"""
import argparse
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import ml_collections  # noqa: E402

from sedd_jax import data  # noqa: E402


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--sp_vocab_size", type=int, default=4096)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--batch_size", type=int, default=32)
    args = parser.parse_args()
    workdir = args.workdir or tempfile.mkdtemp(prefix="sedd_bench_data_")
    shutil.rmtree(workdir, ignore_errors=True)
    config = ml_collections.ConfigDict(dict(
        tokens=args.sp_vocab_size, model=dict(length=args.length),
        training=dict(batch_size=args.batch_size, seed=0), eval=dict(batch_size=args.batch_size),
        data=dict(train="pystdlib", valid="pystdlib", tokenizer="sentencepiece", files="",
                  cache_dir=os.path.join(workdir, "tfds"), sp_vocab_size=args.sp_vocab_size,
                  num_workers=0)))
    for label in ("first load (fresh workdir, trains SentencePiece)", "cached rerun"):
        start = time.perf_counter()
        bundle = data.create_datasets(config, workdir, process_index=0, process_count=1)
        batch = next(bundle.train_iter)
        elapsed = time.perf_counter() - start
        print(f"{label}: {elapsed:.2f} s  (train {bundle.train_blocks} blocks, eval "
              f"{bundle.eval_blocks} blocks of {args.length}; batch {batch.shape} {batch.dtype})")
    start = time.perf_counter()
    for _ in range(100):
        next(bundle.train_iter)
    print(f"100 batches: {time.perf_counter() - start:.3f} s")
    if args.workdir is None:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
