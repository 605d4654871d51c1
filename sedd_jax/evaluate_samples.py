"""Generative perplexity: score SEDD samples with a GPT-2 judge (docs/evaluation.md).

    python -m sedd_jax.evaluate_samples --judge=gpt2-large --samples=samples.jsonl [--output=gen_ppl.json]
    python -m sedd_jax.evaluate_samples --judge=gpt2-large --checkpoint=sedd-small --num_samples=1000 \\
        --steps=1024 --predictor=analytic [--method=unbiased|reference] [--batch_size=8] [--seed=0] \\
        [--output=gen_ppl.json]

(or `sedd-evaluate-samples ...`; `--model_path` is an alias of `--checkpoint`, `--verbose` adds the traceback
to an error.)

The judge is a Hugging Face GPT-2 directory read by `sedd_jax.judge` (no torch): `huggingface-cli download
gpt2-large config.json model.safetensors --local-dir gpt2-large` fetches the paper's. Samples come from a
`python -m sedd_jax.sample --output=FILE.jsonl` file (one JSON object per line with `ids`, and `text` unless
it ran with --ids_only) or are drawn here from a checkpoint (`pretrained.load`, `sampling.sample_sequences`;
batch i uses fold_in(key(seed), i)).

Scoring (`--tokenize`): token ids are scored as they are when the samples' vocabulary is the judge's
(SEDD small/medium use GPT-2's BPE, so their ids go to a GPT-2 judge directly); otherwise the decoded text is
re-tokenized with the judge's tokenizer (GPT-2 BPE, for judges of 50257 tokens). `auto` (default) decides from
the checkpoint when sampling here, and scores a file's ids (they must lie in the judge's vocabulary); `ids` and
`text` force either. The output says which was done.

Reported (JSON): `generative_perplexity` = exp(mean NLL over all scored tokens), the reference's figure
`mean_sample_perplexity` = mean over samples of exp(mean NLL of the sample) (SEDD's run_train.py; never lower),
the first token of a sample (no context) unscored, no BOS added, EOS scored like any token; the unigram entropy
of the scored tokens (`unigram_entropy`, nats, mean over samples: low values flag repetitive, degenerate text
that a judge can score well); and the settings (steps, predictor, method, precision). Progress goes to stderr.
"""

from __future__ import annotations

import collections
import json
import math
import os
import sys
import time

import numpy as np

from sedd_jax import categorical, cli, compilation_cache, sample, sampling

TOKENIZE_MODES = ("auto", "ids", "text")
MAX_SAMPLES_FILE_BYTES = 4 << 30


def build_parser() -> cli.ArgumentParser:
    p = cli.ArgumentParser("sedd_jax.evaluate_samples", "sedd-evaluate-samples", __doc__)
    p.add_argument("--compilation_cache", default=None, help=compilation_cache.FLAG_HELP)
    p.add_argument("--judge", required=True, help="GPT-2 directory (config.json + model.safetensors)")
    p.add_argument("--samples", default=None, help="a .jsonl file written by `sedd_jax.sample --output`")
    p.add_argument("--checkpoint", "--model_path", dest="checkpoint", default=None,
                   help="sample here from this checkpoint instead of --samples")
    p.add_argument("--num_samples", type=int, default=None, help="samples to draw from --checkpoint")
    p.add_argument("--steps", type=int, default=None,
                   help=f"predictor steps (default: {sample.DEFAULT_STEPS}, the reference's run_sample.py default, for "
                        "every checkpoint so that figures compare; sedd-sample's follows the checkpoint's config)")
    p.add_argument("--predictor", default="analytic", help="analytic or euler")
    p.add_argument("--method", default="unbiased", help=f"categorical draw, one of {categorical.METHODS}")
    p.add_argument("--length", type=int, default=None,
                   help="sample length (default: the model's; longer ones extrapolate its rotary positions)")
    p.add_argument("--eps", type=float, default=1e-5, help="final time of the sampling grid")
    p.add_argument("--compute_dtype", default="float32", choices=("float32", "bfloat16"),
                   help="the sampling model's compute dtype")
    p.add_argument("--judge_dtype", default="float32", choices=("float32", "bfloat16"),
                   help="the judge's compute dtype")
    p.add_argument("--tokenize", default="auto", choices=TOKENIZE_MODES,
                   help="score ids as they are, or re-tokenize the decoded text with the judge's tokenizer")
    p.add_argument("--cache_dir", default=None, help="where the GPT-2 BPE files are cached (default "
                   "~/tensorflow_datasets; only needed to re-tokenize)")
    p.add_argument("--batch_size", type=int, default=8, help="sequences per sampling / judge call")
    p.add_argument("--seed", type=int, default=0, help="PRNG seed for sampling")
    p.add_argument("--output", default=None, help="write the result as JSON to this file")
    return p


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------- samples

