"""Load any SEDD checkpoint for sampling and likelihood experiments.

`load(path, compute_dtype="float32")` reads
  (a) an official-format directory, as the published louaaron/sedd-small and sedd-medium are laid out:
      `config.json` (the reference's whole training config) plus `pytorch_model.bin` (read without torch,
      by a restricted unpickler that never runs pickled code) or `model.safetensors`;
  (b) a directory written by `python -m sedd_jax.convert` (`config.json` marked as sedd-jax plus an orbax
      checkpoint under `params/`), readable without torch;
  (c) a sedd-jax training workdir (its EMA weights), see `sedd_jax.checkpoints`.

The published checkpoints are on the Hugging Face hub; sedd-jax never downloads at load time. Fetch one
first, e.g. `huggingface-cli download louaaron/sedd-small --local-dir sedd-small`.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from sedd_jax import graphs, models, noise as noise_lib

CONFIG_FILE = "config.json"
TORCH_WEIGHTS = "pytorch_model.bin"
SAFETENSORS_WEIGHTS = "model.safetensors"
CONVERTED_PARAMS = "params"
CONVERTED_MARKER = "sedd_jax_format"
LOGLINEAR_DEFAULT_EPS = 1e-3  # not stored in official config.json files (reference §8)


# --------------------------------------------------------------------------------------------- config

def config_from_dict(raw: dict) -> ml_collections.ConfigDict:
    """Checks that a checkpoint config names a graph, noise, vocabulary and model, and fills defaults."""
    missing = [k for k in ("tokens", "graph", "noise", "model") if k not in raw]
    if missing:
        raise ValueError(f"checkpoint config lacks {missing}; an official config.json has tokens, graph.type, "
                         "noise.type and model.*")
    if not all(isinstance(raw[k], dict) for k in ("graph", "noise", "model")):
        raise ValueError("checkpoint config: graph, noise and model must be mappings (graph.type, noise.type, model.*)")
    for field in ("hidden_size", "n_heads", "n_blocks", "cond_dim", "scale_by_sigma"):
        if field not in raw["model"]:
            raise ValueError(f"checkpoint config lacks model.{field}")
    for block, field in (("graph", "type"), ("noise", "type")):
        if field not in raw[block]:
            raise ValueError(f"checkpoint config lacks {block}.{field}")
    raw = json.loads(json.dumps(raw))
    raw["model"].setdefault("dropout", 0.1)
    raw["model"].setdefault("length", 1024)
    if raw["noise"]["type"] == "loglinear":
        raw["noise"].setdefault("eps", LOGLINEAR_DEFAULT_EPS)
    config = ml_collections.ConfigDict(raw)
    graphs.get_graph(config.graph.type, config.tokens)
    noise_from_config(config)
    models.validate_model_config(config)
    return config


def noise_from_config(config):
    n = config.noise
    return noise_lib.get_noise(n.type, eps=n.get("eps", LOGLINEAR_DEFAULT_EPS),
                               sigma_min=n.get("sigma_min", 1e-4), sigma_max=n.get("sigma_max", 20.0))


def abstract_params(model: models.SEDD) -> Any:
    """Shape/dtype tree of the model's parameters (no allocation)."""
    variables = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 2), jnp.int32),
                               jnp.zeros((1,), jnp.float32))
    return flax.core.meta.unbox(variables["params"])


# ------------------------------------------------------------------------------- official state dicts

def _torch_key_map(n_blocks: int) -> dict[str, tuple[tuple[str, ...], bool]]:
    """torch state-dict key -> (sedd-jax parameter path, transpose?) (reference §1.9)."""
    mapping = {
        "vocab_embed.embedding": (("embedding",), False),
        "sigma_map.mlp.0.weight": (("sigma_mlp_in", "kernel"), True),
        "sigma_map.mlp.0.bias": (("sigma_mlp_in", "bias"), False),
        "sigma_map.mlp.2.weight": (("sigma_mlp_out", "kernel"), True),
        "sigma_map.mlp.2.bias": (("sigma_mlp_out", "bias"), False),
        "output_layer.norm_final.weight": (("norm_final", "scale"), False),
        "output_layer.linear.weight": (("output", "kernel"), True),
        "output_layer.linear.bias": (("output", "bias"), False),
        "output_layer.adaLN_modulation.weight": (("final_adaLN", "kernel"), True),
        "output_layer.adaLN_modulation.bias": (("final_adaLN", "bias"), False),
    }
    block = {
        "norm1.weight": (("norm1", "scale"), False), "norm2.weight": (("norm2", "scale"), False),
        "attn_qkv.weight": (("attn_qkv", "kernel"), True), "attn_out.weight": (("attn_out", "kernel"), True),
        "mlp.0.weight": (("mlp_in", "kernel"), True), "mlp.0.bias": (("mlp_in", "bias"), False),
        "mlp.2.weight": (("mlp_out", "kernel"), True), "mlp.2.bias": (("mlp_out", "bias"), False),
        "adaLN_modulation.weight": (("adaLN", "kernel"), True),
        "adaLN_modulation.bias": (("adaLN", "bias"), False),
    }
    for i in range(n_blocks):
        for key, (path, transpose) in block.items():
            mapping[f"blocks.{i}.{key}"] = ((f"blocks_{i}",) + path, transpose)
    return mapping


