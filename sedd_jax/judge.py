"""A GPT-2 judge for generative perplexity: GPT-2 in Flax linen, loaded from Hugging Face checkpoints.

    judge = judge.load("gpt2-large")                   # config.json + model.safetensors of the hub's layout
    log_probs = judge.log_likelihood(ids)              # ids int32 [B, L] -> float32 [B, L-1]
    ppl = judge.perplexity(ids)                        # exp(-mean log_probs)

The judge directory is what `huggingface-cli download gpt2-large config.json model.safetensors --local-dir
DIR` writes (any GPT-2 size: gpt2, gpt2-medium, gpt2-large, gpt2-xl, or a `GPT2LMHeadModel.save_pretrained`
directory). sedd-jax never downloads it; a missing directory is an error that says how. Both files are
untrusted input: config.json is checked against a schema and bounded in size, `model.safetensors` is read by
`official.read_safetensors` (header checked before any tensor data is read), and every tensor name and shape
is checked against the config before anything is built. No torch or transformers is needed.

The architecture (Radford et al. 2019, "Language Models are Unsupervised Multitask Learners", §2.3: GPT-1's
decoder with LayerNorm moved to the input of each sub-block and a final LayerNorm): token + learned position
embeddings; n_layer blocks of x += attn(ln_1(x)), x += mlp(ln_2(x)) with causal multi-head attention scaled
by 1/sqrt(head_dim) and an MLP n_embd -> n_inner (4 n_embd) -> n_embd with the tanh GELU; a final LayerNorm;
logits = h @ wte^T (tied).
Hugging Face stores the projections as Conv1D weights `[in, out]`, which is exactly a Flax Dense kernel, so
no transposes are needed.

Numerics: parameters are float32. compute_dtype "float32" runs matmuls at HIGHEST precision (exact float32,
also on TPU); "bfloat16" runs the matmuls and attention products in bf16 and keeps LayerNorm, softmax and
the log-probabilities in float32.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from sedd_jax import official

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
DEFAULT_HUB_REPO = "gpt2-large"  # the judge of the SEDD paper (hub: openai-community/gpt2-large)
GPT2_VOCAB_SIZE = 50257  # GPT-2's BPE; a judge of this vocabulary size uses the GPT-2 tokenizer
MAX_PARAMETERS = 20_000_000_000
COMPUTE_DTYPES = ("float32", "bfloat16")
ACTIVATIONS = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast", "gelu", "relu")  # the first three: tanh GELU

# config.json: field -> (low, high); ints exclude bools. n_inner may be null (4 n_embd).
_INT_FIELDS = {"vocab_size": (2, 1 << 22), "n_positions": (1, 1 << 20), "n_embd": (1, 1 << 16),
               "n_layer": (1, 1 << 10), "n_head": (1, 1 << 10)}


def download_hint(path: str) -> str:
    return (f"`huggingface-cli download {DEFAULT_HUB_REPO} {CONFIG_FILE} {WEIGHTS_FILE} --local-dir {path}` "
            "fetches the SEDD paper's judge (any GPT-2 size works)")


# --------------------------------------------------------------------------------------------- config

@dataclasses.dataclass(frozen=True)
class JudgeConfig:
    vocab_size: int
    n_positions: int
    n_embd: int
    n_layer: int
    n_head: int
    n_inner: int
    activation_function: str = "gelu_new"
    layer_norm_epsilon: float = 1e-5
    scale_attn_weights: bool = True
    scale_attn_by_inverse_layer_idx: bool = False
    tie_word_embeddings: bool = True

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    def num_parameters(self) -> int:
        d, f = self.n_embd, self.n_inner
        per_layer = 4 * d + (d * 3 * d + 3 * d) + (d * d + d) + (d * f + f) + (f * d + d)
        head = 0 if self.tie_word_embeddings else self.vocab_size * d
        return (self.vocab_size + self.n_positions) * d + self.n_layer * per_layer + 2 * d + head


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def config_from_dict(raw, source: str = CONFIG_FILE) -> JudgeConfig:
    """Checks a Hugging Face GPT-2 config.json (parsed) and returns a JudgeConfig; ValueError naming `source`."""
    if not isinstance(raw, dict):
        raise ValueError(f"{source}: a GPT-2 config is a JSON object, got a JSON {type(raw).__name__}")
    model_type = raw.get("model_type", "gpt2")
    if model_type != "gpt2":
        raise ValueError(f"{source}: model_type is {model_type!r}; the judge reads GPT-2 checkpoints (model_type gpt2)")
    values = {}
    for field, (low, high) in _INT_FIELDS.items():
        value = raw.get(field)
        if not _is_int(value) or not low <= value <= high:
            raise ValueError(f"{source}: {field} must be an integer in [{low}, {high}], got {value!r}")
        values[field] = value
    if values["n_embd"] % values["n_head"]:
        raise ValueError(f"{source}: n_embd={values['n_embd']} is not divisible by n_head={values['n_head']}")
    n_inner = raw.get("n_inner")
    if n_inner is None:
        n_inner = 4 * values["n_embd"]
    elif not _is_int(n_inner) or not 1 <= n_inner <= 1 << 18:
        raise ValueError(f"{source}: n_inner must be null or an integer in [1, {1 << 18}], got {n_inner!r}")
    activation = raw.get("activation_function", "gelu_new")
    if activation not in ACTIVATIONS:
        raise ValueError(f"{source}: activation_function {activation!r} is not one of {ACTIVATIONS}")
    epsilon = raw.get("layer_norm_epsilon", 1e-5)
    if isinstance(epsilon, bool) or not isinstance(epsilon, (int, float)) or not 0 < epsilon < 1:
        raise ValueError(f"{source}: layer_norm_epsilon must be a number in (0, 1), got {epsilon!r}")
    flags = {}
    for field, default in (("scale_attn_weights", True), ("scale_attn_by_inverse_layer_idx", False),
                           ("tie_word_embeddings", True)):
        value = raw.get(field, default)
        if not isinstance(value, bool):
            raise ValueError(f"{source}: {field} must be true or false, got {value!r}")
        flags[field] = value
    config = JudgeConfig(n_inner=n_inner, activation_function=activation, layer_norm_epsilon=float(epsilon),
                         **values, **flags)
    if config.num_parameters() > MAX_PARAMETERS:
        raise ValueError(f"{source}: the config implies {config.num_parameters():.3g} parameters, more than the "
                         f"{MAX_PARAMETERS:.0e} any GPT-2 has")
    return config


# --------------------------------------------------------------------------------------------- model

def _activation(name: str):
    if name in ("gelu_new", "gelu_pytorch_tanh", "gelu_fast"):
        return functools.partial(jax.nn.gelu, approximate=True)
    if name == "gelu":
        return functools.partial(jax.nn.gelu, approximate=False)
    return jax.nn.relu


class Block(nn.Module):
    config: JudgeConfig
    layer: int
    dtype: Any
    precision: Any

    @nn.compact
    def __call__(self, x):  # x: float32 [B, L, D], the residual stream
        c = self.config
        dense = functools.partial(nn.Dense, dtype=self.dtype, param_dtype=jnp.float32, precision=self.precision)
        norm = functools.partial(nn.LayerNorm, epsilon=c.layer_norm_epsilon, dtype=jnp.float32)
        batch, length, _ = x.shape
        qkv = dense(3 * c.n_embd, name="c_attn")(norm(name="ln_1")(x))
        q, k, v = (t.reshape(batch, length, c.n_head, c.head_dim) for t in jnp.split(qkv, 3, axis=-1))
        scale = 1.0 / math.sqrt(c.head_dim) if c.scale_attn_weights else 1.0
        if c.scale_attn_by_inverse_layer_idx:
            scale /= self.layer + 1
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, precision=self.precision,
                            preferred_element_type=jnp.float32) * scale
        causal = jnp.tril(jnp.ones((length, length), dtype=bool))
        logits = jnp.where(causal, logits, jnp.finfo(jnp.float32).min)
        weights = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
        attended = jnp.einsum("bhqk,bkhd->bqhd", weights, v, precision=self.precision)
        x = x + dense(c.n_embd, name="attn_c_proj")(attended.reshape(batch, length, c.n_embd)).astype(jnp.float32)
        hidden = _activation(c.activation_function)(dense(c.n_inner, name="c_fc")(norm(name="ln_2")(x)))
        return x + dense(c.n_embd, name="mlp_c_proj")(hidden).astype(jnp.float32)


class GPT2(nn.Module):
    """GPT-2 LM: ids int32 [B, L] (L <= n_positions) -> logits float32 [B, L, vocab_size]."""
    config: JudgeConfig
    dtype: Any = jnp.float32
    precision: Any = None

    @nn.compact
    def __call__(self, ids):
        c = self.config
        wte = nn.Embed(c.vocab_size, c.n_embd, name="wte")
        wpe = nn.Embed(c.n_positions, c.n_embd, name="wpe")
        x = wte(ids) + wpe(jnp.arange(ids.shape[1]))[None]
        for i in range(c.n_layer):
            x = Block(c, i, self.dtype, self.precision, name=f"h_{i}")(x)
        x = nn.LayerNorm(epsilon=c.layer_norm_epsilon, dtype=jnp.float32, name="ln_f")(x)
        if c.tie_word_embeddings:
            kernel = wte.embedding.T
        else:
            kernel = self.param("lm_head", nn.initializers.normal(0.02), (c.n_embd, c.vocab_size))
        return jnp.dot(x.astype(self.dtype), kernel.astype(self.dtype), precision=self.precision,
                       preferred_element_type=jnp.float32)


def build_model(config: JudgeConfig, compute_dtype: str = "float32"):
    """The linen GPT-2 module for `config`: apply({"params": p}, ids int32[B, L]) -> float32[B, L, V]."""
    if compute_dtype not in COMPUTE_DTYPES:
        raise ValueError(f"compute_dtype must be one of {COMPUTE_DTYPES}, got {compute_dtype!r}")
    if compute_dtype == "float32":
        return GPT2(config, jnp.float32, jax.lax.Precision.HIGHEST)
    return GPT2(config, jnp.bfloat16, None)


# --------------------------------------------------------------------------------------------- weights

_IGNORED_SUFFIXES = (".attn.bias", ".attn.masked_bias")  # causal-mask buffers of older transformers versions


def _key_map(config: JudgeConfig) -> dict[str, tuple[tuple[str, ...], tuple[int, ...]]]:
    """Hugging Face tensor name (without `transformer.`) -> (Flax parameter path, expected shape)."""
    d, f, v = config.n_embd, config.n_inner, config.vocab_size
    mapping = {
        "wte.weight": (("wte", "embedding"), (v, d)),
        "wpe.weight": (("wpe", "embedding"), (config.n_positions, d)),
        "ln_f.weight": (("ln_f", "scale"), (d,)), "ln_f.bias": (("ln_f", "bias"), (d,)),
    }
    block = {
        "ln_1.weight": (("ln_1", "scale"), (d,)), "ln_1.bias": (("ln_1", "bias"), (d,)),
        "attn.c_attn.weight": (("c_attn", "kernel"), (d, 3 * d)), "attn.c_attn.bias": (("c_attn", "bias"), (3 * d,)),
        "attn.c_proj.weight": (("attn_c_proj", "kernel"), (d, d)), "attn.c_proj.bias": (("attn_c_proj", "bias"), (d,)),
        "ln_2.weight": (("ln_2", "scale"), (d,)), "ln_2.bias": (("ln_2", "bias"), (d,)),
        "mlp.c_fc.weight": (("c_fc", "kernel"), (d, f)), "mlp.c_fc.bias": (("c_fc", "bias"), (f,)),
        "mlp.c_proj.weight": (("mlp_c_proj", "kernel"), (f, d)), "mlp.c_proj.bias": (("mlp_c_proj", "bias"), (d,)),
    }
    for i in range(config.n_layer):
        for key, (path, shape) in block.items():
            mapping[f"h.{i}.{key}"] = ((f"h_{i}",) + path, shape)
    return mapping


def state_dict_to_params(state_dict: dict[str, np.ndarray], config: JudgeConfig) -> dict:
    """Maps a Hugging Face GPT-2 state dict (`GPT2Model` or `GPT2LMHeadModel` names; Conv1D weights `[in,
    out]`) onto the judge's parameters, checking every name and shape. Returns nested float32 numpy arrays."""
    tensors = {}
    lm_head = None
    for name, value in state_dict.items():
        if name == "lm_head.weight":
            lm_head = value
            continue
        name = name.removeprefix("transformer.")
        if name.endswith(_IGNORED_SUFFIXES):
            continue
        tensors[name] = value
    mapping = _key_map(config)
    missing = sorted(set(mapping) - set(tensors))
    unexpected = sorted(set(tensors) - set(mapping))
    if missing or unexpected:
        raise ValueError(f"the weights do not match a GPT-2 of n_layer={config.n_layer}: missing "
                         f"{missing[:6]}{'...' if len(missing) > 6 else ''}, unexpected "
                         f"{unexpected[:6]}{'...' if len(unexpected) > 6 else ''}; check that {CONFIG_FILE} belongs "
                         "to these weights")
    params: dict = {}
    mismatches = []
    for name, (path, shape) in mapping.items():
        if tuple(tensors[name].shape) != shape:
            mismatches.append(f"{name}: {tuple(tensors[name].shape)} in the file, the config implies {shape}")
            continue
        node = params
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = np.asarray(tensors[name], dtype=np.float32)
    if config.tie_word_embeddings:
        if lm_head is not None and (lm_head.shape != tensors["wte.weight"].shape
                                    or not np.array_equal(lm_head, tensors["wte.weight"])):
            mismatches.append("lm_head.weight differs from wte.weight but the config ties them")
    elif lm_head is None or tuple(lm_head.shape) != (config.vocab_size, config.n_embd):
        mismatches.append(f"lm_head.weight: {None if lm_head is None else tuple(lm_head.shape)}, the config "
                          f"(tie_word_embeddings false) implies {(config.vocab_size, config.n_embd)}")
    else:
        params["lm_head"] = np.ascontiguousarray(np.asarray(lm_head, dtype=np.float32).T)
    if mismatches:
        raise ValueError("the weights do not match the config (vocab_size, n_positions, n_embd, n_inner): "
                         + "; ".join(mismatches[:6]))
    return params


