"""Training configuration: the defaults every config starts from, `validate(config)`, and the shipped configs.

The shipped configs are modules of this package, importable wherever sedd-jax is installed
(`from sedd_jax.configs import tiny; config = tiny.get_config()`): SHIPPED names them. The command lines
take one by name (`--config=tiny`) or any config file by path (`--config=configs/tiny.py`; the repository's
`configs/*.py` re-export these). Field names follow the reference's hydra config where one exists
(reference §0.2).
"""

from __future__ import annotations

import json
import os

import ml_collections

from sedd_jax import graphs, likelihood, models, noise as noise_lib

PREDICTORS = ("euler", "analytic", "none")
XLA_CPU_EMITTERS = ("auto", "legacy", "fusion")  # training.xla_cpu_emitters: sedd_jax.train_step.cpu_compiler_options
SHIPPED = ("tiny", "owt_small", "owt_medium", "text8")   # modules of this package with a get_config()

# Logical parameter axis -> mesh axis (None = replicated); see sedd_jax.parallel.
DEFAULT_RULES = (
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("mlp", "tensor"),
    ("modulation", "tensor"),
    ("cond", None),
    ("freq", None),
)


def base_config() -> ml_collections.ConfigDict:
    """The reference recipe (OpenWebText, GPT-2 vocabulary, absorb + loglinear, small model)."""
    c = ml_collections.ConfigDict()
    c.tokens = 50257                      # vocabulary without MASK (GPT-2: 50257)

    c.graph = ml_collections.ConfigDict()
    c.graph.type = "absorb"               # "absorb" (with scale_by_sigma) or "uniform" (with geometric noise)

    c.noise = ml_collections.ConfigDict()
    c.noise.type = "loglinear"            # "loglinear" or "geometric"
    c.noise.eps = 1e-3                    # loglinear: masking probability at t = 1 is 1 - eps
    c.noise.sigma_min = 1e-4              # geometric only
    c.noise.sigma_max = 20.0              # geometric only

    c.model = models.model_config("small")
    c.model.compute_dtype = "bfloat16"    # "float32" or "bfloat16" (the reference's autocast policy)
    # How the network runs; none of these changes what it computes (bench/README.md has the figures).
    c.model.attention = "fused"           # "fused": jax.nn.dot_product_attention (cuDNN flash on GPU); "plain";
                                          # "splash": Pallas's splash kernel on TPU (lengths multiple of 128)
    c.model.scan_blocks = True            # blocks as one lax.scan: fast compiles and backward; same checkpoints
    c.model.remat = "dots_no_batch"       # backward recomputation: "none" | "dots" | "dots_no_batch" | "full"
    c.model.time_conditioning = True      # False (absorb only): a time-independent network, whose output samplers
                                          # reuse while no token changes (sampling.get_pc_sampler's skip_unchanged)

    c.data = ml_collections.ConfigDict()
    c.data.train = "openwebtext"          # see docs/data.md for every dataset name
    c.data.valid = "wikitext103"
    c.data.tokenizer = "gpt2"             # "gpt2" | "sentencepiece" | "char"
    c.data.files = ""                     # glob for data.train/valid = "files" (or a local text8/lambada file)
    c.data.cache_dir = "~/tensorflow_datasets"  # TFDS data_dir / prepared data
    c.data.sp_vocab_size = 4096           # SentencePiece vocabulary (tokenizer = "sentencepiece")
    c.data.num_workers = 0                # grain worker processes (0 = in the training process)

    c.training = ml_collections.ConfigDict()
    c.training.batch_size = 512           # global batch (sequences per update, all hosts together)
    c.training.accum = 1                  # gradient accumulation: micro-batches per update
    c.training.n_iters = 400_000          # updates (the paper's OpenWebText models: 400k)
    c.training.log_freq = 50              # steps between train-loss logs
    c.training.eval_freq = 100            # steps between eval-loss logs (one eval batch, EMA weights)
    c.training.snapshot_freq = 50_000     # steps between kept checkpoints (+ samples written)
    c.training.snapshot_freq_for_preemption = 10_000  # steps between rolling checkpoints (resume points)
    c.training.keep_checkpoints = 2       # rolling checkpoints kept (snapshot_freq multiples are always kept)
    c.training.snapshot_sampling = True   # write samples to workdir/samples/ at snapshots
    c.training.ema = 0.9999               # EMA decay (with the (1 + n) / (10 + n) warm-up)
    c.training.seed = 0                   # one key per run; step keys are fold_in(key, step)
    c.training.sampling_eps = 1e-3        # t ~ U[sampling_eps, 1] in the loss
    c.training.max_update_ratio = 1.0     # skip an update whose norm exceeds this times the parameters' norm
    c.training.max_skipped_updates = 20   # stop (diverged) after this many consecutive skipped updates
    c.training.xla_cpu_emitters = "auto"  # CPU only, how XLA compiles the train and eval steps: "legacy" needs ~5x
                                          # less compiler memory, "fusion" compiles narrow models faster; "auto":
                                          # legacy from model.hidden_size 128 (sedd_jax.train_step.cpu_compiler_options)
    c.training.masked_positions_only = True  # absorb: the last block's feed-forward half, output layer and loss at
                                             # masked positions only (the loss is 0 elsewhere; losses.MaskedPositionsLoss),
                                             # in the train and the eval step
    c.training.position_chunks = 16       # ... in chunks of 1/16 of each data shard's positions, as many as needed
    c.training.profile_steps = 0          # > 0: a jax.profiler trace of this many train steps into workdir/plugins/
                                          # profile/ (TensorBoard's Profile tab; with several processes, each into
                                          # workdir/profiles/process_<i>/) ...
    c.training.profile_skip = 10          # ... after this many steps of the run (compiling, warming up)

    c.eval = ml_collections.ConfigDict()
    c.eval.batch_size = 512               # global eval batch: the held-out blocks every eval scores (fixed)
    c.eval.mc_samples = 4                 # DWDSE draws per block at each eval (sedd_jax.likelihood)
    c.eval.t_grid = "stratified"          # times of the draws: "stratified" or "iid"

    c.optim = ml_collections.ConfigDict()
    c.optim.optimizer = "AdamW"
    c.optim.lr = 3e-4
    c.optim.beta1 = 0.9
    c.optim.beta2 = 0.999
    c.optim.eps = 1e-8
    c.optim.weight_decay = 0.0
    c.optim.warmup = 2500                 # linear warm-up over this many updates, then constant
    c.optim.grad_clip = 1.0               # global-norm clipping (<= 0 disables)

    c.sampling = ml_collections.ConfigDict()
    c.sampling.predictor = "euler"        # snapshot samples: "euler" | "analytic" | "none"
    c.sampling.steps = 128
    c.sampling.noise_removal = True       # final denoising step
    c.sampling.batch_size = 4             # samples written per snapshot (process 0)

    c.mesh = ml_collections.ConfigDict()
    c.mesh.data = -1                      # -1 takes the devices left by the other axes
    c.mesh.fsdp = 1
    c.mesh.tensor = 1
    c.mesh.rules = DEFAULT_RULES
    return c


