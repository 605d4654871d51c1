"""Sample from a SEDD checkpoint: `python -m sedd_jax.sample --checkpoint=PATH --batch_size=N --steps=S`.

    python -m sedd_jax.sample --checkpoint=sedd-small --batch_size=4 --steps=256 --predictor=analytic \\
        [--prefix="Hi, my name is"] [--suffix=" and that's why I'm late."] [--seed=0] [--output=samples.jsonl]

(or `sedd-sample ...`). PATH (alias --model_path, the official scripts' name) is anything `pretrained.load`
reads: an official-format directory (`huggingface-cli download louaaron/sedd-small --local-dir sedd-small`
fetches one), a `sedd_jax.convert` output or a training workdir. `--steps` defaults to the checkpoint config's
`sampling.steps` when it records one, else 1024 (the reference's run_sample.py default). `--length` may exceed
the model's trained length (with a warning: rotary positions beyond it extrapolate and quality degrades).
Samples are decoded with the checkpoint's tokenizer (GPT-2 for official checkpoints: it is fetched from the
network once; offline, the error says what to pre-download) and printed, separated by lines of '='.
`--ids_only` skips the tokenizer and prints token ids (prompts then come as `--prefix_ids=1,2,3`).
`--output=FILE.jsonl` also writes one JSON object per sample. Progress goes to stderr.
"""

from __future__ import annotations

import json
import sys
import time

from sedd_jax import categorical, cli, compilation_cache, sampling

DEFAULT_STEPS = 1024  # the reference's run_sample.py default


def build_parser() -> cli.ArgumentParser:
    p = cli.ArgumentParser("sedd_jax.sample", "sedd-sample", __doc__)
    p.add_argument("--compilation_cache", default=None, help=compilation_cache.FLAG_HELP)
    p.add_argument("--checkpoint", "--model_path", dest="checkpoint", required=True,
                   help="checkpoint directory (official, converted or workdir)")
    p.add_argument("--batch_size", type=int, default=1, help="number of samples")
    p.add_argument("--steps", type=int, default=None,
                   help="predictor steps, >= 1 (default: the checkpoint config's sampling.steps when it records one, "
                        f"else {DEFAULT_STEPS}, the reference's run_sample.py default)")
    p.add_argument("--predictor", default="analytic", help=f"one of {sampling.PREDICTORS}")
    p.add_argument("--prefix", default=None, help="text clamped at the start of every sample")
    p.add_argument("--suffix", default=None, help="text clamped at the end of every sample")
    p.add_argument("--prefix_ids", default=None, help="comma-separated token ids clamped at the start")
    p.add_argument("--suffix_ids", default=None, help="comma-separated token ids clamped at the end")
    p.add_argument("--seed", type=int, default=0, help="PRNG seed")
    p.add_argument("--length", type=int, default=None,
                   help="sequence length (default: the model's; longer ones extrapolate its rotary positions)")
    p.add_argument("--method", default="unbiased",
                   help=f"categorical draw, one of {categorical.METHODS} ('reference' reproduces the official "
                        "float32 Gumbel race, which under-samples low-probability tokens)")
    p.add_argument("--eps", type=float, default=1e-5, help="final time of the grid linspace(1, eps, steps + 1)")
    p.add_argument("--no_denoise", action="store_true", help="skip the final denoising step")
    p.add_argument("--compute_dtype", default="float32", choices=("float32", "bfloat16"),
                   help="the network's compute dtype (bfloat16: the reference's autocast policy)")
    p.add_argument("--ids_only", action="store_true", help="print token ids; do not load a tokenizer")
    p.add_argument("--output", default=None, help="also write the samples to this .jsonl file")
    p.add_argument("--skip_unchanged", default="auto", choices=("auto", "on", "off"),
                   help="evaluate the network only on sequences that changed since its last call (a checkpoint "
                        "trained with model.time_conditioning=False; the same samples). auto: on for such "
                        "checkpoints when steps >= length")
    p.add_argument("--progress_every", type=int, default=None,
                   help="report progress every N steps (default: steps // 10 for runs of 100+ steps; 0: off)")
    return p


def _parse_ids(text: str | None, flag: str) -> list[int] | None:
    if not text:
        return None
    try:
        return [int(t) for t in text.replace(" ", "").split(",") if t]
    except ValueError:
        raise ValueError(f"--{flag} must be comma-separated integers, got {text!r}") from None


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def default_steps(config) -> tuple[int, str]:
    """The `--steps` default for a checkpoint and where it comes from: its config's `sampling.steps` (training
    workdirs and official configs record the steps they sample with), else DEFAULT_STEPS."""
    sampling_config = config.get("sampling")
    steps = sampling_config.get("steps") if hasattr(sampling_config, "get") else None
    if isinstance(steps, int) and not isinstance(steps, bool) and steps >= 1:
        return steps, "the checkpoint config's sampling.steps"
    return DEFAULT_STEPS, "the reference's run_sample.py default; the checkpoint config has no sampling.steps"