def read_samples(path: str) -> list[dict]:
    """The records of a samples .jsonl file: each a JSON object with `ids` (a non-empty list of non-negative
    ints) and optionally `text` and the sampling settings. ValueError naming the file and line."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"samples file {path!r} does not exist (write one with `python -m sedd_jax.sample "
                                "--output=FILE.jsonl`, or sample here with --checkpoint)")
    size = os.path.getsize(path)
    if size > MAX_SAMPLES_FILE_BYTES:
        raise ValueError(f"{path} is {size} bytes, more than the {MAX_SAMPLES_FILE_BYTES} a samples file may have")
    records = []
    with open(path, "rb") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                raise ValueError(f"{path}:{number}: not a JSON line ({e})") from None
            if not isinstance(record, dict):
                raise ValueError(f"{path}:{number}: a sample is a JSON object with 'ids', got {type(record).__name__}")
            ids = record.get("ids")
            if (not isinstance(ids, list) or not ids
                    or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in ids)):
                raise ValueError(f"{path}:{number}: 'ids' must be a non-empty list of non-negative integers")
            if "text" in record and not isinstance(record["text"], str):
                raise ValueError(f"{path}:{number}: 'text' must be a string")
            records.append(record)
    if not records:
        raise ValueError(f"{path} holds no samples (expected one JSON object with 'ids' per line)")
    return records


def _setting(records: list[dict], key: str):
    """The value all records share for `key` (None when absent), or the sorted distinct values when they differ."""
    values = {json.dumps(r.get(key)) for r in records}
    if len(values) == 1:
        return json.loads(values.pop())
    return sorted(json.loads(v) for v in values)


def load_checkpoint(args):
    """The `pretrained.Pretrained` of args.checkpoint."""
    from sedd_jax import pretrained

    start = time.time()
    model = pretrained.load(args.checkpoint, compute_dtype=args.compute_dtype)
    _log(f"loaded {args.checkpoint} ({model.config.tokens} tokens, length {model.config.model.length}) in "
         f"{time.time() - start:.1f}s")
    return model


def draw(args, model, length: int) -> list[list[int]]:
    """args.num_samples sequences of `length` tokens from `model`; batch i uses fold_in(key(seed), i)."""
    import jax

    score_fn = model.score_fn
    key = jax.random.key(args.seed)
    rows: list[list[int]] = []
    start = time.time()
    for index in range(math.ceil(args.num_samples / args.batch_size)):
        ids = sampling.sample_sequences(score_fn, model.graph, model.noise, jax.random.fold_in(key, index),
                                        args.batch_size, length, args.steps, args.predictor, eps=args.eps,
                                        method=args.method,
                                        skip_unchanged=model.skips_unchanged(steps=args.steps, length=length))
        rows.extend(row.tolist() for row in ids[:args.num_samples - len(rows)])
        _log(f"sampled {len(rows)}/{args.num_samples} ({time.time() - start:.1f}s)")
    return rows


# --------------------------------------------------------------------------------------------- scoring

def judge_tokenizer(judge, cache_dir: str | None, why: str = ""):
    """The judge's tokenizer (GPT-2 BPE for a 50257-token judge); ValueError for other vocabularies."""
    if not judge.uses_gpt2_tokenizer:
        raise ValueError(f"{why}the judge's vocabulary ({judge.vocab_size} tokens) is not GPT-2's and has no "
                         "tokenizer sedd-jax knows, so text cannot be re-tokenized for it; use a GPT-2 judge, or "
                         "samples whose token ids are the judge's (--tokenize=ids)")
    from sedd_jax.data import tokenizers

    return tokenizers.build_tokenizer("gpt2", cache_dir=os.path.expanduser(cache_dir or "~/tensorflow_datasets"))


