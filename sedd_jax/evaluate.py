"""Likelihood-bound perplexity of a SEDD checkpoint on datasets (docs/evaluation.md, reference §4.2).

    python -m sedd_jax.evaluate --checkpoint=sedd-small --dataset=wikitext2,ptb,wikitext103,lambada,lm1b \\
        [--protocol=sedd|mdlm] [--split=test] [--mc_samples=1000] [--seed=0] [--batch_size=16] [--length=1024] \\
        [--t_grid=iid|stratified] [--output=results.json]

(or `sedd-evaluate ...`; `--model_path` is an alias of `--checkpoint`, `--verbose` adds the traceback to an
error.)

Protocol "sedd" (the paper's zero-shot protocol): the dataset's detokenizer, the checkpoint's tokenizer,
documents joined with EOS and packed into blocks of the model's length (no padding, no sliding window), EMA
weights for training workdirs, eval mode (no dropout), K Monte-Carlo draws of (t, x_t) per block. The bound
is mean over blocks and draws of the DWDSE loss / L, in nats per token; perplexity bound = exp(that). The
prior term KL(p_{1|0} || p_base) is omitted from the headline number, as in the paper, and reported
separately (`prior_kl_nats_per_token`, and `with_prior` figures). The 95% interval is the Monte-Carlo one,
mean +- 1.96 SE with SE from the per-block draws (`sedd_jax.likelihood`), for this fixed set of blocks.

Default split per dataset (the paper's): test, except wikitext2 (train; WikiText-2 and -103 share a test
set) and datasets without a test split (their evaluation split).

Protocol "mdlm" (MDLM's zero-shot table, Sahoo et al. 2024, and the papers that copy it): the same
detokenizers and tokenizer, but MDLM's "wrap" packing (kuleshov-group/mdlm `dataloader.py`): documents + EOS
concatenated, cut into chunks of L - 2, and every block is [BOS] + chunk + [EOS], with BOS = EOS (GPT-2's
<|endoftext|>, 50256; our tokenizers' EOS for the others). Default split: MDLM's validation loader, i.e.
validation, except lm1b, ag_news, text8 and lambada (test). docs/evaluation.md compares the two.

Datasets are read by `sedd_jax.data` (`--cache_dir` is the TFDS data directory and token cache; `--files`
the glob or file for files / text8 / lambada). Progress goes to stderr; one JSON result per dataset to
--output, naming the protocol, packing, split, detokenizer and source of each.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time

from sedd_jax import cli, compilation_cache

PROTOCOLS = ("sedd", "mdlm")
DEFAULT_MC_SAMPLES = 1000  # the paper's (App. C.6)
DEFAULT_SAMPLING_EPS = 1e-3  # the reference's loss
PAPER_SPLITS = {"wikitext2": "train"}  # others: "test" when the dataset has one, else its eval split
MDLM_TEST_SPLIT = frozenset({"text8", "lm1b", "ag_news", "lambada"})  # others: "validation" (if any)
PACKINGS = {
    "sedd": "sedd: documents + EOS concatenated and cut into blocks of length L; no padding",
    "mdlm": "mdlm-wrap: documents + EOS concatenated, cut into chunks of L - 2, each block [BOS] + chunk + [EOS]",
}


def build_parser() -> cli.ArgumentParser:
    p = cli.ArgumentParser("sedd_jax.evaluate", "sedd-evaluate", __doc__)
    p.add_argument("--compilation_cache", default=None, help=compilation_cache.FLAG_HELP)
    p.add_argument("--checkpoint", "--model_path", dest="checkpoint", required=True,
                   help="checkpoint directory (official, converted or workdir)")
    p.add_argument("--dataset", required=True, help="comma-separated dataset names (sedd_jax.data.DATASETS)")
    p.add_argument("--protocol", default="sedd", help=f"one of {PROTOCOLS}")
    p.add_argument("--split", default=None, help="split for every dataset (default: the protocol's per dataset)")
    p.add_argument("--mc_samples", type=int, default=DEFAULT_MC_SAMPLES, help="Monte-Carlo draws per block (K)")
    p.add_argument("--seed", type=int, default=0, help="PRNG seed")
    p.add_argument("--batch_size", type=int, default=8, help="blocks per call (rounded up to the device count)")
    p.add_argument("--length", type=int, default=None, help="block length (default and maximum: the model's)")
    p.add_argument("--t_grid", default="iid", help="iid (t ~ U[eps, 1]) or stratified (one t per 1/K stratum)")
    p.add_argument("--sampling_eps", type=float, default=DEFAULT_SAMPLING_EPS, help="t ~ U[eps, 1]")
    p.add_argument("--max_blocks", type=int, default=None, help="evaluate only the first N blocks")
    p.add_argument("--files", default=None, help="data.files: glob for 'files', the file for text8 / lambada")
    p.add_argument("--cache_dir", default=None, help="TFDS data_dir and token caches (default ~/tensorflow_datasets)")
    p.add_argument("--no_download", action="store_true", help="fail instead of downloading a missing dataset")
    p.add_argument("--compute_dtype", default="float32", choices=("float32", "bfloat16"),
                   help="the network's compute dtype (bfloat16: the reference's autocast policy)")
    p.add_argument("--output", default=None, help="write the results as JSON to this file")
    p.add_argument("--coordinator_address", default=None, help="HOST:PORT of process 0 of a multi-host evaluation "
                   "(with --num_processes, --process_id; TPU pod slices and SLURM are detected without them)")
    p.add_argument("--num_processes", type=int, default=None, help="processes of a multi-host evaluation")
    p.add_argument("--process_id", type=int, default=None, help="this process's index (0 writes the output)")
    return p


def _log(message: str) -> None:
    """Progress on stderr, from process 0 of a multi-host evaluation."""
    if "jax" not in sys.modules or sys.modules["jax"].process_index() == 0:
        print(message, file=sys.stderr, flush=True)


def default_split(name: str, protocol: str = "sedd") -> str:
    """The split a protocol evaluates by default: SEDD's paper (test; wikitext2: train) or MDLM's validation
    loader (validation; test for text8, lm1b, ag_news, and lambada, which has only test)."""
    from sedd_jax.data import sources

    spec = sources.get_spec(name)
    if protocol == "mdlm":
        if name not in MDLM_TEST_SPLIT and "validation" in spec.splits:
            return "validation"
        return "test" if "test" in spec.splits else spec.eval_split
    if name in PAPER_SPLITS:
        return PAPER_SPLITS[name]
    return "test" if "test" in spec.splits else spec.eval_split


def data_config(model, length: int, files: str | None = None, cache_dir: str | None = None,
                download: bool = True):
    """The ml_collections config that `sedd_jax.data.load_blocks` reads, for this checkpoint's tokenizer."""
    import ml_collections

    data = model.config.get("data") or {}
    return ml_collections.ConfigDict(dict(
        tokens=int(model.config.tokens), model=dict(length=int(length)), training=dict(seed=0),
        data=dict(tokenizer=data.get("tokenizer", "gpt2"), files=files or "", seed=0, download=bool(download),
                  cache_dir=cache_dir or "~/tensorflow_datasets", sp_vocab_size=data.get("sp_vocab_size", None))))