def check_length(length: int | None, model_length: int) -> int:
    """The sequence length to sample: `length` (>= 1, checked by the caller before loading), default
    `model_length`; above `model_length`, the length the model was trained at, a one-line warning on stderr."""
    if length is None:
        return model_length
    if length > model_length:
        _log(f"warning: --length={length} is longer than the model's trained length {model_length}: rotary "
             f"positions beyond {model_length} extrapolate and sample quality degrades")
    return length


def sample_from_args(args) -> tuple[list[list[int]], list[str] | None]:
    """Loads the checkpoint and samples; raises ValueError/FileNotFoundError/... with a message for the user."""
    if args.predictor not in sampling.PREDICTORS:
        sampling.check_predictor(args.predictor)
    if args.steps is not None:
        sampling.check_steps(args.steps)
    if args.length is not None and args.length < 1:
        raise ValueError(f"--length must be >= 1, got {args.length}")
    categorical.check_method(args.method)
    if args.batch_size < 1:
        raise ValueError(f"--batch_size must be >= 1, got {args.batch_size}")
    prefix_ids, suffix_ids = _parse_ids(args.prefix_ids, "prefix_ids"), _parse_ids(args.suffix_ids, "suffix_ids")
    if (args.prefix and prefix_ids) or (args.suffix and suffix_ids):
        raise ValueError("give a prompt either as text (--prefix/--suffix) or as ids (--prefix_ids/--suffix_ids)")
    if args.ids_only and (args.prefix or args.suffix):
        raise ValueError("--prefix/--suffix text needs the tokenizer; with --ids_only pass --prefix_ids/--suffix_ids")

    import jax

    from sedd_jax import pretrained

    start = time.time()
    model = pretrained.load(args.checkpoint, compute_dtype=args.compute_dtype)
    _log(f"loaded {args.checkpoint} ({model.config.graph.type} graph, {model.config.tokens} tokens, length "
         f"{model.config.model.length}) in {time.time() - start:.1f}s")
    length = check_length(args.length, int(model.config.model.length))
    steps_note = ""
    if args.steps is None:
        args.steps, source = default_steps(model.config)  # args.steps is recorded in --output
        steps_note = f" ({source}; --steps to change)"
    tokenizer = None
    if not args.ids_only:
        tokenizer = model.tokenizer  # fail before sampling when it cannot be loaded (e.g. offline)
        if args.prefix:
            prefix_ids = tokenizer.encode(args.prefix)
        if args.suffix:
            suffix_ids = tokenizer.encode(args.suffix)
    progress_every = args.progress_every
    if progress_every is None:
        progress_every = args.steps // 10 if args.steps >= 100 else 0
    score_fn = model.score_fn
    skip = model.skips_unchanged({"auto": None, "on": True, "off": False}[args.skip_unchanged], steps=args.steps,
                                 length=length)
    skip_note = "; the network is time-independent: unchanged sequences reuse its output" if skip else ""
    _log(f"sampling {args.batch_size} x {length} tokens, {args.steps} {args.predictor} steps{steps_note} "
         f"(the first call compiles the sampler{skip_note})")
    start = time.time()
    ids = sampling.sample_sequences(score_fn, model.graph, model.noise, jax.random.key(args.seed), args.batch_size,
                                    length, args.steps, args.predictor, prefix_ids, suffix_ids,
                                    denoise=not args.no_denoise, eps=args.eps, method=args.method,
                                    progress_every=progress_every, skip_unchanged=skip)
    _log(f"sampled in {time.time() - start:.1f}s")
    rows = [row.tolist() for row in ids]
    texts = [tokenizer.decode(row) for row in rows] if tokenizer is not None else None
    return rows, texts


def _write(args, rows, texts) -> None:
    for i, row in enumerate(rows):
        if i:
            print("=" * 80)
        print(texts[i] if texts is not None else " ".join(map(str, row)))
    if args.output:
        with open(args.output, "w") as f:
            for i, row in enumerate(rows):
                record = {"index": i, "ids": row, "checkpoint": args.checkpoint, "seed": args.seed,
                          "steps": args.steps, "predictor": args.predictor, "method": args.method,
                          "prefix": args.prefix, "suffix": args.suffix}
                if texts is not None:
                    record["text"] = texts[i]
                f.write(json.dumps(record) + "\n")
        _log(f"wrote {len(rows)} samples to {args.output}")


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status (0 ok, 1 bad input or checkpoint, 2 usage)."""
    args = build_parser().parse_args(argv)

    def body():
        compilation_cache.enable(args.compilation_cache)
        rows, texts = sample_from_args(args)
        _write(args, rows, texts)

    return cli.report_errors(body, args.verbose)

def run() -> None:
    """Console script `sedd-sample`."""
    sys.exit(main())


if __name__ == "__main__":
    run()