def retokenize(texts: list[str], tokenizer) -> list[list[int]]:
    """Texts -> judge ids, the EOS text (`tokenizer.eos_text`) mapped to `tokenizer.eos_id`."""
    rows = []
    for text in texts:
        row: list[int] = []
        for i, segment in enumerate(text.split(tokenizer.eos_text)):
            if i:
                row.append(tokenizer.eos_id)
            row.extend(tokenizer.encode(segment))
        rows.append(row)
    return rows


def unigram_entropy(row) -> float:
    """Entropy (nats) of the empirical distribution of the tokens of one sequence."""
    counts = np.array(list(collections.Counter(row).values()), dtype=np.float64)
    p = counts / counts.sum()
    return float(-(p * np.log(p)).sum())


def summarize(log_probs: list[np.ndarray], rows: list[list[int]]) -> dict:
    """Generative perplexity figures from per-sample token log-probs and the scored ids."""
    scored = [lp for lp in log_probs if lp.size]
    if not scored:
        raise ValueError("no sample has two or more tokens to score")
    total = float(sum(-lp.sum() for lp in scored))
    count = int(sum(lp.size for lp in scored))
    per_sample = [math.exp(-float(lp.mean())) for lp in scored]
    every = collections.Counter(t for row in rows for t in row)
    counts = np.array(list(every.values()), dtype=np.float64)
    return dict(
        nats_per_token=total / count, generative_perplexity=math.exp(total / count),
        mean_sample_perplexity=float(np.mean(per_sample)), median_sample_perplexity=float(np.median(per_sample)),
        scored_tokens=count, unigram_entropy=float(np.mean([unigram_entropy(r) for r in rows])),
        unigram_entropy_all_samples=float(-(counts / counts.sum() * np.log(counts / counts.sum())).sum()),
        distinct_tokens=len(every), per_sample_perplexity=per_sample)


# --------------------------------------------------------------------------------------------- main

def _check_args(args) -> None:
    if (args.samples is None) == (args.checkpoint is None):
        raise ValueError("give exactly one of --samples=FILE.jsonl (score a file) and --checkpoint=PATH (sample here)")
    if args.batch_size < 1:
        raise ValueError(f"--batch_size must be >= 1, got {args.batch_size}")
    if args.samples is not None:
        given = [f"--{k}" for k in ("num_samples", "steps", "length") if getattr(args, k) is not None]
        if given:
            raise ValueError(f"{', '.join(given)} only apply to sampling with --checkpoint; a samples file records "
                             "its own settings")
        return
    if args.num_samples is None or args.num_samples < 1:
        raise ValueError(f"--checkpoint needs --num_samples >= 1, got {args.num_samples}")
    if args.predictor not in ("analytic", "euler"):
        raise ValueError(f"--predictor must be analytic or euler, got {args.predictor!r}")
    categorical.check_method(args.method)
    if args.steps is None:
        args.steps = sample.DEFAULT_STEPS
    sampling.check_steps(args.steps)
    if args.length is not None and args.length < 1:
        raise ValueError(f"--length must be >= 1, got {args.length}")