def config_file(name_or_path: str) -> str:
    """The config file `--config=name_or_path` names: an existing file as given, or a SHIPPED name (`tiny`)
    as this package's file. Anything after the first ':' (ml_collections passes it to get_config) is kept."""
    path, colon, argument = str(name_or_path).partition(":")
    if os.path.isfile(path):
        return name_or_path
    if path in SHIPPED:
        return os.path.join(os.path.dirname(os.path.abspath(__file__)), f"{path}.py") + colon + argument
    raise ValueError(f"--config={name_or_path}: no such config file and not a shipped config; give a path to a "
                     f"config .py file or one of {', '.join(SHIPPED)}")


def validate(config, device_count: int | None = None, process_count: int | None = None) -> None:
    """Fails fast, before any compile, on combinations that cannot run. Messages name the fields to change."""
    import jax

    from sedd_jax import parallel

    graphs.get_graph(config.graph.type, config.tokens)
    noise_lib.get_noise(config.noise.type, eps=config.noise.eps, sigma_min=config.noise.sigma_min,
                        sigma_max=config.noise.sigma_max)
    models.validate_model_config(config)
    models.compute_dtype_of(config.model.compute_dtype)
    if config.optim.optimizer != "AdamW":
        raise ValueError(f"optim.optimizer={config.optim.optimizer!r}: only 'AdamW' is implemented")
    if config.sampling.predictor not in PREDICTORS:
        raise ValueError(f"sampling.predictor={config.sampling.predictor!r}; choose one of {PREDICTORS}")
    t = config.training
    for name in ("n_iters", "log_freq", "eval_freq", "snapshot_freq", "snapshot_freq_for_preemption",
                 "batch_size", "accum", "keep_checkpoints", "position_chunks"):
        if int(t.get(name, 1)) < 1:
            raise ValueError(f"training.{name} must be >= 1, got {t[name]}")
    if int(t.get("max_skipped_updates", 20)) < 1 or not float(t.get("max_update_ratio", 1.0)) > 0:
        raise ValueError("training.max_skipped_updates must be >= 1 and training.max_update_ratio > 0, got "
                         f"{t.get('max_skipped_updates')} and {t.get('max_update_ratio')}")
    for name in ("profile_steps", "profile_skip"):
        value = t.get(name, 0)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"training.{name} must be a whole number >= 0, got {t.get(name)!r}")
    if t.get("xla_cpu_emitters", "auto") not in XLA_CPU_EMITTERS:
        raise ValueError(f"training.xla_cpu_emitters={t.xla_cpu_emitters!r}; choose one of {XLA_CPU_EMITTERS}")
    if int(config.eval.mc_samples) < 1 or config.eval.t_grid not in likelihood.T_GRIDS:
        raise ValueError(f"eval.mc_samples must be >= 1 and eval.t_grid one of {likelihood.T_GRIDS}, got "
                         f"{config.eval.mc_samples} and {config.eval.t_grid!r}")
    if not 0 <= t.ema < 1:
        raise ValueError(f"training.ema must be in [0, 1), got {t.ema}")
    if config.model.length < 2:
        raise ValueError(f"model.length must be >= 2, got {config.model.length}")

    shape = parallel.mesh_shape(config, device_count)
    data_parallel = shape[0] * shape[1]
    process_count = jax.process_count() if process_count is None else process_count
    if t.batch_size % t.accum:
        raise ValueError(f"training.batch_size={t.batch_size} is not divisible by training.accum={t.accum}")
    micro = t.batch_size // t.accum
    if micro % data_parallel:
        raise ValueError(
            f"the micro-batch training.batch_size / training.accum = {micro} is not divisible by the data-parallel "
            f"size mesh.data x mesh.fsdp = {data_parallel}; change --config.training.batch_size, "
            "--config.training.accum or the mesh")
    if t.batch_size % process_count:
        raise ValueError(f"training.batch_size={t.batch_size} is not divisible by the {process_count} hosts")
    if config.eval.batch_size % data_parallel or config.eval.batch_size % process_count:
        raise ValueError(f"eval.batch_size={config.eval.batch_size} must be divisible by the data-parallel size "
                         f"{data_parallel} and the {process_count} hosts")
    if config.training.snapshot_sampling and config.sampling.batch_size < 1:
        raise ValueError("sampling.batch_size must be >= 1 when training.snapshot_sampling is on")