# --------------------------------------------------------------------------------------------- the judge

@dataclasses.dataclass
class Judge:
    """A loaded GPT-2: config, float32 params, the linen module and jitted scoring functions.

    logits(ids int32[B, L]) -> float32[B, L, V]; log_likelihood(ids) -> float32[B, L-1], the log-probability
    of each token given the ones before it (the first token, which has no context, is not scored).
    L <= config.n_positions; `score_sequences` handles longer and ragged sequences.
    """

    config: JudgeConfig
    params: Any
    compute_dtype: str
    path: str

    def __post_init__(self):
        self.module = build_model(self.config, self.compute_dtype)
        apply = lambda params, ids: self.module.apply({"params": params}, ids)

        def log_likelihood(params, ids):  # logit of the target - logsumexp: no second [B, L, V] array
            logits = apply(params, ids)[:, :-1]
            target = jnp.take_along_axis(logits, ids[:, 1:, None], axis=-1)[..., 0]
            return target - jax.nn.logsumexp(logits, axis=-1)

        self._logits = jax.jit(apply)
        self._log_likelihood = jax.jit(log_likelihood)

    @property
    def vocab_size(self) -> int:
        return self.config.vocab_size

    @property
    def uses_gpt2_tokenizer(self) -> bool:
        """GPT-2 checkpoints (vocab_size 50257) are scored on GPT-2 BPE ids; other vocabularies have no tokenizer."""
        return self.config.vocab_size == GPT2_VOCAB_SIZE

    def _check_ids(self, ids) -> np.ndarray:
        ids = np.asarray(ids)
        if ids.ndim != 2 or not np.issubdtype(ids.dtype, np.integer):
            raise ValueError(f"ids must be an integer array [B, L], got {ids.dtype} of shape {ids.shape}")
        if not 1 <= ids.shape[1] <= self.config.n_positions:
            raise ValueError(f"sequences of {ids.shape[1]} tokens; the judge takes 1 to {self.config.n_positions} "
                             "(its n_positions)")
        if ids.size and (ids.min() < 0 or ids.max() >= self.config.vocab_size):
            raise ValueError(f"token ids outside the judge's vocabulary [0, {self.config.vocab_size})")
        return ids.astype(np.int32)

    def logits(self, ids) -> np.ndarray:
        """ids int32 [B, L] -> float32 [B, L, V]."""
        return np.asarray(self._logits(self.params, self._check_ids(ids)))

    def log_likelihood(self, ids) -> np.ndarray:
        """ids int32 [B, L] -> float32 [B, L-1]: log p(ids[:, t+1] | ids[:, :t+1])."""
        return np.asarray(self._log_likelihood(self.params, self._check_ids(ids)))

    def perplexity(self, ids) -> float:
        """exp of the mean negative log-likelihood over all scored tokens of ids int32 [B, L] (L >= 2)."""
        log_probs = self.log_likelihood(ids)
        if not log_probs.size:
            raise ValueError("perplexity needs sequences of at least 2 tokens")
        return float(np.exp(-np.mean(log_probs, dtype=np.float64)))

    def score_sequences(self, rows, batch_size: int = 8) -> list[np.ndarray]:
        """Per-token log-probabilities of ragged sequences: rows (lists of ids) -> [float64 [n_i - 1]].

        A sequence longer than n_positions is cut into consecutive windows of n_positions tokens, each scored
        on its own (the first token of every window is not scored). Windows are right-padded to the longest
        one and batched `batch_size` at a time (padding cannot change earlier positions of a causal model);
        every call has the same shape, so the judge compiles once."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        n = self.config.n_positions
        windows, owners = [], []
        for i, row in enumerate(rows):
            row = np.asarray(row, dtype=np.int64).reshape(-1)
            if row.size and (row.min() < 0 or row.max() >= self.config.vocab_size):
                raise ValueError(f"sequence {i} has token ids outside the judge's vocabulary "
                                 f"[0, {self.config.vocab_size})")
            for start in range(0, max(len(row), 1), n):
                windows.append(row[start:start + n])
                owners.append(i)
        width = max(2, max((len(w) for w in windows), default=2))
        scored = [[] for _ in rows]
        for start in range(0, len(windows), batch_size):
            chunk = windows[start:start + batch_size]
            ids = np.zeros((batch_size, width), np.int32)
            for j, window in enumerate(chunk):
                ids[j, :len(window)] = window
            log_probs = self.log_likelihood(ids)
            for j, window in enumerate(chunk):
                scored[owners[start + j]].append(log_probs[j, :max(len(window) - 1, 0)].astype(np.float64))
        return [np.concatenate(parts) for parts in scored]


def load(path: str, compute_dtype: str = "float32") -> Judge:
    """Loads a Hugging Face GPT-2 directory (config.json + model.safetensors); see the module docstring."""
    path = os.path.expanduser(str(path))
    if compute_dtype not in COMPUTE_DTYPES:
        raise ValueError(f"compute_dtype must be one of {COMPUTE_DTYPES}, got {compute_dtype!r}")
    if not os.path.isdir(path):
        raise FileNotFoundError(f"judge directory {path!r} does not exist; sedd-jax never downloads it: "
                                f"{download_hint(path)}")
    config_path, weights_path = os.path.join(path, CONFIG_FILE), os.path.join(path, WEIGHTS_FILE)
    for needed in (config_path, weights_path):
        if not os.path.isfile(needed):
            raise FileNotFoundError(f"judge directory {path!r} has no {os.path.basename(needed)}: "
                                    f"{download_hint(path)}")
    config = config_from_dict(official.read_json(config_path), config_path)
    state_dict = official.read_safetensors(weights_path)  # its errors name the file already
    try:
        params = state_dict_to_params(state_dict, config)
    except ValueError as e:
        raise ValueError(f"{weights_path}: {e}") from None
    return Judge(config=config, params=jax.tree.map(jnp.asarray, params), compute_dtype=compute_dtype, path=path)