def state_dict_to_params(state_dict: dict[str, np.ndarray], config) -> dict:
    """Maps an official SEDD state dict (torch layout, `[out, in]` Linear weights) onto sedd-jax parameters
    for `config`, checking every key and shape. Returns a nested dict of float32 numpy arrays."""
    state_dict = {k.removeprefix("module."): v for k, v in state_dict.items()}
    head_dim = config.model.hidden_size // config.model.n_heads
    inv_freq = state_dict.pop("rotary_emb.inv_freq", None)
    if inv_freq is not None:
        expected = 10000.0 ** (-np.arange(0, head_dim, 2, dtype=np.float32) / head_dim)
        if inv_freq.shape != expected.shape or not np.allclose(inv_freq, expected, rtol=1e-5):
            raise ValueError(f"rotary_emb.inv_freq of shape {inv_freq.shape} does not match head dim {head_dim} "
                             "(model.hidden_size / model.n_heads) of the config")
    mapping = _torch_key_map(config.model.n_blocks)
    missing = sorted(set(mapping) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(mapping))
    if missing or unexpected:
        raise ValueError(
            f"state dict does not match config (model.n_blocks={config.model.n_blocks}): missing keys "
            f"{missing[:6]}{'...' if len(missing) > 6 else ''}, unexpected keys "
            f"{unexpected[:6]}{'...' if len(unexpected) > 6 else ''}. Check that config.json belongs to these weights")
    shapes = abstract_params(models.get_model(config))
    params: dict = {}
    mismatches = []
    for key, (path, transpose) in mapping.items():
        value = np.asarray(state_dict[key], dtype=np.float32)
        value = value.T if transpose else value
        want = functools.reduce(lambda tree, name: tree[name], path, shapes).shape
        if value.shape != want:
            mismatches.append(f"{key}: {tuple(state_dict[key].shape)} in the file, config implies "
                              f"{want[::-1] if transpose else want}")
        node = params
        for name in path[:-1]:
            node = node.setdefault(name, {})
        node[path[-1]] = np.ascontiguousarray(value)
    if mismatches:
        raise ValueError("state dict shapes do not match config (tokens, graph.type, model.*): "
                         + "; ".join(mismatches[:6]))
    return params


def read_official(path: str) -> tuple[ml_collections.ConfigDict, dict]:
    """(config, params) from `config.json` + `pytorch_model.bin` or `model.safetensors`."""
    with open(os.path.join(path, CONFIG_FILE)) as f:
        config = config_from_dict(json.load(f))
    safetensors_path = os.path.join(path, SAFETENSORS_WEIGHTS)
    torch_path = os.path.join(path, TORCH_WEIGHTS)
    if os.path.exists(safetensors_path):
        from safetensors.numpy import load_file
        state_dict = load_file(safetensors_path)
    elif os.path.exists(torch_path):
        from sedd_jax import torch_pickle
        state_dict = torch_pickle.load_state_dict(torch_path)
    else:
        raise FileNotFoundError(
            f"{path} has {CONFIG_FILE} but no weights: expected {TORCH_WEIGHTS} or {SAFETENSORS_WEIGHTS} beside it "
            "(download both files of the checkpoint, e.g. `huggingface-cli download louaaron/sedd-small "
            f"--local-dir {path}`)")
    return config, state_dict_to_params(state_dict, config)


# ------------------------------------------------------------------------------- converted checkpoints