def evaluate(args) -> dict:
    """Runs the evaluation the arguments describe and returns the result record."""
    from sedd_jax import judge as judge_lib

    _check_args(args)
    started = time.time()
    judge = judge_lib.load(args.judge, compute_dtype=args.judge_dtype)
    _log(f"loaded judge {args.judge} (GPT-2, {judge.config.n_layer} layers, n_embd {judge.config.n_embd}, "
         f"{judge.vocab_size} tokens, context {judge.config.n_positions}, {args.judge_dtype})")
    record: dict = dict(judge=args.judge, judge_vocab_size=judge.vocab_size,
                        judge_n_positions=judge.config.n_positions, judge_parameters=judge.config.num_parameters(),
                        judge_compute_dtype=args.judge_dtype)
    tokenizer = None
    if args.samples is not None:
        records = read_samples(args.samples)
        mode = "ids" if args.tokenize == "auto" else args.tokenize
        if mode == "text":
            missing = [i for i, r in enumerate(records) if "text" not in r]
            if missing:
                raise ValueError(f"{args.samples}: --tokenize=text needs a 'text' field, sample {missing[0]} has none "
                                 "(written with --ids_only?)")
            tokenizer = judge_tokenizer(judge, args.cache_dir)
        sample_rows = [r["ids"] for r in records]
        texts = [r.get("text") for r in records]
        record.update(source="samples", samples=args.samples, checkpoint=_setting(records, "checkpoint"),
                      steps=_setting(records, "steps"), predictor=_setting(records, "predictor"),
                      method=_setting(records, "method"), seed=_setting(records, "seed"),
                      prefix=_setting(records, "prefix"), suffix=_setting(records, "suffix"),
                      compute_dtype=None)
    else:
        model = load_checkpoint(args)
        tokens = int(model.config.tokens)
        kind = (model.config.get("data") or {}).get("tokenizer", "gpt2")
        same = tokens == judge.vocab_size and (kind == "gpt2" or not judge.uses_gpt2_tokenizer)
        mode = ("ids" if same else "text") if args.tokenize == "auto" else args.tokenize
        if mode == "ids" and tokens > judge.vocab_size:
            raise ValueError(f"the checkpoint has {tokens} tokens ({kind} tokenizer) and the judge {judge.vocab_size}; "
                             "its ids cannot be scored as the judge's (use --tokenize=text with a GPT-2 judge)")
        if mode == "text":
            why = (f"the checkpoint's vocabulary ({tokens} tokens, {kind} tokenizer) is not the judge's "
                   f"({judge.vocab_size} tokens), so its samples must be re-tokenized as text; " if not same else "")
            tokenizer = judge_tokenizer(judge, args.cache_dir, why)  # fail before sampling
            _ = model.tokenizer  # load it (or fail) before sampling, too
        length = sample.check_length(args.length, int(model.config.model.length))
        _log(f"sampling {args.num_samples} x {length} tokens, {args.steps} {args.predictor} steps, {args.method} "
             "draws (the first batch compiles the sampler)")
        sample_rows = draw(args, model, length)
        texts = [model.tokenizer.decode(row) for row in sample_rows] if mode == "text" else None
        record.update(source="checkpoint", checkpoint=args.checkpoint, num_samples=args.num_samples, length=length,
                      steps=args.steps, predictor=args.predictor, method=args.method, seed=args.seed, eps=args.eps,
                      compute_dtype=args.compute_dtype, sample_tokens=tokens, sample_tokenizer=kind)
    if mode == "text":
        rows = retokenize(texts, tokenizer)
        record["tokenization"] = "text: decoded samples re-tokenized with the judge's GPT-2 BPE"
    else:
        rows = sample_rows
        top = max(max(row) for row in rows)
        if top >= judge.vocab_size:
            raise ValueError(f"sample token id {top} is outside the judge's vocabulary [0, {judge.vocab_size}): the "
                             "samples come from another vocabulary; re-tokenize their text with --tokenize=text "
                             "(a GPT-2 judge), or use a judge of the samples' vocabulary")
        record["tokenization"] = "ids: sample token ids scored as they are (same vocabulary as the judge)"
    _log(f"scoring {len(rows)} samples ({record['tokenization'].split(':')[0]})")
    start = time.time()
    log_probs = judge.score_sequences(rows, batch_size=args.batch_size)
    record.update(num_samples=len(rows), **summarize(log_probs, rows), judge_seconds=time.time() - start,
                  wall_seconds=time.time() - started)
    return record


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status (0 ok, 1 bad input, judge or checkpoint, 2 usage)."""
    args = build_parser().parse_args(argv)

    def body():
        compilation_cache.enable(args.compilation_cache)
        record = evaluate(args)
        _log(f"generative perplexity {record['generative_perplexity']:.2f} (mean of per-sample perplexities "
             f"{record['mean_sample_perplexity']:.2f}), unigram entropy {record['unigram_entropy']:.3f} nats, "
             f"{record['num_samples']} samples, {record['scored_tokens']} scored tokens")
        text = json.dumps(record, indent=1)
        if args.output:
            from sedd_jax import files

            with files.atomic_write(args.output, mode="w") as f:
                f.write(text + "\n")
            _log(f"wrote {args.output}")
        print(json.dumps({k: v for k, v in record.items() if k != "per_sample_perplexity"}))

    return cli.report_errors(body, args.verbose)

def run() -> None:
    """Console script `sedd-evaluate-samples`."""
    sys.exit(main())


if __name__ == "__main__":
    run()