def check_tokenizer(model, tok, dataset: str) -> None:
    """Raises ValueError when the dataset or the checkpoint's vocabulary does not fit the tokenizer."""
    from sedd_jax.data import sources

    spec = sources.get_spec(dataset)
    if spec.tokenizer and spec.tokenizer != tok.name:
        raise ValueError(f"dataset {dataset!r} needs the {spec.tokenizer} tokenizer but the checkpoint uses "
                         f"{tok.name}")
    if tok.vocab_size > int(model.config.tokens):
        raise ValueError(f"the checkpoint's vocabulary (tokens={model.config.tokens}) does not match its "
                         f"{tok.name} tokenizer ({tok.vocab_size} ids): it was not trained on this tokenization")


class Progress:
    """A progress line on stderr (blocks/s, ETA), at most every `every` seconds and at the end."""

    def __init__(self, name: str, total: int, every: float = 10.0):
        self.name, self.total, self.every = name, total, every
        self.start = self.last = time.time()

    def __call__(self, done: int) -> None:
        now = time.time()
        if done < self.total and now - self.last < self.every:
            return
        self.last = now
        rate = done / max(now - self.start, 1e-9)
        eta = (self.total - done) / rate if rate > 0 else float("inf")
        _log(f"{self.name}: {done}/{self.total} blocks, {rate:.2f} blocks/s, ETA {_duration(eta)}")


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