def save_converted(output: str, config, params) -> None:
    """Writes `output/config.json` (marked as sedd-jax) and `output/params/` (orbax). `output` must not exist
    or be empty; the directory is assembled under a temporary name and renamed, so a failure leaves nothing
    half-written."""
    import orbax.checkpoint as ocp

    output = os.path.abspath(output)
    if os.path.exists(output) and os.listdir(output):
        raise FileExistsError(f"{output} exists and is not empty; choose a new --output directory")
    staging = output + ".partial"
    if os.path.exists(staging):
        import shutil
        shutil.rmtree(staging)
    os.makedirs(staging)
    raw = config.to_dict()
    raw[CONVERTED_MARKER] = 1
    with open(os.path.join(staging, CONFIG_FILE), "w") as f:
        json.dump(raw, f, indent=2)
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(os.path.join(staging, CONVERTED_PARAMS), jax.tree.map(np.asarray, params))
    if os.path.exists(output):
        os.rmdir(output)
    os.rename(staging, output)


def read_converted(path: str) -> tuple[ml_collections.ConfigDict, dict]:
    import orbax.checkpoint as ocp

    with open(os.path.join(path, CONFIG_FILE)) as f:
        raw = json.load(f)
    raw.pop(CONVERTED_MARKER, None)
    config = config_from_dict(raw)
    target = abstract_params(models.get_model(config))
    with ocp.StandardCheckpointer() as checkpointer:
        params = checkpointer.restore(os.path.abspath(os.path.join(path, CONVERTED_PARAMS)), target)
    return config, params


# ------------------------------------------------------------------------------------------ the model

@dataclasses.dataclass
class Pretrained:
    """A loaded checkpoint: config, float32 params, graph, noise and jitted score functions.

    log_score(x: int[B, L], sigma: float[B]) -> float[B, L, graph.dim] (compute dtype; entry at x is 0)
    score(x, sigma) -> exp(log_score), float32 positive ratios.
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

    def log_score(self, x: jax.Array, sigma: jax.Array) -> jax.Array:
        return self._log_score(self.params, x, sigma)

    def score(self, x: jax.Array, sigma: jax.Array) -> jax.Array:
        return jnp.exp(self.log_score(x, sigma).astype(jnp.float32))

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

    def sample(self, key, batch_size: int, steps: int, predictor: str = "analytic", prefix: str | None = None,
               suffix: str | None = None, *, length: int | None = None, method: str = "unbiased",
               progress_every: int = 0) -> tuple[np.ndarray, list[str]]:
        """Samples `batch_size` sequences of `length` (default model.length) tokens, clamping the tokenized
        `prefix` at the start and `suffix` at the end. Returns (ids int32 `[B, L]`, decoded texts)."""
        from sedd_jax import sampling

        encode = lambda text: self.tokenizer.encode(text) if text else None
        prefix_ids, suffix_ids = encode(prefix), encode(suffix)
        ids = sampling.sample_sequences(
            jax.tree_util.Partial(functools.partial(exp_score, self.model), self.params), self.graph, self.noise, key, batch_size,
            int(length or self.config.model.length), steps, predictor, prefix_ids, suffix_ids, method=method,
            progress_every=progress_every)
        return ids, [self.tokenizer.decode(row.tolist()) for row in ids]


def exp_score(model: models.SEDD, params, x: jax.Array, sigma: jax.Array) -> jax.Array:
    """The model's positive ratios exp(log_score) `[B, L, V]` float32, for samplers (pass params as a traced
    argument, e.g. through `jax.tree_util.Partial`, never as a closed-over constant)."""
    return jnp.exp(model.apply({"params": params}, x, sigma, train=False).astype(jnp.float32))


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
    config_path = os.path.join(path, CONFIG_FILE)
    is_workdir = False
    if os.path.isdir(os.path.join(path, "checkpoints")):
        from sedd_jax import checkpoints
        config, params = checkpoints.load_ema_params(path)
        is_workdir = True
    elif os.path.exists(config_path):
        with open(config_path) as f:
            converted = CONVERTED_MARKER in json.load(f)
        config, params = read_converted(path) if converted else read_official(path)
    else:
        raise FileNotFoundError(
            f"{path} is not a SEDD checkpoint: expected {CONFIG_FILE} with {TORCH_WEIGHTS} or "
            f"{SAFETENSORS_WEIGHTS} (official format), {CONFIG_FILE} with {CONVERTED_PARAMS}/ (sedd_jax.convert), "
            f"or a training workdir with checkpoints/; found: {_describe_contents(path)}")
    params = jax.tree.map(jnp.asarray, params)
    return Pretrained(config=config, params=params, graph=graphs.get_graph(config.graph.type, config.tokens),
                      noise=noise_from_config(config), model=models.get_model(config, compute_dtype), path=path,
                      is_workdir=is_workdir)
