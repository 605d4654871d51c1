"""Load any SEDD checkpoint for sampling and likelihood experiments: `load(path)` -> `Pretrained`.

`load(path, compute_dtype="float32")` reads
  (a) an official-format directory, as the published louaaron/sedd-small and sedd-medium are laid out:
      `config.json` (the reference's whole training config) plus `pytorch_model.bin` (read without torch,
      by a loader that never runs pickled code) or `model.safetensors` (`sedd_jax.official`);
  (b) a directory written by `python -m sedd_jax.convert` (`sedd_jax.converted`), readable without torch;
  (c) a sedd-jax training workdir (its EMA weights), see `sedd_jax.checkpoints`.
Checkpoint files are untrusted input: configs are checked against a schema and parameter shapes against the
model the config builds, before any array is made; every problem is a ValueError or FileNotFoundError
naming the file.

The published checkpoints are on the Hugging Face hub; sedd-jax never downloads at load time. Fetch one
first, e.g. `huggingface-cli download louaaron/sedd-small --local-dir sedd-small`.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from sedd_jax import graphs, models, noise as noise_lib, official

MASK_TEXT = "\u2591"   # "░": how decoded frames show a masked position

@dataclasses.dataclass
class Pretrained:
    """A loaded checkpoint: config, float32 params, graph, noise and jitted score functions.

    log_score(x: int[B, L], sigma: float[B]) -> float[B, L, graph.dim] (compute dtype; entry at x is 0)
    score(x, sigma) -> exp(log_score), float32 positive ratios.
    score_fn: the same function as a `jax.tree_util.Partial` over the params, for samplers under `jax.jit`:
    `jax.jit(sampling.get_pc_sampler(...))(model.score_fn, key)`.
    """

    config: ml_collections.ConfigDict
    params: Any
    graph: graphs.Graph
    noise: Any
    model: models.SEDD
    path: str
    is_workdir: bool = False

    def __post_init__(self):
        apply = functools.partial(self.model.apply, train=False)
        self._log_score = jax.jit(lambda params, x, sigma: apply({"params": params}, x, sigma))
        self._exp_score = functools.partial(models.exp_score, self.model)  # one object: jit caches key on it

    def log_score(self, x: jax.Array, sigma: jax.Array) -> jax.Array:
        return self._log_score(self.params, x, sigma)

    def score(self, x: jax.Array, sigma: jax.Array) -> jax.Array:
        return jnp.exp(self.log_score(x, sigma).astype(jnp.float32))

    @property
    def score_fn(self) -> jax.tree_util.Partial:
        """`score_fn(x: int32[B, L], sigma: float32[B]) -> float32[B, L, graph.dim]` positive ratios, a pytree
        whose leaves are the current params (traced under `jax.jit`, never baked into the program)."""
        return jax.tree_util.Partial(self._exp_score, self.params)

    @functools.cached_property
    def tokenizer(self):
        """The checkpoint's tokenizer: its config's `data.tokenizer` (official checkpoints: GPT-2, which
        needs the network once; the error says what to pre-download), SentencePiece from a workdir."""
        from sedd_jax.data import tokenizers

        data = self.config.get("data") or {}
        kind = data.get("tokenizer", "gpt2")
        cache_dir = os.path.expanduser(data.get("cache_dir", None) or "~/tensorflow_datasets")
        return tokenizers.build_tokenizer(kind, workdir=self.path if self.is_workdir else None, cache_dir=cache_dir,
                                          sp_vocab_size=data.get("sp_vocab_size", None))

    def draw_losses_fn(self, mc_samples: int, t_grid: str = "iid", sampling_eps: float = 1e-3):
        """The jitted `likelihood.make_draw_losses_fn` of this model (eval mode) over all local devices,
        `f(params, x0 int32[B, L], ids int32[B], key) -> float32[B, K]`; cached per settings, so repeated
        evaluations reuse the compiled function. Under the absorbing graph the network's last layers and the loss
        run at masked positions only (`losses.MaskedPositionsLoss.per_sequence`: the same values)."""
        from sedd_jax import likelihood

        cache = self.__dict__.setdefault("_draw_losses_fns", {})
        key = (int(mc_samples), t_grid, float(sampling_eps), jax.local_device_count())
        if key not in cache:
            log_score = lambda params, x, sigma: self.model.apply({"params": params}, x, sigma, train=False)
            cache[key] = likelihood.make_draw_losses_fn(
                log_score, self.graph, self.noise, int(mc_samples), t_grid=t_grid, sampling_eps=sampling_eps,
                mesh=likelihood.local_mesh(), trunk_and_head=models.trunk_and_head(self.model) if self.graph.absorb
                else None)
        return cache[key]

    def log_likelihood_bound(self, texts_or_ids, mc_samples: int = 1000, seed: int = 0, *, t_grid: str = "iid",
                             sampling_eps: float = 1e-3, batch_size: int = 8) -> tuple[np.ndarray, np.ndarray]:
        """Per-sequence upper bounds on -log p(x) in nats, float64 `[N]`, and their Monte-Carlo standard errors
        `[N]` (`sedd_jax.likelihood`; the prior term, `likelihood.prior_kl_per_token` * length, is not added).

        texts_or_ids: a string, a list of strings (tokenized with `self.tokenizer`, no EOS added), or token ids
        (int `[N, L]` or a list of id lists). Sequences may have different lengths (one compile per length,
        at most the model's length). Sequence i uses fold_in(key(seed), i): results do not depend on batch_size
        or the device count.
        """
        from sedd_jax import likelihood

        if isinstance(texts_or_ids, str):
            texts_or_ids = [texts_or_ids]
        rows = [self.tokenizer.encode(x) if isinstance(x, str) else np.asarray(x).reshape(-1).tolist()
                for x in texts_or_ids]
        model_length = int(self.config.model.length)
        for i, row in enumerate(rows):
            if not 1 <= len(row) <= model_length:
                raise ValueError(f"sequence {i} has {len(row)} tokens; scoring needs 1 to {model_length} "
                                 "(the model's length)")
            if min(row) < 0 or max(row) >= self.graph.tokens:
                raise ValueError(f"sequence {i} has token ids outside [0, {self.graph.tokens})")
        likelihood.check_settings(mc_samples, t_grid, sampling_eps)
        draw_fn = self.draw_losses_fn(mc_samples, t_grid, sampling_eps)
        return likelihood.sequence_bounds(None, self.params, self.graph, self.noise, rows, mc_samples=mc_samples,
                                          seed=seed, t_grid=t_grid, sampling_eps=sampling_eps,
                                          batch_size=batch_size, draw_fn=draw_fn)

    def sample(self, key, batch_size: int, steps: int, predictor: str = "analytic", prefix: str | None = None,
               suffix: str | None = None, *, length: int | None = None, method: str = "unbiased",
               progress_every: int = 0, skip_unchanged: bool | None = None,
               rows_per_call: int | None = None) -> tuple[np.ndarray, list[str]]:
        """Samples `batch_size` sequences of `length` (default model.length) tokens, clamping the tokenized
        `prefix` at the start and `suffix` at the end. Returns (ids int32 `[B, L]`, decoded texts).

        skip_unchanged (default: on for a network trained with `model.time_conditioning=False` when steps >=
        length, see `skips_unchanged`; refused for others): evaluate the network only on sequences that changed
        since their last evaluation (`rows_per_call`: see `sampling.get_pc_sampler`); the same draws."""
        ids = self._sample_ids(key, batch_size, steps, predictor, prefix, suffix, length=length, method=method,
                               progress_every=progress_every, skip_unchanged=skip_unchanged,
                               rows_per_call=rows_per_call)
        return ids, [self.tokenizer.decode(row.tolist()) for row in ids]

    def sample_frames(self, key, steps: int, num_frames: int, batch_size: int = 1, predictor: str = "analytic",
                      prefix: str | None = None, suffix: str | None = None, *, length: int | None = None,
                      method: str = "unbiased", mask_text: str = MASK_TEXT, skip_unchanged: bool | None = None,
                      rows_per_call: int | None = None) -> tuple[np.ndarray, list[list[str]]]:
        """The reverse process of `sample`: the same draw (same key and settings give the same final sample)
        seen at `num_frames` (2 to steps + 1) evenly spaced steps, from the limit sample (all MASK for absorb,
        but the prefix and suffix) to the final sample. Returns (frames int32 `[num_frames, B, L]`,
        texts[frame][row]) with each MASK shown as `mask_text`."""
        _, frames = self._sample_ids(key, batch_size, steps, predictor, prefix, suffix, length=length, method=method,
                                     frames=num_frames, skip_unchanged=skip_unchanged, rows_per_call=rows_per_call)
        return frames, [[self.decode_masked(row, mask_text) for row in frame] for frame in frames]

    def decode_masked(self, ids, mask_text: str = MASK_TEXT) -> str:
        """Decodes int `[L]` ids with each absorbing MASK shown as `mask_text` (the runs between masks are
        decoded separately, so a token split by a mask shows in pieces)."""
        ids = np.asarray(ids).reshape(-1)
        if not self.graph.absorb:
            return self.tokenizer.decode(ids.tolist())
        is_mask = ids == self.graph.tokens
        runs = np.split(ids, np.flatnonzero(np.diff(is_mask.astype(np.int8))) + 1)
        return "".join(mask_text * len(run) if run[0] == self.graph.tokens else self.tokenizer.decode(run.tolist())
                       for run in runs if len(run))

    def _sample_ids(self, key, batch_size, steps, predictor, prefix, suffix, *, length, method,
                    progress_every: int = 0, frames: int = 0, skip_unchanged: bool | None = None,
                    rows_per_call: int | None = None):
        """sampling.sample_sequences with this model's score function and the tokenized prefix and suffix."""
        from sedd_jax import sampling

        encode = lambda text: self.tokenizer.encode(text) if text else None
        length = int(length or self.config.model.length)
        steps = sampling.check_steps(steps)
        return sampling.sample_sequences(
            self.score_fn, self.graph, self.noise, key, batch_size, length, steps,
            predictor, encode(prefix), encode(suffix), method=method, progress_every=progress_every, frames=frames,
            skip_unchanged=self.skips_unchanged(skip_unchanged, steps=steps, length=length),
            rows_per_call=rows_per_call)

    def skips_unchanged(self, requested: bool | None = None, *, steps: int | None = None,
                        length: int | None = None) -> bool:
        """Whether sampling reuses the network's output while a sequence is unchanged: `requested`, or by default
        whether the network is time-independent (`model.time_conditioning=False`) and, when steps and length are
        given, `sampling.skipping_pays(steps, length)` (at least as many steps as tokens).
        Raises ValueError when asked of a time-conditioned network, whose reused scores would be wrong."""
        independent = not models.time_conditioning(self.config.model)
        if requested and not independent:
            raise ValueError(f"{self.path}: skip_unchanged needs a time-independent network "
                             "(trained with model.time_conditioning=False); this one takes sigma as input, so its "
                             "output cannot be reused across steps")
        if requested is not None:
            return bool(requested)
        from sedd_jax import sampling

        return independent and (steps is None or length is None or sampling.skipping_pays(steps, length))


def _describe_contents(path: str) -> str:
    try:
        names = sorted(os.listdir(path))
    except OSError:
        return "unreadable"
    return ", ".join(names[:8]) + (" ..." if len(names) > 8 else "") if names else "empty"


def load(path: str, compute_dtype: str = "float32") -> Pretrained:
    """Loads an official-format directory, a converted directory or a training workdir (see module doc)."""
    path = os.path.expanduser(str(path))
    if not os.path.isdir(path):
        hint = ""
        if path.count("/") == 1 and not path.startswith((".", "/")):
            hint = (f" If {path!r} is a Hugging Face hub repo, download it first (sedd-jax never downloads at "
                    f"load time): `huggingface-cli download {path} --local-dir {path.split('/')[-1]}`")
        raise FileNotFoundError(f"checkpoint directory {path!r} does not exist.{hint}")
    is_workdir = False
    if os.path.isdir(os.path.join(path, "checkpoints")):
        from sedd_jax import checkpoints
        config, params = checkpoints.load_ema_params(path)
        is_workdir = True
    elif os.path.exists(os.path.join(path, official.CONFIG_FILE)):
        from sedd_jax import converted
        raw = official.read_json(os.path.join(path, official.CONFIG_FILE))  # read once, for both questions
        config, params = (converted.read if converted.is_converted(path, raw) else official.read_official)(path, raw)
    else:
        raise FileNotFoundError(
            f"{path} is not a SEDD checkpoint: expected {official.CONFIG_FILE} with {official.TORCH_WEIGHTS} or "
            f"{official.SAFETENSORS_WEIGHTS} (official format), {official.CONFIG_FILE} with params/ "
            f"(sedd_jax.convert), or a training workdir with checkpoints/; found: {_describe_contents(path)}")
    params = jax.tree.map(jnp.asarray, params)
    return Pretrained(config=config, params=params, graph=graphs.get_graph(config.graph.type, config.tokens),
                      noise=noise_lib.from_config(config), model=models.get_model(config, compute_dtype), path=path,
                      is_workdir=is_workdir)