def result_record(stats: dict, prior_kl: float) -> dict:
    """Adds bits, perplexities and 95% intervals to `likelihood.summarize` statistics."""
    nats, se = stats["nats_per_token"], stats["mc_stderr_nats_per_token"]
    half = 1.96 * se if math.isfinite(se) else float("nan")
    out = dict(stats)
    out.update(
        bits_per_token=nats / math.log(2), perplexity_bound=math.exp(nats),
        ci95_nats_per_token=[nats - half, nats + half],
        ci95_perplexity=[math.exp(nats - half), math.exp(nats + half)],
        prior_kl_nats_per_token=prior_kl,
        with_prior=dict(nats_per_token=nats + prior_kl, bits_per_token=(nats + prior_kl) / math.log(2),
                        perplexity_bound=math.exp(nats + prior_kl)))
    return out


def evaluate_blocks(model, blocks, *, mc_samples: int, seed: int = 0, t_grid: str = "iid",
                    sampling_eps: float = DEFAULT_SAMPLING_EPS, batch_size: int = 8, name: str = "eval") -> dict:
    """DWDSE bound of packed blocks `[N, L]` under a `pretrained.Pretrained`: the statistics of
    `likelihood.summarize` plus bits, perplexity, 95% intervals, the prior term and wall time.

    Block b's randomness is fold_in(key(seed), b): the numbers do not depend on batch_size or device count.
    """
    import jax
    import numpy as np

    from sedd_jax import likelihood

    likelihood.check_settings(mc_samples, t_grid, sampling_eps)
    n = len(blocks)
    if n == 0:
        raise ValueError(f"{name}: no blocks to evaluate")
    start = time.time()
    mesh = likelihood.local_mesh()
    draw_fn = model.draw_losses_fn(mc_samples, t_grid, sampling_eps)
    # Process p of P scores blocks p, p + P, ... on its own devices; the draws are gathered on every process.
    mine = np.arange(jax.process_index(), n, jax.process_count())
    progress = Progress(name, len(mine))
    draws = likelihood.run_draws(draw_fn, model.params, blocks[mine], mine, jax.random.key(int(seed)),
                                 batch_size, multiple=mesh.devices.size, on_batch=progress, mesh=mesh)
    draws = _gather_blocks(draws, mine, n, mc_samples)
    stats = likelihood.summarize(draws, blocks.shape[1], t_grid)
    prior_kl, prior_base = likelihood.prior_kl_per_token(model.graph, model.noise, model.config.graph.type)
    record = result_record(stats, prior_kl)
    record.update(prior_base=prior_base, wall_time_s=time.time() - start,
                  devices=int(mesh.devices.size) * jax.process_count(), processes=jax.process_count())
    return record