# Fields (and whole blocks) that fix what a run's weights mean: a workdir cannot be resumed with other values.
MEANING_FIELDS = ("tokens", "graph", "noise", "model", "data.tokenizer", "data.sp_vocab_size", "data.train",
                  "data.files")
# ... except these, which change how the network runs or trains, not what it computes.
EXECUTION_FIELDS = ("model.attention", "model.scan_blocks", "model.remat", "model.dropout", "model.compute_dtype")
# Meaning fields added after runs were saved without them, with the value those runs had.
ADDED_FIELDS = {"model.time_conditioning": True}


def flatten(config) -> dict:
    """{"a.b.c": value} of a ConfigDict or nested dict, with values as its JSON (workdir/config.json) holds
    them: tuples as lists, anything JSON cannot hold as its str()."""
    def walk(tree, prefix):
        for key, value in tree.items():
            if isinstance(value, dict):
                yield from walk(value, f"{prefix}{key}.")
            else:
                yield prefix + key, value

    raw = config.to_dict() if hasattr(config, "to_dict") else config
    return dict(walk(json.loads(json.dumps(raw, default=str)), ""))


def config_changes(saved, config) -> tuple[dict, dict]:
    """(refused, allowed) changes from a workdir's saved config to `config`: {field: (saved, new)}. Refused:
    MEANING_FIELDS (except EXECUTION_FIELDS); allowed: everything else (lr, n_iters, frequencies, batch...)."""
    old, new = ADDED_FIELDS | flatten(saved), ADDED_FIELDS | flatten(config)
    changed = {k: (old.get(k), new.get(k)) for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)}
    meaning = lambda k: (any(k == f or k.startswith(f + ".") for f in MEANING_FIELDS)  # noqa: E731
                         and k not in EXECUTION_FIELDS)
    refused = {k: v for k, v in changed.items() if meaning(k)}
    return refused, {k: v for k, v in changed.items() if k not in refused}
