"""Small training configs for the trainer tests: a char-level corpus written by the test, a 1-block model."""

import gzip
import json
import os

from configs import tiny
from tests.data_testing import write_corpus

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

OVERRIDES = {
    "tokens": 28, "data.train": "files", "data.valid": "files", "data.tokenizer": "char",
    "model.hidden_size": 32, "model.n_heads": 2, "model.n_blocks": 1, "model.cond_dim": 16, "model.length": 32,
    "training.batch_size": 8, "eval.batch_size": 8, "training.n_iters": 20, "training.log_freq": 1,
    "training.eval_freq": 5, "training.snapshot_freq": 1000, "training.snapshot_freq_for_preemption": 5,
    "optim.warmup": 5, "sampling.steps": 4, "sampling.batch_size": 2,
}


def corpus(tmp_path) -> str:
    return write_corpus(tmp_path / "corpus", num_files=60, words_per_file=200)


def config(tmp_path, **overrides):
    """configs/tiny.py with OVERRIDES and `overrides` ({"training.n_iters": 10, ...} as keyword "a__b")."""
    c = tiny.get_config()
    c.data.files = corpus(tmp_path)
    c.data.cache_dir = str(tmp_path / "tfds")
    for path, value in {**OVERRIDES, **{k.replace("__", "."): v for k, v in overrides.items()}}.items():
        node = c
        *parents, leaf = path.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return c


def main_command(tmp_path, workdir, **overrides) -> list[str]:
    """`python -m sedd_jax.main` with the same config as `config(...)`, as command-line overrides."""
    flags = {**OVERRIDES, "data.files": corpus(tmp_path), "data.cache_dir": str(tmp_path / "tfds"),
             **{k.replace("__", "."): v for k, v in overrides.items()}}
    return (["python", "-m", "sedd_jax.main", f"--config={REPO}/configs/tiny.py", f"--workdir={workdir}"]
            + [f"--config.{k}={v}" for k, v in flags.items()])


def read_metrics(workdir) -> list[dict]:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def train_losses(workdir) -> dict[int, float]:
    return {m["step"]: m["train_loss"] for m in read_metrics(workdir) if "train_loss" in m}


def profiled_steps(logdir) -> list[list[int]]:
    """The train steps each `jax.profiler` trace in logdir/plugins/profile/ holds (its "train" step annotations),
    oldest trace first; each trace has the .xplane.pb that TensorBoard's Profile tab reads beside it."""
    traces = sorted((logdir / "plugins" / "profile").glob("*/*.trace.json.gz"))
    assert all(list(t.parent.glob("*.xplane.pb")) for t in traces)
    events = [json.load(gzip.open(t))["traceEvents"] for t in traces]
    return [sorted(int(e["args"]["step_num"]) for e in trace if e.get("name") == "train") for trace in events]