def _gather_blocks(draws, mine, n: int, mc_samples: int):
    """float64 `[n, K]` draws of all blocks from each process's `[len(mine), K]` draws of blocks `mine`."""
    import jax
    import numpy as np

    if jax.process_count() == 1:
        return draws
    from jax.experimental import multihost_utils

    rows = -(-n // jax.process_count())
    padded = np.zeros((rows, mc_samples), np.float32)          # the draws are float32 on the devices: exact
    padded[:len(mine)] = draws
    gathered = np.asarray(multihost_utils.process_allgather(padded), np.float64)       # [P, rows, K]
    out = np.empty((n, mc_samples), np.float64)
    for process in range(jax.process_count()):
        index = np.arange(process, n, jax.process_count())
        out[index] = gathered[process, :len(index)]
    return out


def evaluate_from_args(args) -> dict:
    """Loads the checkpoint and datasets and evaluates; raises ValueError/FileNotFoundError/... for the user."""
    from sedd_jax import likelihood
    from sedd_jax.data import datasets, sources

    if args.protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {args.protocol!r}; choose one of {', '.join(PROTOCOLS)}")
    likelihood.check_settings(args.mc_samples, args.t_grid, args.sampling_eps)
    if args.batch_size < 1:
        raise ValueError(f"--batch_size must be >= 1, got {args.batch_size}")
    if args.max_blocks is not None and args.max_blocks < 1:
        raise ValueError(f"--max_blocks must be >= 1, got {args.max_blocks}")
    names = [n.strip() for n in args.dataset.split(",") if n.strip()]
    if not names:
        raise ValueError("--dataset is empty")
    splits = {}
    for name in names:
        spec = sources.get_spec(name)  # unknown dataset: ValueError listing the known ones
        split = args.split or default_split(name, args.protocol)
        if split not in spec.splits:
            raise ValueError(f"dataset {name!r} has no split {split!r}; it has {', '.join(spec.splits)}")
        splits[name] = split

    from sedd_jax import pretrained

    start = time.time()
    model = pretrained.load(args.checkpoint, compute_dtype=args.compute_dtype)
    model_length = int(model.config.model.length)
    length = int(args.length or model_length)
    if length < 1 or length > model_length:
        raise ValueError(f"--length={length} must be between 1 and the model's length {model_length}")
    _log(f"loaded {args.checkpoint} ({model.config.graph.type} graph, {model.config.tokens} tokens, length "
         f"{model_length}) in {time.time() - start:.1f}s")
    kind = (model.config.get("data") or {}).get("tokenizer", "gpt2")
    if kind == "gpt2" and args.cache_dir and not os.environ.get("TIKTOKEN_CACHE_DIR"):  # the data layer's place
        os.environ["TIKTOKEN_CACHE_DIR"] = os.path.join(os.path.expanduser(args.cache_dir), "tiktoken")
    tok = model.tokenizer
    for name in names:
        check_tokenizer(model, tok, name)
    config = data_config(model, length, args.files, args.cache_dir, download=not args.no_download)
    workdir = model.path if model.is_workdir else None
    bos_eos = (int(tok.eos_id), int(tok.eos_id)) if args.protocol == "mdlm" else None  # MDLM: BOS = EOS id
    results = []
    for name in names:
        spec = sources.get_spec(name)
        blocks = datasets.load_blocks(config, workdir, name, splits[name], tok, bos_eos=bos_eos)
        total_blocks = len(blocks)
        if args.max_blocks:
            blocks = blocks[:args.max_blocks]
        _log(f"{name} ({splits[name]}): {len(blocks)} of {total_blocks} blocks of {length} tokens, "
             f"K={args.mc_samples} {args.t_grid} draws each (the first batch compiles)")
        record = evaluate_blocks(model, blocks, mc_samples=args.mc_samples, seed=args.seed, t_grid=args.t_grid,
                                 sampling_eps=args.sampling_eps, batch_size=args.batch_size, name=name)
        record = dict(dataset=name, split=splits[name], detokenizer=spec.detokenizer,
                      source=dict(kind=spec.kind, tfds_name=spec.tfds_name or None,
                                  field=spec.field if isinstance(spec.field, str) else list(spec.field)),
                      protocol=args.protocol, packing=PACKINGS[args.protocol],
                      bos_id=bos_eos[0] if bos_eos else None, eos_id=int(tok.eos_id), total_blocks=total_blocks,
                      **record)
        lo, hi = record["ci95_perplexity"]
        _log(f"{name}: {record['nats_per_token']:.4f} nats/token, {record['bits_per_token']:.4f} bits/token, "
             f"perplexity <= {record['perplexity_bound']:.2f} (95% CI {lo:.2f}-{hi:.2f}), {record['tokens']} "
             f"tokens, {record['wall_time_s']:.1f}s")
        results.append(record)
    protocol = dict(protocol=args.protocol, packing=PACKINGS[args.protocol],
                    splits=dict(splits), split_rule=("--split" if args.split else f"{args.protocol} default"),
                    checkpoint=os.path.abspath(os.path.expanduser(args.checkpoint)),
                    graph=model.config.graph.type, tokenizer=tok.name, length=length, model_length=model_length,
                    mc_samples=int(args.mc_samples), t_grid=args.t_grid, seed=int(args.seed),
                    sampling_eps=float(args.sampling_eps), batch_size=int(args.batch_size),
                    max_blocks=args.max_blocks, compute_dtype=args.compute_dtype,
                    weights="ema" if model.is_workdir else "checkpoint", train=False,
                    prior_term="omitted from nats_per_token / perplexity_bound; see with_prior",
                    ci95="mean +- 1.96 Monte-Carlo standard error (docs/evaluation.md)")
    return dict(protocol=protocol, results=results)


def _json_safe(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status (0 ok, 1 bad input, checkpoint or data, 2 usage)."""
    args = build_parser().parse_args(argv)

    def body():
        compilation_cache.enable(args.compilation_cache)
        from sedd_jax import parallel

        parallel.initialize_processes(args.coordinator_address, args.num_processes, args.process_id)
        report = evaluate_from_args(args)
        import jax

        if jax.process_index() != 0:       # every process holds the same report; process 0 writes it
            return 0
        if args.output:
            from sedd_jax import files

            with files.atomic_write(args.output, mode="w") as f:
                json.dump(_json_safe(report), f, indent=1)
            _log(f"wrote {args.output}")
        print(json.dumps(_json_safe(report)["results"]))

    return cli.report_errors(body, args.verbose)

def run() -> None:
    """Console script `sedd-evaluate`."""
    sys.exit(main())


if __name__ == "__main__":
    run()
